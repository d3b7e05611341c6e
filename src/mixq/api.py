"""The public Python API: the small set of calls a user strings together.

    model = mixq.zoo.load("cnv", pretrained=True)
    plan = mixq.api.default_plan("cnv", model, calib)          # or mixq.plan.load_plan(...)
    qmodel = mixq.api.quantize(model, plan, calib)             # BN fold, swap, calibrate
    acc = mixq.api.evaluate(qmodel, images, labels)

Data may be given as a tensor, a numpy array, a :class:`mixq.data.sources.ImageSet`, a torch
``Dataset`` or ``DataLoader`` (items / batches: inputs or ``(inputs, labels)``), an ``(x, y)`` pair or a
list of batches (:func:`mixq.data.sources.as_batch`); :func:`evaluate` takes the labels from the data
when ``labels`` is not given, streaming a ``DataLoader`` batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mixq.data.sources import as_batch, iter_batches
from mixq.errors import DataError, MixqError
from mixq.formats import FixedPoint, NumberFormat
from mixq.graph import ops
from mixq.graph.normalize import normalize
from mixq.graph.ops import batches, signed_input_layers
from mixq.graph.registry import coverage
from mixq.nn import QConv2d, QLinear
from mixq.plan import LayerPlan, QuantPlan, uniform_plan

if TYPE_CHECKING:
    from mixq.algorithms.ptq import Recipe

__all__ = ["as_tensor_images", "batches", "default_plan", "evaluate", "layer_formats", "model_size_bytes", "predict",
           "quant_layers", "quantize", "signed_inputs"]

W8 = FixedPoint(bits=8, signed=True, narrow=True)
A8 = FixedPoint(bits=8, signed=False, narrow=False)


def signed_inputs(model: nn.Module, sample: Any) -> set[str]:
    """Compute layers whose input takes negative values on ``sample`` (they need a signed activation format)."""
    x = as_batch(sample, "sample")
    return signed_input_layers(normalize(model, tuple(x.shape[1:])), x)[1]


def quantize(model: nn.Module, plan: QuantPlan, calib: Any, batch_size: int | None = None, fold: bool = True, *,
             recipe: str | Recipe = "plan", allow_float: bool | Iterable[str] = False, **overrides: Any) -> nn.Module:
    """The one post-training quantization verb: ``model`` under ``plan`` with a PTQ recipe
    (:func:`mixq.algorithms.ptq.quantize`; ``"plan"``, the default, is the plan as written: fold BN, swap
    layers, calibrate activations with the plan's observers; ``"minmax"``, ``"dfq"``, ``"gptq"``, ...
    and recipe fields as ``overrides``) on the calibration data ``calib`` (any data
    :func:`mixq.data.sources.as_batch` takes). ``batch_size`` overrides the recipe's.

    A compute layer mixq cannot quantize (:mod:`mixq.graph.registry`: Conv3d, ConvTranspose3d, a
    Conv2d subclass with a forward it cannot reproduce, ``F.conv2d`` on a parameter ...) raises a
    one-line :class:`~mixq.errors.ModelError` naming it, unless ``allow_float`` (``True`` or layer
    names) or the plan's ``meta["float_layers"]`` accepts leaving it in float."""
    from mixq.algorithms.ptq import quantize as ptq_quantize

    if batch_size is not None:
        overrides["batch_size"] = batch_size
    return ptq_quantize(model, plan, as_batch(calib, "calib"), recipe, fold=fold, allow_float=allow_float,
                        **overrides)


def predict(model: nn.Module, x: Any, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on the inputs of ``x``, computed in batches."""
    return ops.predict(model, as_batch(x, "predict"), batch_size)


def evaluate(model: nn.Module, x: Any, labels: Any = None, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent of ``model`` on ``x`` with ``labels``, or on labelled data alone (an
    ``ImageSet``, a ``Dataset`` or ``DataLoader`` of ``(x, y)``, an ``(x, y)`` pair), batch by batch."""
    if labels is not None:
        return ops.evaluate(model, as_batch(x, "evaluate"), torch.as_tensor(labels), batch_size)
    from mixq.training import top1_correct

    correct = n = 0
    for xb, yb in iter_batches(x, batch_size, labels=True, name="evaluate"):
        if yb is None:
            raise DataError("evaluate: the data has no labels; pass labels=, or labelled data ((x, y) items or "
                            "batches, an ImageSet with labels)")
        with torch.no_grad():
            correct += top1_correct(model, xb, yb.to(torch.int64), batch_size)
        n += int(xb.shape[0])
    if not n:
        raise DataError("evaluate: the data holds no samples")
    return 100.0 * correct / n


def default_plan(model_name: str, model: nn.Module, sample: Any,
                 weight: NumberFormat = W8, act: NumberFormat = A8,
                 weight_alt: NumberFormat | None = None, alt_ratio: float = 0.0,
                 first_last: LayerPlan | None = None, *, allow_float: bool | Iterable[str] = False) -> QuantPlan:
    """A uniform per-channel plan for every Conv2d/Linear; signed activations where the data needs them.

    ``first_last`` (e.g. W8A8) replaces the plan of the first and last compute layer. Layers are
    found by :mod:`mixq.graph.registry`: Conv2d/Linear subclasses that compute the plain layer are
    planned (a "same"-padding wrapper as a Conv2d with the equivalent padding, recorded in
    ``meta["converted_layers"]``); any other compute layer raises a one-line
    :class:`~mixq.errors.ModelError` naming it, unless ``allow_float`` (``True`` or layer names)
    accepts leaving it in float — the plan then lists it in ``meta["float_layers"]`` with the reason.
    """
    sample = as_batch(sample, "sample")
    model = normalize(model, tuple(sample.shape[1:]))
    cov = coverage(model, sample)
    floats = cov.accept("default_plan", allow_float)
    names = list(cov.layers)
    if not names:
        raise MixqError(f"model {model_name!r} has no Conv2d or Linear layer to quantize")
    overrides = {names[0]: first_last, names[-1]: first_last} if first_last is not None else None
    plan = uniform_plan(model_name, names, weight, act, signed_inputs=signed_inputs(model, sample),
                        overrides=overrides, weight_alt=weight_alt, alt_ratio=alt_ratio)
    meta: dict[str, Any] = {}
    if floats:
        meta["float_layers"] = floats
    if cov.converted_meta():
        meta["converted_layers"] = cov.converted_meta()
    return plan.with_meta(**meta) if meta else plan


def quant_layers(model: nn.Module) -> list[tuple[str, QConv2d | QLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QConv2d | QLinear)]


def model_size_bytes(model: nn.Module, plan: QuantPlan | None = None) -> int:
    """Storage of the model's parameters (the one rule, :func:`mixq.nn.size.model_size_bytes`).

    Float parameters count 4 bytes; a quantized layer's weights count their
    format's storage bits, plus a 32-bit scale per row and format, a bit per row
    for the scheme mask when two formats are mixed, and its bias at 32 bits.
    """
    from mixq.nn.size import model_size_bytes as dense_bytes

    return dense_bytes(model)


def layer_formats(model: nn.Module) -> list[dict[str, object]]:
    """Per quantized layer: its weight formats (with row counts) and input activation format."""
    out: list[dict[str, object]] = []
    for name, m in quant_layers(model):
        fmts = m.row_formats()
        counts: dict[str, int] = {}
        for f in fmts:
            counts[_fmt_label(f)] = counts.get(_fmt_label(f), 0) + 1
        act = m.input_quant.fmt if m.input_quant is not None else None
        out.append({
            "name": name,
            "type": type(m).__name__.removeprefix("Q"),
            "weight_shape": list(m.weight.shape),
            "weight": counts if fmts else "float",
            "act": _fmt_label(act) if act is not None else "float",
        })
    return out


def _fmt_label(f: NumberFormat) -> str:
    """The format's short name (the grammar of `mixq.formats.parse_format`)."""
    return str(f)


def as_tensor_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(images))
