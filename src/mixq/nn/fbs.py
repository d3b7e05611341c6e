"""Feature boosting and suppression (FBS, Gao et al., ICLR 2019): a conv layer that computes, per input,
only its most salient output channels and scales them by their saliency.

:class:`FBSConv2d` wraps a Conv2d and, optionally, the BatchNorm that followed it (the paper's conv -> BN ->
gate order, so a fine-tune trains with BatchNorm); ``prune.fbs.fold_fbs_bn`` folds that BatchNorm into the conv after
training (exact in eval mode: ``gate * bn(conv(x)) == gate * conv'(x)``), the form quantization, the integer
engine and the hardware estimates take:

* **saliency predictor** ``s = relu(predictor(mean_hw(x)))`` — global average pool of the layer input
  (the conv's own quantized input once quantized), a ``Linear(C_in -> C_out)``, a ReLU;
* **gate quantizer** ``gate_quant`` (a :class:`~mixq.nn.QAct`, unsigned ``gate_bits``): identity in float,
  calibrated with every other activation quantizer by :func:`mixq.graph.convert.calibrate` (or
  :func:`calibrate_gates` alone after QAT), so the saliencies the hardware ranks are integer codes;
* **winner-take-all** (:func:`wta_mask`) keeping the ``k = ceil(d * C_out)`` largest saliencies per
  input, ties to the lower channel index (a stable sort, the integer engine's rule too);
* or, with ``adaptive=True``, a **per-image channel count**: the layer keeps every channel whose saliency
  reaches its ``threshold`` (a buffer), so an image keeps as many channels as it has salient ones and the
  density ``d`` holds on average. In training the threshold is the batch's: the ``ceil(d * N * C_out)``
  largest saliencies of the batch are kept (a winner-take-all over the batch), and a running average of
  it is kept; :func:`calibrate_thresholds` sets it from data after training (the mean density exactly
  ``d``). Quantized, the rule is on the gate codes (:meth:`FBSConv2d.min_gate_code`);
* **boosting** ``y_c = s_c * bn(conv(x))_c`` (``bn`` the identity once folded) for kept channels, ``0`` for
  the others — a kept channel whose saliency is 0 is 0 too, so it is not computed either
  (:func:`active_channels`);
* **L1 penalty** ``l1 * mean_n sum_c s_c``: the gradient is added to the saliencies in training (a tensor
  hook), so the one trainer (:func:`mixq.training.fit`) needs no extra loss term; :func:`fbs_penalty`
  gives its value for reporting;
* **straight-through saliencies** (training only, :func:`straight_through`): trained by gradient, a suppressed
  channel's saliency gets none from the task — its output is 0 and the ReLU after it passes no gradient at
  0 — only the L1 push down, so the choice drifts to a fixed channel set. Inside :func:`straight_through`
  each gated layer whose output feeds an ``nn.ReLU`` module applies that ReLU itself (``s * relu(f)``,
  the same values: ``s >= 0``), the ReLU module is the identity, and a suppressed channel's saliency gets
  the gradient it would get if it were kept (``dL/ds_c = sum_hw dL/dy_c * relu(f_c)``); the forward values
  are unchanged.

Quantization composes: the children ``conv`` and ``predictor`` are ordinary Conv2d / Linear layers that
:func:`mixq.graph.convert.to_quantized` swaps for ``QConv2d`` / ``QLinear`` under the plan entries
``<name>.conv`` / ``<name>.predictor`` (and QAT for its trainable versions). The front end calls the
module whole (op kind ``fbs``); the integer engine builds it in :mod:`mixq.engine.convert_fbs`. A layer still
holding its BatchNorm refuses to run with a quantized conv (fold it first).

>>> wta_mask(torch.tensor([[0.5, 2.0, 2.0, 0.0]]), 2).tolist()
[[False, True, True, False]]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from mixq.errors import ModelError
from mixq.formats import FixedPoint
from mixq.nn.modules import QAct, observe


def keep_count(density: float, channels: int) -> int:
    """Channels the winner-take-all keeps: ``ceil(density * channels)``, at least 1.

    >>> keep_count(0.7, 32), keep_count(0.01, 64), keep_count(1.0, 10)
    (23, 1, 10)
    """
    return max(1, min(channels, math.ceil(round(density * channels, 9))))


def wta_mask(saliency: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``(N, C)``: the ``k`` largest saliencies of each row, ties to the lower index (stable sort)."""
    order = torch.sort(saliency.detach(), dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(saliency, dtype=torch.bool).scatter_(1, order, True)


def keep_channels(saliency: torch.Tensor, k: int, floor: float | torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C)`` bool: the computed channels — the ``k`` largest saliencies (or gate codes: the integer engine's
    rule is this one) that are not 0 and, with ``floor``, at least ``floor`` (an adaptive layer's threshold),
    ties to the lower index.

    >>> keep_channels(torch.tensor([[3, 0, 5, 1], [1, 1, 2, 0]]), 4, floor=2).tolist()
    [[True, False, True, False], [False, False, True, False]]
    """
    s = saliency.detach()
    keep = (s > 0) if k >= s.shape[1] else wta_mask(s, k) & (s > 0)
    return keep if floor is None else keep & (s >= floor)


def share_threshold(saliency: torch.Tensor, density: float) -> torch.Tensor:
    """The least saliency among the ``keep_count(density, N * C)`` largest of ``saliency`` (any shape): the
    threshold that keeps ``density`` of them (more where values tie with it); 0 at density 1, so every channel
    with a nonzero saliency is kept on any input, not only on these.

    >>> s = torch.tensor([[0.5, 2.0], [1.0, 3.0]])
    >>> share_threshold(s, 0.5).item(), share_threshold(s, 1.0).item()
    (2.0, 0.0)
    """
    s = saliency.detach().flatten()
    if density >= 1:
        return torch.zeros((), dtype=s.dtype, device=s.device)
    return torch.topk(s, keep_count(density, s.numel())).values[-1]


def active_channels(x: torch.Tensor) -> torch.Tensor:
    """Per image, the channels of a ``(N, C, H, W)`` tensor that hold a nonzero value (``(N, C)`` bool)."""
    return x.detach().ne(0).flatten(2).any(dim=2)


class FBSConv2d(nn.Module):
    """A Conv2d (and the BatchNorm after it, ``bn``, until ``prune.fbs.fold_fbs_bn`` folds it) gated per input by its
    predicted channel saliencies (see the module doc)."""

    def __init__(self, conv: nn.Conv2d, density: float, *, gate_bits: int = 8, l1: float = 0.0,
                 bn: nn.BatchNorm2d | None = None, adaptive: bool = False) -> None:
        super().__init__()
        if isinstance(density, bool) or not 0.0 < float(density) <= 1.0:
            raise ModelError(f"fbs.density: must be in (0, 1], got {density!r}")
        if not isinstance(l1, int | float) or not math.isfinite(l1) or l1 < 0:
            raise ModelError(f"fbs.l1: must be a finite number >= 0, got {l1!r}")
        if conv.groups != 1:
            raise ModelError(f"fbs: grouped convolutions (groups={conv.groups}) are not gated")
        if bn is not None and (not isinstance(bn, nn.BatchNorm2d) or bn.num_features != conv.out_channels
                               or bn.running_mean is None or bn.running_var is None):
            raise ModelError(f"fbs.bn: must be a BatchNorm2d with running statistics over the conv's "
                             f"{conv.out_channels} output channels, got {bn!r}")
        self.conv = conv
        self.bn = bn
        self.predictor = nn.Linear(conv.in_channels, conv.out_channels)
        with torch.no_grad():  # every channel equally salient (1) until trained or fitted
            self.predictor.weight.zero_()
            self.predictor.bias.fill_(1.0)
        self.gate_quant = QAct(FixedPoint(bits=gate_bits, signed=False))
        self.density = float(density)
        self.adaptive = bool(adaptive)
        self.k = conv.out_channels if self.adaptive else keep_count(self.density, conv.out_channels)
        self.threshold: torch.Tensor | None
        # the saliency a channel needs to be computed (adaptive layers only: see the module doc)
        self.register_buffer("threshold", torch.zeros(()) if self.adaptive else None)
        self.l1 = float(l1)
        self.last_saliency: torch.Tensor | None = None
        self.last_keep: torch.Tensor | None = None  # (N, C) bool: the channels the last forward computed
        self.last_active: tuple[torch.Tensor, torch.Tensor] | None = None
        self.relu_inside = False  # set by straight_through only

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """``gate_quant(relu(predictor(mean_hw(input_quant(x)))))``: ``(N, C_out)``, >= 0."""
        iq = getattr(self.conv, "input_quant", None)
        xin = iq(x) if iq is not None else x
        return self.gate_quant(F.relu(self.predictor(xin.mean(dim=(2, 3)))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``bn(conv(x))`` (``conv(x)`` once the BatchNorm is folded): every channel, before the gate."""
        if self.bn is None:
            return self.conv(x)
        if hasattr(self.conv, "input_quant"):
            raise ModelError("fbs: the BatchNorm of a gated conv must be folded "
                             "(mixq.algorithms.prune.fbs.fold_fbs_bn) before its conv is quantized")
        return self.bn(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.saliency(x)
        if self.training and self.l1 > 0 and s.requires_grad:
            scale = self.l1 / s.shape[0]
            s.register_hook(lambda g: g + scale * (s.detach() > 0).to(g.dtype))
        keep = keep_channels(s, self.k, self._floor(s))
        self.last_saliency, self.last_keep = s.detach(), keep
        self.last_active = (active_channels(x).sum(1), keep.sum(1))
        gate = torch.where(keep, s, torch.zeros_like(s))
        f = self.features(x)
        if not self.relu_inside:
            return f * gate[:, :, None, None]
        r = F.relu(f)
        out = r * gate[:, :, None, None]
        if self.training and s.requires_grad:  # 0 in value; d out_c / d s_c = relu(f_c) for suppressed c
            out = out + r.detach() * ((s - s.detach()) * (~keep).to(s.dtype))[:, :, None, None]
        return out

    def _floor(self, s: torch.Tensor) -> torch.Tensor | None:
        """An adaptive layer's threshold for this forward: the batch's in training (its running average kept),
        else the buffer; ``None`` for a fixed-``k`` layer."""
        if self.threshold is None:
            return None
        if not self.training:
            return self.threshold
        tau = share_threshold(s, self.density)
        self.threshold.mul_(0.9).add_(0.1 * tau)
        return tau

    def min_gate_code(self, step: float, top: int) -> int:
        """The least gate code an adaptive layer keeps (1 for a fixed-``k`` layer): the first code of
        ``0 .. top`` whose value through the gate quantizer (``code * step`` snapped as the fake-quant model
        snaps it) reaches the threshold — so the integer rule ``code >= min_gate_code`` and the fake-quant
        rule ``s >= threshold`` keep the same channels; ``top + 1`` when none does."""
        if self.threshold is None:
            return 1
        with torch.no_grad():
            vals = self.gate_quant(torch.arange(top + 1, dtype=torch.float64).float() * step)
            hit = (vals >= self.threshold).nonzero()
        return max(1, int(hit[0]) if hit.numel() else top + 1)

    def extra_repr(self) -> str:
        k = "adaptive" if self.adaptive else f"k={self.k}/{self.conv.out_channels}"
        return f"density={self.density}, {k}, l1={self.l1}"


@contextmanager
def straight_through(model: nn.Module, sample: torch.Tensor) -> Iterator[list[str]]:
    """Within the block, the FBS layers of ``model`` whose output goes straight into an ``nn.ReLU`` module
    (found by running ``sample``; a ReLU module called more than once per forward is left alone) apply that
    ReLU themselves, with straight-through saliencies (see the module doc), and the ReLU modules are the
    identity. Yields the names of those layers; everything is restored on exit. The ReLU is taken to be the
    gated output's only consumer (conv -> BN -> ReLU, as in CNV and a ResNet block's first conv)."""
    layers = fbs_layers(model)
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors held, so their ids are not reused
    fed: dict[str, list[str]] = {}
    calls: dict[str, int] = {}

    def after_fbs(name: str) -> object:
        def hook(_m: nn.Module, _a: object, y: torch.Tensor) -> None:
            outputs[id(y)] = (name, y)
        return hook

    def before_relu(name: str) -> object:
        def hook(_m: nn.Module, a: tuple[torch.Tensor, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            if a and id(a[0]) in outputs:
                fed.setdefault(name, []).append(outputs[id(a[0])][0])
        return hook

    relus = {n: m for n, m in model.named_modules() if type(m) is nn.ReLU}
    handles = [m.register_forward_hook(after_fbs(n)) for n, m in layers.items()]  # type: ignore[arg-type]
    handles += [m.register_forward_pre_hook(before_relu(n)) for n, m in relus.items()]  # type: ignore[arg-type]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample[:2])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    pairs = {n: src[0] for n, src in fed.items() if calls.get(n) == 1 and len(src) == 1}
    try:
        for n, src in pairs.items():
            model.set_submodule(n, nn.Identity())
            layers[src].relu_inside = True
        yield sorted(pairs.values())
    finally:
        for n, src in pairs.items():
            model.set_submodule(n, relus[n])
            layers[src].relu_inside = False


def fbs_layers(model: nn.Module) -> dict[str, FBSConv2d]:
    """The FBS layers of ``model`` by qualified name (registration order)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FBSConv2d)}


def fbs_penalty(model: nn.Module) -> torch.Tensor:
    """``sum_l l1_l * mean_n sum_c s_c`` of the last forward (0 before any forward)."""
    terms = [m.l1 * m.last_saliency.sum(1).mean() for m in fbs_layers(model).values()
             if m.last_saliency is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def calibrate_gates(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Calibrate only the gate quantizers of ``model``'s FBS layers (in place), e.g. after QAT, whose
    activation quantizers are already trained; the model runs in eval mode and is left there."""
    model.eval()
    observe(model, [m.gate_quant for m in fbs_layers(model).values()], batches,
            "calibrate_gates: needs at least one batch of data")
    return model
