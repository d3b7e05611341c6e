"""Quantized layers built from a float layer and a `LayerPlan`.

`QConv2d` and `QLinear` are the float op plus a weight quantizer (one or two
row formats, per-row or per-tensor scales) and an input-activation quantizer
(`QAct`). They hold state only; the math is in :mod:`mixq.quant`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mixq.errors import ModelError
from mixq.formats import FixedPoint, NumberFormat
from mixq.plan import LayerPlan
from mixq.quant import ActObserver, compute_scale, fake_quant


class QAct(nn.Module):
    """Fake-quantizes activations with a scale found by calibration.

    Modes: ``observe`` (collect statistics, pass the input through unchanged),
    ``quant`` (fake-quantize with the frozen scale), ``float`` (identity).
    """

    def __init__(self, fmt: NumberFormat, observer: str = "minmax") -> None:
        super().__init__()
        self.fmt = fmt
        self.observer_kind = observer
        self.observer: ActObserver | None = None
        self.mode = "float"
        self.scale: torch.Tensor
        self.register_buffer("scale", torch.tensor(1.0))
        self.calibrated = False

    @classmethod
    def fixed(cls, bits: int, signed: bool, observer: str = "minmax") -> QAct:
        """A quantizer to ``bits``-bit fixed point (signed or not)."""
        return cls(FixedPoint(bits, signed), observer)

    def start_observing(self) -> None:
        self.observer = ActObserver(method=self.observer_kind)
        self.mode = "observe"

    def freeze(self) -> None:
        """End calibration: fix the scale from the collected statistics and start quantizing."""
        if self.observer is None or not self.observer.seen:
            raise RuntimeError("QAct.freeze() before any calibration batch was observed")
        self.scale = torch.as_tensor(self.observer.scale(self.fmt), dtype=torch.float32,
                                     device=self.scale.device).reshape(())
        self.observer = None
        self.calibrated = True
        self.mode = "quant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            assert self.observer is not None
            self.observer.update(x.detach())
            return x
        if self.mode == "quant":
            return fake_quant(x, self.fmt, self.scale)
        return x

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}, mode={self.mode}"


class _QWeightMixin:
    """Weight quantization shared by `QConv2d` and `QLinear` (which provide ``weight``)."""

    if TYPE_CHECKING:
        @property
        def weight(self) -> torch.Tensor: ...

    plan: LayerPlan
    formats: tuple[NumberFormat, ...]
    row_scheme: torch.Tensor
    w_scales: torch.Tensor

    def _init_quant(self, plan: LayerPlan) -> None:
        assert plan.weight is not None or plan.act is not None
        self.plan = plan
        formats: list[NumberFormat] = []
        if plan.weight is not None:
            formats.append(plan.weight)
        if plan.weight_alt is not None:
            formats.append(plan.weight_alt)
        self.formats = tuple(formats)
        rows = self.weight.shape[0]
        scheme = torch.tensor(plan.row_scheme(rows), dtype=torch.long)
        self.register_buffer("row_scheme", scheme)  # type: ignore[attr-defined]
        self.register_buffer("w_scales", torch.ones(len(self.formats), *self._scale_shape()))  # type: ignore[attr-defined]
        self.input_quant = QAct(plan.act, plan.act_observer) if plan.act is not None else None
        self.refresh_weight_scales()

    def _scale_shape(self) -> tuple[int, ...]:
        rows = self.weight.shape[0]
        return (rows,) + (1,) * (self.weight.dim() - 1)

    @torch.no_grad()
    def refresh_weight_scales(self) -> None:
        """(Re)compute the weight scales from the current weights, one set per row format."""
        w = self.weight.detach()
        scales = []
        for fmt in self.formats:
            s = compute_scale(w, fmt, granularity=self.plan.weight_granularity,
                              observer=self.plan.weight_observer, axis=0, group_size=self.plan.weight_group)
            scales.append(torch.broadcast_to(torch.as_tensor(s, dtype=w.dtype, device=w.device),
                                             self._scale_shape()))
        if scales:
            self.w_scales = torch.stack(scales).to(w.dtype)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight (float, with straight-through gradients)."""
        return self.weight_at(fake_quant, self.w_scales) if self.formats else self.weight

    def weight_at(self, quant: Callable[[torch.Tensor, NumberFormat, torch.Tensor], torch.Tensor],
                  scales: torch.Tensor) -> torch.Tensor:
        """The weight quantized by ``quant(w, fmt, scale)`` at ``scales`` (one set per row format, as
        ``w_scales``), each row by its own format (a stage learning the scales passes its own quantizer)."""
        w = self.weight
        out = quant(w, self.formats[0], scales[0])
        if len(self.formats) > 1:
            alt = quant(w, self.formats[1], scales[1])
            mask = (self.row_scheme == 1).reshape(self._scale_shape())
            out = torch.where(mask, alt, out)
        return out

    def row_scale(self) -> torch.Tensor:
        """The scale each row actually uses (its own format's), shaped ``(rows, 1, ...)``."""
        idx = self.row_scheme.reshape(1, *self._scale_shape())
        return torch.gather(self.w_scales, 0, idx).squeeze(0)

    def row_steps(self) -> torch.Tensor:
        """The step each row's integer codes count in: its format's scale times ``2**-frac_bits``, ``(rows,)``
        float64 (the product grid of a row is the input's scale times this)."""
        fracs = torch.tensor([2.0 ** -f.frac_bits for f in self.formats], dtype=torch.float64)
        return self.row_scale().reshape(-1).to(torch.float64) * fracs[self.row_scheme]

    def row_formats(self) -> list[NumberFormat]:
        """The format of every weight row."""
        return [self.formats[int(i)] for i in self.row_scheme.tolist()]


class QConv2d(nn.Conv2d, _QWeightMixin):
    """`nn.Conv2d` with fake-quantized weights (per-row formats) and input activations."""

    def __init__(self, conv: nn.Conv2d, plan: LayerPlan) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                         stride=conv.stride, padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
                         groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                assert self.bias is not None
                self.bias.copy_(conv.bias)
        self._init_quant(plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QLinear(nn.Linear, _QWeightMixin):
    """`nn.Linear` with fake-quantized weights (per-row formats) and input activations."""

    def __init__(self, linear: nn.Linear, plan: LayerPlan) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                assert self.bias is not None
                self.bias.copy_(linear.bias)
        self._init_quant(plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        return F.linear(x, self.quantized_weight(), self.bias)


QUANT_LAYERS: dict[type[nn.Module], Any] = {nn.Conv2d: QConv2d, nn.Linear: QLinear}


def quantized_layer(module: nn.Module, plan: LayerPlan) -> nn.Module:
    """The quantized counterpart of a float ``module`` (an exact-type lookup, no subclass guessing)."""
    cls = QUANT_LAYERS.get(type(module))
    if cls is None:
        from mixq.errors import ModelError

        raise ModelError(f"no quantized version of {type(module).__name__}")
    return cls(module, plan)  # type: ignore[no-any-return]


@contextmanager
def float_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model``'s quantized layers on their float weights inside the block (input quantizers
    unchanged): e.g. to calibrate activation ranges on the activations of the float network rather
    than of its not yet rounded weights. Restores every layer's formats on exit."""
    layers = [m for m in model.modules() if isinstance(m, _QWeightMixin)]
    saved = [m.formats for m in layers]
    for m in layers:
        m.formats = ()
    try:
        yield model
    finally:
        for m, f in zip(layers, saved, strict=True):
            m.formats = f


@torch.no_grad()
def observe(model: nn.Module, quantizers: list[QAct], batches: Any, what: str) -> None:
    """Calibrate ``quantizers`` of ``model`` in place: observe them while ``model`` runs on every batch, then
    freeze them; ``what`` is the ModelError when there is no batch to observe."""
    for q in quantizers:
        q.start_observing()
    n = 0
    for x in batches:
        model(x)
        n += 1
    if quantizers and n == 0:
        raise ModelError(what)
    names = {id(m): name for name, m in model.named_modules()}
    for q in quantizers:
        if q.observer is None or not q.observer.seen:  # its layer never ran on the data
            raise ModelError(f"calibration: the activation quantizer {names.get(id(q), '?')!r} saw no data: the "
                             "model's forward never calls its layer on the calibration inputs")
        q.freeze()
