"""Activations as hardware computes them: an integer lookup table on a quantized input.

``QLutAct(nn.SiLU())`` = an input quantizer (:class:`~mixq.nn.QAct`, signed fixed point,
calibrated like every other ``QAct``) + the float function + an output quantizer on its own
grid (16-bit signed by default, scale ``max |f(level)| / qmax`` over the input levels, a
function of the input scale alone, so it is fixed once the input scale is frozen)::

    fake quant:  y = q_out(f(q_in(x)))
    engine:      y = table[code_in - qmin] * s_out,   table = codes of q_out(f(level * s_in))

Bit-exact by construction: in ``quant`` mode the module itself evaluates ``f`` once per input
*level* (:meth:`QLutAct.float_table`, float32, in fixed chunks so the values do not depend on
tensor sizes or thread counts) and indexes that table with the input codes; the integer engine
stores the codes of the very same table (:meth:`QLutAct.table`, the output quantizer applied to
it: ties to even, as every fake-quant quantizer). The fake-quant model, the hardware-faithful
mode and the engine therefore read one table. Gradients (QAT) flow as if ``f`` were applied to
the fake-quantized input: the value is the table's, the gradient ``f'(q_in(x))`` (then the
clipped straight-through estimators of both quantizers).

Outside ``quant`` mode (``float``, ``observe`` during calibration) it computes ``f(x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mixq.formats import FixedPoint
from mixq.nn.modules import QAct
from mixq.quant import fake_quant

OUT_BITS = 16
CHUNK = 4096  # table evaluation chunk: below torch's parallel grain, a multiple of every vector width


def _no_params(_m: nn.Module) -> dict[str, Any]:
    return {}


# module type -> (function name, its parameters): the table of activations quantized as lookup tables
LUT_FUNCTIONS: dict[type[nn.Module], tuple[str, Callable[[Any], dict[str, Any]]]] = {
    nn.Hardswish: ("hardswish", _no_params),
    nn.Hardsigmoid: ("hardsigmoid", _no_params),
    nn.SiLU: ("silu", _no_params),
    nn.Sigmoid: ("sigmoid", _no_params),
    nn.Tanh: ("tanh", _no_params),
    nn.GELU: ("gelu", lambda m: {"approximate": str(m.approximate)}),
    nn.ELU: ("elu", lambda m: {"alpha": float(m.alpha)}),
    nn.LeakyReLU: ("leaky_relu", lambda m: {"negative_slope": float(m.negative_slope)}),
    nn.Mish: ("mish", _no_params),
}


def is_lut_activation(m: nn.Module) -> bool:
    """Whether ``m`` is one of the activations quantized as a lookup table (exact type)."""
    return type(m) in LUT_FUNCTIONS


class _TableValue(torch.autograd.Function):
    """Forward: the table's value; backward: the gradient of the float function's output."""

    @staticmethod
    def forward(ctx: Any, traced: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grads[0], None


class QLutAct(nn.Module):
    """An activation ``fn`` between an input quantizer (``input_quant``) and a fixed output grid."""

    def __init__(self, fn: nn.Module, bits: int = 8, observer: str = "minmax", out_bits: int = OUT_BITS) -> None:
        super().__init__()
        if not is_lut_activation(fn):
            raise TypeError(f"QLutAct: {type(fn).__name__} is not a lookup-table activation")
        self.fn = fn
        name, params = LUT_FUNCTIONS[type(fn)]
        self.fn_name = name
        self.fn_params = params(fn)
        self.input_quant = QAct(FixedPoint(int(bits), signed=True), observer)
        self.out_fmt = FixedPoint(int(out_bits), signed=True)

    @property
    def in_fmt(self) -> FixedPoint:
        fmt = self.input_quant.fmt
        assert isinstance(fmt, FixedPoint)
        return fmt

    def levels(self) -> torch.Tensor:
        """Every input level ``q * s_in`` (float32, ``q`` from qmin to qmax): what ``input_quant`` outputs."""
        f = self.in_fmt
        s = self.input_quant.scale.detach().to(torch.float32)
        q = torch.arange(f.qmin, f.qmax + 1, dtype=torch.float32, device=s.device)
        return q * s

    @torch.no_grad()
    def float_table(self) -> torch.Tensor:
        """``f`` of every input level, float32, evaluated in chunks of fixed size."""
        return torch.cat([self.fn(c) for c in self.levels().split(CHUNK)])

    @torch.no_grad()
    def out_scale(self, ftab: torch.Tensor | None = None) -> torch.Tensor:
        """The output grid: ``max |f(level)| / qmax`` (float32; 1 for a function that is 0 everywhere)."""
        t = self.float_table() if ftab is None else ftab
        top = t.abs().max()
        qmax = torch.tensor(float(self.out_fmt.qmax), dtype=torch.float32, device=top.device)
        return torch.where(top > 0, top / qmax, torch.ones((), dtype=torch.float32, device=top.device))

    @torch.no_grad()
    def table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int64 output codes of every input level, the output scale): the hardware's lookup table."""
        ftab = self.float_table()
        s_out = self.out_scale(ftab)
        return self.out_fmt.quantize(ftab, s_out), s_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.input_quant(x)
        if self.input_quant.mode != "quant":
            return self.fn(xq)  # type: ignore[no-any-return]
        ftab = self.float_table().to(x.dtype)
        codes = self.in_fmt.quantize(x.detach(), self.input_quant.scale)
        y = ftab[codes - self.in_fmt.qmin]
        if torch.is_grad_enabled() and xq.requires_grad:
            y = _TableValue.apply(self.fn(xq), y)
        return fake_quant(y, self.out_fmt, self.out_scale(ftab))

    def extra_repr(self) -> str:
        return f"fn={self.fn_name}, in={self.in_fmt}, out={self.out_fmt}"
