"""Validation at the door: checks a command runs on its options, files and data before any work.

Every check is a pure function that returns the (normalised) value or raises a
:mod:`mixq.errors` class with a one-line message naming the option, file,
tensor or image at fault, e.g. ``--batch-size: must be an integer >= 1, got 0``.
``None`` (an unset option) passes through the option checks unchanged.

>>> count("--batch-size", 32)
32
>>> count("--batch-size", 0)
Traceback (most recent call last):
...
mixq.errors.OptionError: --batch-size: must be an integer >= 1, got 0
>>> fraction("--sparsity", 0.5)
0.5
>>> positive("--clock-mhz", float("nan"))
Traceback (most recent call last):
...
mixq.errors.OptionError: --clock-mhz: must be a finite number > 0, got nan
"""

from __future__ import annotations

import io
import math
import numbers
import os
import pickle
import re
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from mixq.errors import DataError, MixqError, NumericError, OptionError

T = TypeVar("T")

MAX_ABS = 1e6  # a weight or BN statistic beyond this is taken as corrupt (real models stay below ~1e3)


# ----------------------------------------------------------------------------- options


def count(name: str, value: int | None, minimum: int = 1) -> int | None:
    """An integer option ``>= minimum`` (a bool is not an integer here)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise OptionError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(name: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"{name}: must be {what}, got {value!r}")
    return float(value)


def positive(name: str, value: float | None, allow_zero: bool = False) -> float | None:
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    if value is None:
        return None
    what = f"a finite number {'>=' if allow_zero else '>'} 0"
    v = _number(name, value, what)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise OptionError(f"{name}: must be {what}, got {v:g}")
    return v


def fraction(name: str, value: float | None, low: float = 0.0, high: float = 1.0,
             inclusive: bool = True) -> float | None:
    """A ratio in ``[low, high]`` (``(low, high)`` unless ``inclusive``), e.g. a sparsity or a max drop."""
    if value is None:
        return None
    span = f"[{low:g}, {high:g}]" if inclusive else f"({low:g}, {high:g})"
    v = _number(name, value, f"a number in {span}")
    ok = math.isfinite(v) and (low <= v <= high if inclusive else low < v < high)
    if not ok:
        raise OptionError(f"{name}: must be a number in {span}, got {v:g}")
    return v


def choice(name: str, value: T | None, choices: Collection[T]) -> T | None:
    """One of ``choices``."""
    if value is None or value in choices:
        return value
    raise OptionError(f"{name}: {value!r} is not one of {', '.join(str(c) for c in choices)}")


# ----------------------------------------------------------------------------- output paths


def _creatable(p: Path, name: str, what: str) -> None:
    """``p`` does not exist: its first existing ancestor must be a writable folder."""
    for anc in p.absolute().parents:
        if anc.exists():
            if not anc.is_dir():
                raise OptionError(f"{name}: cannot create {what} {p}: {anc} is a file, not a folder")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise OptionError(f"{name}: cannot create {what} {p}: folder {anc} is not writable")
            return
    raise OptionError(f"{name}: cannot create {what} {p}: no existing parent folder")  # pragma: no cover


def writable_dir(path: str | os.PathLike[str], name: str = "--out") -> Path:
    """Check (creating nothing) that the output folder ``path`` exists writable or can be created."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise OptionError(f"{name}: {p} is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise OptionError(f"{name}: folder {p} is not writable")
        return p
    _creatable(p, name, "folder")
    return p


def writable_file(path: str | os.PathLike[str], name: str = "--out") -> Path:
    """Check (creating nothing) that the output file ``path`` can be written (atomically, via its folder)."""
    p = Path(path)
    if p.is_dir():
        raise OptionError(f"{name}: {p} is a folder, not a file")
    writable_dir(p.absolute().parent, name)
    return p


# ----------------------------------------------------------------------------- weights


def state_dict(state: Mapping[str, torch.Tensor], source: str, max_abs: float = MAX_ABS) -> None:
    """Every floating tensor finite with ``|x| <= max_abs``; every ``running_var`` non-negative.

    >>> state_dict({"w": torch.tensor([1.0, float("nan"), float("inf")])}, "weights.pt")
    Traceback (most recent call last):
    ...
    mixq.errors.NumericError: weights.pt: tensor w has 1 NaN and 1 Inf values
    """
    for key, t in state.items():
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        t = t.detach()
        if not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
            raise NumericError(f"{source}: tensor {key} has {' and '.join(p for p in parts if p)} values")
        peak = float(t.abs().max())
        if peak > max_abs:
            raise NumericError(f"{source}: tensor {key} has an absurd magnitude {peak:.3g} (limit {max_abs:g})")
        if key.endswith("running_var") and bool((t < 0).any()):
            raise NumericError(f"{source}: tensor {key} has {int((t < 0).sum())} negative values (a variance is >= 0)")


def nonfinite(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of the floating-point tensors of ``state`` holding a NaN or an Inf (in order).

    >>> nonfinite({"a": torch.ones(2), "b": torch.tensor([float("nan")]), "n": torch.tensor([3])})
    ['b']
    """
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def model(module: nn.Module, source: str, max_abs: float = MAX_ABS) -> None:
    """:func:`state_dict` of ``module.state_dict()``."""
    state_dict(module.state_dict(), source, max_abs)


def read_torch(path: str | os.PathLike[str], source_name: str | None = None, *, what: str = "PyTorch file",
               error: type[MixqError] = DataError) -> Any:
    """The one ``torch.load`` of mixq: the object of a ``torch.save`` file, read safely (``weights_only``:
    plain tensors and containers, no code from the file) on the CPU.

    A missing, unreadable or corrupt file, or one holding pickled objects, raises ``error`` naming
    ``source_name`` (default: the path), e.g. ``w.pt: not a PyTorch state dict (corrupt or not saved
    with torch.save)`` for ``what="PyTorch state dict"``.
    """
    p = Path(path)
    src = source_name or str(p)
    if not p.exists():
        raise error(f"{src}: file not found")
    if p.is_dir():
        raise error(f"{src}: is a folder, not a {what}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise error(f"{src}: cannot read ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():  # torch's unpickler warns about protocols; the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        obj = re.search(r"GLOBAL ([A-Za-z_][\w.]*) was not an allowed global", str(e))
        if obj:  # e.g. torch.save(model): a pickled module, not its state dict
            raise error(f"{src}: not a {what} (it holds a pickled {obj.group(1)}; "
                        "save model.state_dict() with torch.save)") from e
        raise error(f"{src}: not a {what} (corrupt or not saved with torch.save)") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError, ... on a bad file
        raise error(f"{src}: not a {what} (corrupt or not saved with torch.save)") from e


def load_state(path: str | os.PathLike[str], source_name: str | None = None,
               max_abs: float = MAX_ABS) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save`` safely (:func:`read_torch`) and check it.

    A missing, unreadable, corrupt or non-state-dict file raises :class:`DataError`
    naming ``source_name`` (default: the path); bad values raise :class:`NumericError`.
    """
    src = source_name or str(path)
    state = read_torch(path, src, what="PyTorch state dict")
    if not isinstance(state, dict):
        raise DataError(f"{src}: not a PyTorch state dict (it holds a {type(state).__name__}, not a dict of tensors)")
    if not state:
        raise DataError(f"{src}: the state dict is empty")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{src}: not a PyTorch state dict (entry {key!r} holds a value of type "
                            f"{type(value).__name__}, not a tensor)")
    state_dict(state, src, max_abs)
    return state


# ----------------------------------------------------------------------------- data and training


def _indexes(idx: torch.Tensor) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:5])
    return shown + (f", ... ({len(idx) - 5} more)" if len(idx) > 5 else "")


#: relative spread below which an image plane counts as constant
CONSTANT_TOL = 1e-4


def images(x: torch.Tensor, source: str, min_size: int = 8) -> None:
    """An (N, C, H, W) batch: N >= 1, H and W >= ``min_size``, finite pixels, no constant image.

    >>> images(torch.rand(4, 1, 28, 28), "train")
    >>> images(torch.zeros(4, 1, 28, 28), "calib.npz")
    Traceback (most recent call last):
    ...
    mixq.errors.DataError: calib.npz: 4 of 4 images are constant (all pixels equal, e.g. blank): images 0, 1, 2, 3
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{source}: expected an (N, C, H, W) image batch, got {shape}")
    n, _, h, w = x.shape
    if n < 1:
        raise DataError(f"{source}: the batch holds no images")
    if h < min_size or w < min_size:
        raise DataError(f"{source}: images of {h}x{w} pixels are too small (need at least {min_size}x{min_size})")
    flat = x.detach().reshape(n, -1)
    if flat.shape[1] == 0:
        raise DataError(f"{source}: images have no channels")
    bad = (~torch.isfinite(flat)).any(dim=1).nonzero().flatten()
    if len(bad):
        raise DataError(f"{source}: {len(bad)} of {n} images have NaN or Inf pixels: images {_indexes(bad)}")
    # constant in space, channel by channel: a black RGB photo normalised per channel is still blank
    planes = x.detach().reshape(n, x.shape[1], -1)
    # "equal" up to float noise from resizing and normalising (a real 1/255 step is ~1e-2 after normalising)
    hi, lo = planes.amax(dim=2), planes.amin(dim=2)
    const = ((hi - lo) <= CONSTANT_TOL * hi.abs().clamp(min=1.0)).all(dim=1).nonzero().flatten()
    if len(const):
        raise DataError(f"{source}: {len(const)} of {n} images are constant (all pixels equal, e.g. blank): "
                        f"images {_indexes(const)}")


def loss(value: float, step: int, source: str) -> None:
    """A training loss must stay finite.

    >>> loss(float("nan"), 12, "qat")
    Traceback (most recent call last):
    ...
    mixq.errors.NumericError: qat: loss became nan at step 12 (lower the learning rate or check the data)
    """
    v = float(value)
    if not math.isfinite(v):
        raise NumericError(f"{source}: loss became {v} at step {step} (lower the learning rate or check the data)")
