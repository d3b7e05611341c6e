"""Model files -> a torch module mixq can quantize: ONNX, TorchScript and ``torch.export`` archives.

    load_model_file("net.onnx")                         # import_onnx
    load_model_file("net.pt", input_shape=(3, 32, 32))  # torch.jit.save archive -> ONNX (legacy exporter) -> import
    load_model_file("net.pt2")                          # torch.export.save archive -> ONNX (dynamo exporter) -> import

Every route ends in :func:`mixq.zoo.onnx_import.import_onnx`, so the result is a ``torch.fx.GraphModule``
of standard ``torch.nn`` modules with ``input_shape`` and ``source_format`` ("onnx", "torchscript",
"pt2"). The kind of a file is read from its content, not its suffix alone: ``.pt`` is also the suffix
of ``torch.save``-d state dicts, which are refused (pass them as ``--weights`` with a builder), as are
pickled modules (never unpickled: they can run arbitrary code). Every failure is one
:class:`~mixq.errors.ModelError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx

from mixq.errors import MixqError, ModelError
from mixq.validate import read_torch
from mixq.zoo.onnx_import import import_onnx, one_line, require_onnx, set_info

__all__ = ["MODEL_FILE_SUFFIXES", "load_model_file", "model_file_kind"]

MODEL_FILE_SUFFIXES: tuple[str, ...] = (".onnx", ".pt", ".pth", ".ts", ".torchscript", ".pt2")
ONNX_OPSET = 17


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' deprecation warnings and progress lines are not the user's concern."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _zip_kind(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    parts = [n.split("/") for n in names]
    if any("code" in p[:-1] for p in parts):
        return "torchscript"
    if any(p[-1] == "archive_format" or p[-2:] == ["models", "model.json"] for p in parts):
        return "pt2"
    if any(p[-1] == "data.pkl" for p in parts):
        return "pickle"
    return "unknown"


def model_file_kind(path: str | Path) -> str:
    """``onnx``, ``torchscript``, ``pt2``, ``pickle`` (a ``torch.save`` file) or ``unknown``, from the content."""
    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            return _zip_kind(p)
        with open(p, "rb") as f:
            head = f.read(2)
    except (OSError, zipfile.BadZipFile):
        return "unknown"
    if head[:1] == b"\x80":  # a legacy (non-zip) torch.save pickle
        return "pickle"
    return "onnx" if p.suffix.lower() == ".onnx" else "unknown"


def _shape(path: Path, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is None:
        raise ModelError(f"{path}: a TorchScript model needs its input shape: give --input-shape C,H,W")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ModelError(f"{path}: input shape {input_shape!r} must be integers >= 1 (C,H,W or C,L)")
    return shape


def _onnx_from_torchscript(path: Path, input_shape: Sequence[int] | None) -> tuple[Any, tuple[int, ...]]:
    shape = _shape(path, input_shape)
    onnx = require_onnx()
    try:
        with _quiet():
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ModelError(f"{path}: not a readable TorchScript archive ({type(e).__name__}: {one_line(e)})") from None
    scripted.eval()
    try:
        with _quiet(), tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model.onnx"
            torch.onnx.export(scripted, (torch.zeros(1, *shape),), out, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
            return onnx.load(str(out)), shape
    except Exception as e:
        raise ModelError(f"{path}: the TorchScript model does not export to ONNX for input (1, "
                         f"{', '.join(map(str, shape))}) ({type(e).__name__}: {one_line(e)})") from None


def _example(path: Path, program: Any, input_shape: Sequence[int] | None) -> torch.Tensor:
    """The one user input of an exported program: the given shape, else the program's own (static) one."""
    users = list(program.graph_signature.user_inputs)
    if len(users) != 1:
        raise ModelError(f"{path}: the exported program takes {len(users)} inputs; mixq takes models with one")
    if input_shape is not None:
        return torch.zeros(1, *_shape(path, input_shape))
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == users[0])
    val = node.meta.get("val")
    dims = [] if val is None else list(val.shape)
    if not dims or not all(isinstance(d, int) for d in dims):
        raise ModelError(f"{path}: the exported program's input shape is not static ({dims}): give --input-shape")
    return torch.zeros(*dims)


def _onnx_from_pt2(path: Path, input_shape: Sequence[int] | None) -> tuple[Any, tuple[int, ...]]:
    require_onnx()
    try:
        with _quiet():
            program = torch.export.load(str(path))
    except Exception as e:
        raise ModelError(f"{path}: not a readable torch.export archive ({type(e).__name__}: {one_line(e)})") from None
    example = _example(path, program, input_shape)
    try:
        with _quiet():
            onnx_program = torch.onnx.export(program, (example,), dynamo=True, verbose=False)
    except Exception as e:
        raise ModelError(f"{path}: the exported program does not convert to ONNX "
                         f"({type(e).__name__}: {one_line(e)})") from None
    if onnx_program is None:
        raise ModelError(f"{path}: the exported program does not convert to ONNX")
    return onnx_program.model_proto, tuple(example.shape[1:])


def _refuse_pickle(path: Path, _shape: Sequence[int] | None) -> tuple[Any, tuple[int, ...]]:
    """A ``torch.save`` file: plain data (weights_only) is a state dict or checkpoint; anything else a pickled
    object (a module), which is never unpickled."""
    try:
        obj = read_torch(path)
    except MixqError:
        raise ModelError(f"{path}: a torch.save pickle, not a model file mixq reads: save the model with "
                         "torch.jit.save (TorchScript), torch.export.save (.pt2) or torch.onnx.export") from None
    if isinstance(obj, dict):
        raise ModelError(f"{path}: a state dict, not a model: pass it as --weights with a builder")
    raise ModelError(f"{path}: a torch.save file of a {type(obj).__name__}, not a model")


# file kind (also the result's source_format) -> (path, input shape) -> (ONNX ModelProto, per-sample input shape)
_ROUTES: dict[str, Callable[[Path, Sequence[int] | None], tuple[Any, tuple[int, ...]]]] = {
    "torchscript": _onnx_from_torchscript,
    "pt2": _onnx_from_pt2,
    "pickle": _refuse_pickle,
}


def load_model_file(path: str | Path, input_shape: Sequence[int] | None = None) -> fx.GraphModule:
    """An ONNX, TorchScript or ``torch.export`` file as a ``torch.fx.GraphModule`` (eval mode).

    ``input_shape`` (per sample, C,H,W or C,L) is needed for TorchScript; a ``.pt2`` program brings
    its own, an ONNX file its static dims (``input_shape`` pins dynamic ones). The result's
    ``source_format`` says which route it took.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such model file")
    if not p.is_file():
        raise ModelError(f"{p}: not a file")
    if p.suffix.lower() not in MODEL_FILE_SUFFIXES:
        raise ModelError(f"{p}: unknown model file suffix {p.suffix!r}; mixq reads {', '.join(MODEL_FILE_SUFFIXES)}")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ModelError(f"{p}: cannot be read ({e.strerror or type(e).__name__})") from None
    kind = model_file_kind(p)
    try:
        if kind == "onnx":
            return import_onnx(p, name=p.stem, input_shape=input_shape)
        if kind not in _ROUTES:
            raise ModelError(f"{p}: not a TorchScript, torch.export (.pt2) or ONNX model (corrupt or unknown content)")
        proto, shape = _ROUTES[kind](p, input_shape)
        gm = import_onnx(proto, name=p.stem, label=f"{p} (as ONNX)", input_shape=shape)
    except MixqError:
        raise
    except Exception as e:  # anything a corrupt file can make a library raise
        raise ModelError(f"{p}: cannot be read as a model ({type(e).__name__}: {one_line(e)})") from None
    set_info(gm, input_shape=shape, source_format=kind)
    return gm
