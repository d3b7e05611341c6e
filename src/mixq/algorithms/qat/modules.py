"""QAT versions of the quantized layers, and the swap in and out of them.

`QatConv2d` / `QatLinear` subclass :class:`mixq.nn.QConv2d` / :class:`mixq.nn.QLinear`
and keep their attributes (``formats``, ``row_scheme``, ``w_scales``, ``plan``,
``input_quant`` with ``fmt`` and ``scale``), adding:

* ``w_log_step``: the log of the learned LSQ step of every (format, row), a parameter
  (``None`` unless ``weight_quant="lsq"``); ``w_scales`` mirrors ``exp(w_log_step)``
  (and XNOR's ``α`` for binary rows) after every forward;
* ``bn``: the BatchNorm that follows the layer when BN is folded *during* training
  (``QatConfig.bn = "train"``); the model's own BN module is then an ``Identity``,
  exactly as after :func:`mixq.graph.fold_bn`;
* ``weight_mask``: the pruning mask (``None`` for dense layers);
* ``grad_bits`` / ``grad_gen``: stochastic quantization of the layer's output gradient.

`QatAct` subclasses :class:`mixq.nn.QAct` with a learnable step (LSQ; ``log_scale``,
mirrored in ``scale``) or a fixed calibrated one (DoReFa clip).

Steps are learned in log space (``s = exp(θ)``): a gradient step then changes every
step size by a *relative* amount, whatever its magnitude (folded-BN weight steps
are ~1e-2, activation steps ~1e-1..1). With the plain LSQ parametrisation one
learning rate is far too large for the smallest steps and training diverges. :func:`export_plain` turns a trained model
back into plain `QConv2d` / `QLinear` / `QAct` modules (BN folded, masks and
DoReFa transforms applied to the stored weights) that the integer engine reads.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq.algorithms.qat.config import QatError
from mixq.algorithms.qat.functional import (
    EPS,
    dorefa_weight,
    is_binary,
    lsq_act,
    lsq_weight,
    mixed_rows,
    quant_grad,
    row_shape,
    xnor_alpha,
    xnor_weight,
)
from mixq.formats import NumberFormat
from mixq.graph.bnfold import fold_into
from mixq.nn import QAct, QConv2d, QLinear
from mixq.plan import LayerPlan
from mixq.quant import compute_scale, fake_quant


class QatAct(QAct):
    """`QAct` whose step is learned (``lsq``, as ``log_scale``) or fixed at its calibrated value (``dorefa``)."""

    def __init__(self, src: QAct, act_quant: str = "lsq") -> None:
        super().__init__(src.fmt, src.observer_kind)
        scale = src.scale.detach().clone().reshape(()).to(torch.float32).abs().clamp_min(EPS)
        self.scale = scale
        self.log_scale = nn.Parameter(scale.log()) if act_quant == "lsq" else None
        self.act_quant = act_quant
        self.mode = "quant"
        self.calibrated = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode != "quant":
            return super().forward(x)
        if self.log_scale is not None:
            s = self.log_scale.exp()
            with torch.no_grad():
                self.scale.copy_(s.detach())
            return lsq_act(x, self.fmt, s)
        return fake_quant(x, self.fmt, self.scale)

    def to_plain(self) -> QAct:
        q = QAct(self.fmt, self.observer_kind)
        s = self.log_scale.detach().exp() if self.log_scale is not None else self.scale.detach()
        q.scale = s.clone()
        q.mode, q.calibrated = "quant", True
        return q


class _QatWeightMixin:
    """The QAT weight path shared by `QatConv2d` and `QatLinear`."""

    if TYPE_CHECKING:
        @property
        def weight(self) -> torch.Tensor: ...

        @property
        def bias(self) -> torch.Tensor | None: ...

    plan: LayerPlan
    formats: tuple[NumberFormat, ...]
    row_scheme: torch.Tensor
    w_scales: torch.Tensor
    input_quant: QAct | None
    weight_mask: torch.Tensor | None
    bn: _BatchNorm | None

    def _init_qat(self, src: QConv2d | QLinear, weight_quant: str, act_quant: str,
                  bn: _BatchNorm | None, mask: torch.Tensor | None) -> None:
        self.weight_quant = weight_quant
        self.grad_bits: int | None = None
        self.grad_gen: torch.Generator | None = None
        self.channels_last = False
        with torch.no_grad():
            self.row_scheme.copy_(src.row_scheme)
            self.w_scales.copy_(src.w_scales)
        lsq = weight_quant == "lsq" and any(not is_binary(f) for f in self.formats)
        step = src.w_scales.detach().clone().to(torch.float32).abs().clamp_min(EPS)
        if self.plan.weight_granularity == "tensor":  # one shared step per format
            step = step.reshape(step.shape[0], -1)[:, :1].reshape((step.shape[0],) + (1,) * (step.dim() - 1))
        self.w_log_step = nn.Parameter(step.log()) if lsq else None
        self.bn = bn
        if mask is not None:
            if tuple(mask.shape) != tuple(self.weight.shape):
                raise QatError(f"mask of shape {tuple(mask.shape)} does not fit weight {tuple(self.weight.shape)}")
            self.register_buffer("weight_mask", mask.detach().to(self.weight.dtype).clone())  # type: ignore[attr-defined]
            with torch.no_grad():
                self.weight.mul_(mask.detach().to(self.weight.dtype))
        else:
            self.weight_mask = None
        if src.input_quant is not None:
            self.input_quant = QatAct(src.input_quant, act_quant)

    # -- the weight the layer computes with -------------------------------------------------
    def _bn_factor(self) -> torch.Tensor | None:
        """``γ / sqrt(running_var + eps)`` per output channel (never exactly zero), or None."""
        bn = self.bn
        if bn is None:
            return None
        assert bn.running_var is not None
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        f = gamma / torch.sqrt(bn.running_var + bn.eps)
        return torch.where(f.abs() < EPS, torch.full_like(f, EPS), f)

    def effective_weight(self) -> torch.Tensor:
        """The float weight that gets quantized: masked, and with the BN factor folded in."""
        w = self.weight if self.weight_mask is None else self.weight * self.weight_mask
        f = self._bn_factor()
        return w if f is None else w * f.reshape(row_shape(w))

    def _quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fake-quantized weight, scales ``(n_formats, rows, 1, ...)``) for the effective weight ``w``."""
        parts, scales = [], []
        for k, fmt in enumerate(self.formats):
            if is_binary(fmt):
                parts.append(xnor_weight(w))
                scales.append(xnor_alpha(w))
            elif self.w_log_step is not None:
                step = self.w_log_step[k].exp()
                parts.append(lsq_weight(w, fmt, step))
                scales.append(step.detach().expand(row_shape(w)))
            elif self.weight_quant == "ste":
                s = compute_scale(w.detach(), fmt, granularity=self.plan.weight_granularity,
                                  observer=self.plan.weight_observer, axis=0, group_size=self.plan.weight_group)
                s = torch.broadcast_to(torch.as_tensor(s, dtype=w.dtype, device=w.device), row_shape(w))
                parts.append(fake_quant(w, fmt, s))
                scales.append(s)
            else:
                q, s = dorefa_weight(w, fmt)
                parts.append(q)
                scales.append(s)
        out = mixed_rows(parts, self.row_scheme)
        return out, torch.stack([s.detach().to(torch.float32) for s in scales])

    def quantized_weight(self) -> torch.Tensor:
        w = self.effective_weight()
        if not self.formats:
            return w
        out, scales = self._quantize(w)
        with torch.no_grad():
            self.w_scales.copy_(scales)
        return out

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        """Undo the folded BN factor, add the bias, apply BN (batch statistics in training)."""
        f = self._bn_factor()
        if f is not None:
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = y / f.reshape(shape)
            if self.bias is not None:
                y = y + self.bias.reshape(shape)
            assert self.bn is not None
            y = self.bn(y)
        return quant_grad(y, self.grad_bits, self.grad_gen)

    # -- export -----------------------------------------------------------------------------
    @torch.no_grad()
    def export_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(stored float weight, bias, w_scales) of the plain layer that computes what this one does."""
        w = self.weight if self.weight_mask is None else self.weight * self.weight_mask
        bias = self.bias
        if self.bn is not None:
            layer: Any = copy.deepcopy(self._float_layer(w, bias))
            fold_into(layer, self.bn)
            w, bias = layer.weight.detach(), layer.bias.detach()
        if not self.formats:
            return w.clone(), None if bias is None else bias.clone(), self.w_scales.clone()
        if self.weight_quant == "dorefa":
            parts = []
            for fmt in self.formats:
                if is_binary(fmt):
                    parts.append(w)
                    continue
                t = torch.tanh(w)
                parts.append(t / t.abs().max().clamp_min(EPS) * w.abs().max().clamp_min(EPS))
            w = mixed_rows(parts, self.row_scheme)
        _, scales = self._quantize(w)
        return w.clone(), None if bias is None else bias.clone(), scales

    def _float_layer(self, w: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        raise NotImplementedError


class QatConv2d(_QatWeightMixin, QConv2d):  # type: ignore[misc,override]
    """`QConv2d` trained with LSQ / STE / DoReFa weights, optional BN folding during training.

    Built from a calibrated ``src`` (its scales and input quantizer initialise the
    steps); ``raw`` (the unfolded float layer) gives the weights when ``bn`` is set.
    """

    def __init__(self, src: QConv2d, weight_quant: str = "lsq", act_quant: str = "lsq",
                 bn: _BatchNorm | None = None, mask: torch.Tensor | None = None,
                 raw: nn.Conv2d | None = None) -> None:
        QConv2d.__init__(self, raw if raw is not None else src, src.plan)
        self._init_qat(src, weight_quant, act_quant, bn, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        bias = self.bias if self.bn is None else None
        w = self.quantized_weight()
        if self.channels_last:
            w = w.contiguous(memory_format=torch.channels_last)  # the faster CPU convolution
        return self._finish(self._conv_forward(x, w, bias))

    def _float_layer(self, w: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,  # type: ignore[arg-type]
                         stride=self.stride, padding=self.padding, dilation=self.dilation,  # type: ignore[arg-type]
                         groups=self.groups, bias=bias is not None, padding_mode=self.padding_mode)
        conv.weight.data.copy_(w)
        if bias is not None:
            assert conv.bias is not None
            conv.bias.data.copy_(bias)
        return conv


class QatLinear(_QatWeightMixin, QLinear):  # type: ignore[misc,override]
    """`QLinear` trained with LSQ / STE / DoReFa weights, optional BN folding during training."""

    def __init__(self, src: QLinear, weight_quant: str = "lsq", act_quant: str = "lsq",
                 bn: _BatchNorm | None = None, mask: torch.Tensor | None = None,
                 raw: nn.Linear | None = None) -> None:
        QLinear.__init__(self, raw if raw is not None else src, src.plan)
        self._init_qat(src, weight_quant, act_quant, bn, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        bias = self.bias if self.bn is None else None
        return self._finish(F.linear(x, self.quantized_weight(), bias))

    def _float_layer(self, w: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        lin = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        lin.weight.data.copy_(w)
        if bias is not None:
            assert lin.bias is not None
            lin.bias.data.copy_(bias)
        return lin


QatLayer = QatConv2d | QatLinear


def qat_layers(model: nn.Module) -> list[tuple[str, QatConv2d | QatLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QatConv2d | QatLinear)]


def set_grad_quant(model: nn.Module, bits: int | None, gen: torch.Generator | None) -> None:
    """Quantize the output gradient of every QAT layer to ``bits`` with noise from ``gen``."""
    for _, m in qat_layers(model):
        m.grad_bits, m.grad_gen = bits, gen


def set_channels_last(model: nn.Module, on: bool) -> None:
    """Compute every QAT convolution with channels-last weights (training speed; same math)."""
    for _, m in qat_layers(model):
        m.channels_last = on


def _plain_layer(m: QatConv2d | QatLinear) -> QConv2d | QLinear:
    w, bias, scales = m.export_weight_bias()
    base = m._float_layer(w, bias)
    plain: QConv2d | QLinear
    plain = QConv2d(base, m.plan) if isinstance(m, QatConv2d) else QLinear(base, m.plan)  # type: ignore[arg-type]
    with torch.no_grad():
        plain.row_scheme.copy_(m.row_scheme)
        if plain.formats:
            plain.w_scales.copy_(scales.to(plain.w_scales.dtype))
    if m.input_quant is not None:
        iq = m.input_quant
        plain.input_quant = iq.to_plain() if isinstance(iq, QatAct) else copy.deepcopy(iq)
    return plain


def export_plain(model: nn.Module) -> nn.Module:
    """A copy of a QAT model with plain `QConv2d` / `QLinear` / `QAct` modules (eval mode).

    BN folded during training is folded into the stored weight and bias, pruning
    masks and DoReFa transforms are applied to the stored weight, and ``w_scales``
    hold the learned steps (XNOR ``α`` for binary rows): the plain model computes
    what the QAT model computes in eval mode, and is what
    ``mixq.graph.convert.to_quantized(fold_bn(float_model), plan)`` builds, so a
    state dict saved from it loads there.
    """
    out = copy.deepcopy(model)
    for name, m in qat_layers(out):
        parent_name, _, leaf = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, leaf, _plain_layer(m))
    for name, mod in list(out.named_modules()):
        if isinstance(mod, QatAct):
            parent_name, _, leaf = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, leaf, mod.to_plain())
    return out.eval()


def qat_from_quantized(q: nn.Module, weight_quant: str = "lsq", act_quant: str = "lsq") -> nn.Module:
    """A QAT-ready copy of the PTQ model ``q``: every ``QConv2d`` / ``QLinear`` becomes a ``QatConv2d`` /
    ``QatLinear`` whose steps start at its scales (``q`` is not changed)."""
    from mixq.graph.swap import set_submodule

    out = copy.deepcopy(q)
    for name, mod in list(out.named_modules()):
        new: nn.Module
        if isinstance(mod, QConv2d) and not isinstance(mod, QatConv2d):
            new = QatConv2d(mod, weight_quant, act_quant)
        elif isinstance(mod, QLinear) and not isinstance(mod, QatLinear):
            new = QatLinear(mod, weight_quant, act_quant)
        else:
            continue
        new.plan = mod.plan
        set_submodule(out, name, new)
    return out.train()
