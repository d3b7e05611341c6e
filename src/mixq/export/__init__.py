"""Exports (layer L6): QONNX, ONNX QDQ (8-bit) and the integer-model file, all from an ``IntModel``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mixq.engine import to_integer
from mixq.engine.io import load_int_model, save_int_model
from mixq.engine.model import IntModel
from mixq.errors import MixqError
from mixq.export.qdq import save_qdq, to_qdq
from mixq.export.qonnx import save_qonnx, to_qonnx

EXPORTERS: dict[str, Callable[[IntModel, Path], Path]] = {
    "qonnx": lambda m, p: save_qonnx(m, p),
    "qdq": lambda m, p: save_qdq(m, p),
    "int": lambda m, p: save_int_model(m, p),
}
SUFFIX = {"qonnx": ".qonnx.onnx", "qdq": ".qdq.onnx", "int": ".json"}


def export(model: nn.Module | IntModel, fmt: str, path: str | Path,
           example: torch.Tensor | tuple[int, ...] | None = None) -> Path:
    """Write ``model`` (a calibrated fake-quant model with ``example`` input, or an ``IntModel``) as ``fmt``."""
    if fmt not in EXPORTERS:
        raise MixqError(f"export format {fmt!r} is not one of {', '.join(EXPORTERS)}")
    if not isinstance(model, IntModel):
        if example is None:
            raise MixqError("export: a torch model needs an example input (or its shape)")
        model = to_integer(model, example)
    return EXPORTERS[fmt](model, Path(path))


__all__ = ["EXPORTERS", "SUFFIX", "export", "load_int_model", "save_int_model", "save_qdq", "save_qonnx",
           "to_qdq", "to_qonnx"]
