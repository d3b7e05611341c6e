"""Dynamic channel pruning by feature boosting and suppression (FBS): convert, fit, fine-tune, measure.

    fbs = to_fbs(model, FbsConfig(density=0.7), sample)   # every Conv2d gated (mixq.nn.FBSConv2d), BN kept
    fit_predictors(fbs, x[:1024])                          # least-squares start of the saliency predictors
    train_fbs(fbs, model, (x, y), FbsConfig(...))          # KD from the dense model + L1 on the saliencies
    fold_fbs_bn(fbs)                                       # each gated conv's BN folded: the form quantized
    calibrate_thresholds(fbs, x[:5000])                    # adaptive layers (FbsConfig.adaptive) only
    macs = executed_macs(fbs, specs, x_test)               # MACs each test image really executes

The fine-tune runs on the one trainer (:func:`mixq.training.fit`); the L1 penalty reaches it as a gradient
hook of each FBS layer (:class:`mixq.nn.FBSConv2d`), each gated conv's BatchNorm trained with it (conv -> BN
-> gate, as in the paper) and folded after it (:func:`fold_fbs_bn`). Quantization composes: the
folded FBS model goes through ``mixq.quantize`` (PTQ) or ``mixq.algorithms.qat.train_qat`` like any model
(plan entries ``<layer>.conv`` and ``<layer>.predictor``), :func:`mixq.nn.fbs.calibrate_gates` calibrating the
gate quantizers after QAT.

Executed MACs (:func:`executed_macs`): a conv executes ``active_out * active_in * kh * kw * H_out * W_out``
MACs for an image — ``active_out`` the channels it computes (all for a dense conv; for an FBS layer the
kept channels with a nonzero saliency), ``active_in`` the input channels holding a nonzero value (the
channels an earlier FBS layer or static pruning suppressed are zero, through ReLU and max pooling).
Two refinements (:func:`input_activity`, :func:`conv_execution`), which change nothing where no input channel
is spatially constant and every conv is dense (groups 1):

* a *spatially constant* input channel (over more than one pixel) of a conv without zero padding (a 1x1
  projection, an unpadded conv) adds a per-image constant to each output: the hardware folds it into a
  per-image bias (``constant_in * active_out`` MACs once per image) instead of computing it. Such channels arise
  downstream of a suppressed channel: a depthwise conv whose input channel is zero outputs its (folded) bias,
  a constant after ReLU6 — MobileNetV2's expansion -> depthwise -> projection;
* a grouped conv (depthwise: groups == channels) executes, per group, ``active_in_g * C_out/g * kh * kw *
  H_out * W_out`` MACs, and computes the outputs of the groups with an active input (a depthwise channel
  whose input was suppressed is not computed: its output is the constant bias).

Linear layers are counted dense. Static channel pruning (:func:`mixq.algorithms.prune.channel_masks`)
is measured by the same rule, so the two compare at equal executed MACs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.algorithms.qat.config import QatConfig
from mixq.algorithms.qat.run import train_qat
from mixq.errors import MixqError
from mixq.graph.bnfold import fold_into, split_bn
from mixq.graph.capture import capture
from mixq.graph.spec import LayerSpec
from mixq.graph.swap import set_submodule
from mixq.io import atomic_write_json, atomic_write_torch
from mixq.modes import eval_mode
from mixq.nn.fbs import (
    FBSConv2d,
    active_channels,
    calibrate_gates,
    fbs_layers,
    keep_count,
    share_threshold,
    straight_through,
)
from mixq.plan import QuantPlan
from mixq.training import TrainConfig, accuracy, fit


class FbsError(MixqError):
    """An invalid FBS request (names the field or layer)."""


@dataclass(frozen=True)
class FbsConfig:
    """FBS settings: ``density`` of every gated layer (``densities`` overrides it per layer name),
    ``layers`` to gate (default: every Conv2d), ``gate_bits`` of the saliency codes, ``l1`` the
    penalty weight, and the fine-tune (``train``: the one trainer's settings; ``kd_alpha`` > 0 there
    distils from the dense model). ``anneal``: the fraction of the fine-tune's steps over which
    every layer's density falls linearly from 1 to its own (0: at its own from the first step).
    ``spread``: :func:`fit_predictors`'s saliency spread. ``refit_every`` > 0: the predictors are not
    trained by gradient but refitted (:func:`fit_predictors` on the first ``refit_images`` training
    images) every that many steps, so the channel choice keeps following each image's channel activity
    in the network as it is fine-tuned (trained by gradient, a suppressed channel's saliency gets no
    gradient from the task — its output is 0 before a ReLU — only the L1 push down, and the choice
    drifts towards a fixed set of channels). ``straight_through``: instead, the fine-tune gives suppressed
    channels the saliency gradient they would get if kept (:func:`mixq.nn.fbs.straight_through`).
    ``adaptive``: each image keeps its own number of channels, the density holding on average (a saliency
    threshold per layer instead of a fixed ``k``; :class:`mixq.nn.FBSConv2d`, :func:`calibrate_thresholds`)."""

    density: float = 0.5
    densities: Mapping[str, float] = field(default_factory=dict)
    layers: tuple[str, ...] | None = None
    gate_bits: int = 8
    l1: float = 1e-4
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=0.005, kd_alpha=0.7))
    anneal: float = 0.0
    spread: float = 0.1
    refit_every: int = 0
    refit_images: int = 1024
    straight_through: bool = False
    adaptive: bool = False

    def __post_init__(self) -> None:
        for name, d in [("density", self.density), *((f"densities.{k}", v) for k, v in self.densities.items())]:
            if isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d <= 1:
                raise FbsError(f"FbsConfig.{name}: must be in (0, 1], got {d!r}")
        if isinstance(self.gate_bits, bool) or not isinstance(self.gate_bits, int) or not 2 <= self.gate_bits <= 16:
            raise FbsError(f"FbsConfig.gate_bits: must be an integer in [2, 16], got {self.gate_bits!r}")
        if isinstance(self.l1, bool) or not isinstance(self.l1, int | float) or not 0 <= self.l1 < float("inf"):
            raise FbsError(f"FbsConfig.l1: must be a finite number >= 0, got {self.l1!r}")
        if isinstance(self.anneal, bool) or not isinstance(self.anneal, int | float) or not 0 <= self.anneal <= 1:
            raise FbsError(f"FbsConfig.anneal: must be a fraction in [0, 1], got {self.anneal!r}")
        if isinstance(self.spread, bool) or not isinstance(self.spread, int | float) or not 0 < self.spread <= 1:
            raise FbsError(f"FbsConfig.spread: must be in (0, 1], got {self.spread!r}")
        for name in ("refit_every", "refit_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "refit_every" else 1):
                raise FbsError(f"FbsConfig.{name}: must be an integer >= {0 if name == 'refit_every' else 1}, "
                               f"got {v!r}")
        if self.adaptive and self.anneal:
            raise FbsError("FbsConfig.anneal: anneals a fixed channel count; an adaptive layer's has none "
                           "(set anneal=0 or adaptive=False)")

    def density_of(self, layer: str) -> float:
        return float(self.densities.get(layer, self.density))


@torch.no_grad()
def fold_fbs_bn(model: nn.Module) -> nn.Module:
    """Fold every FBS layer's BatchNorm into its conv (its running statistics: the eval-mode transform), in place;
    ``model`` (returned) then computes what it computed in eval mode, its FBS layers with ``bn`` None — the form
    quantization, the integer engine and the hardware estimates take. Layers without a BatchNorm are left as
    they are, so folding twice is harmless."""
    for m in fbs_layers(model).values():
        if m.bn is not None:
            fold_into(m.conv, m.bn)
            m.bn = None
    return model


def to_fbs(model: nn.Module, cfg: FbsConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of ``model`` with the chosen Conv2d layers wrapped in `FBSConv2d` (predictors at saliency 1: the
    copy computes what ``model`` computes in eval mode until a layer keeps fewer channels than it has).

    The BatchNorm directly after a gated conv (the pairs :func:`mixq.graph.bnfold.fold_bn` finds) moves into
    its FBS layer (``bn``; its place in the model becomes ``nn.Identity``), so the layer computes
    ``gate * bn(conv(x))`` and a fine-tune trains with BatchNorm; :func:`fold_fbs_bn` folds it
    after training. Every other foldable BatchNorm is folded. ``model`` is not changed."""
    out, kept = split_bn(model, input_shape, keep=lambda n, m: type(m) is nn.Conv2d
                         and (cfg.layers is None or n in cfg.layers))
    convs = {n: m for n, m in out.named_modules() if type(m) is nn.Conv2d}
    names = list(cfg.layers) if cfg.layers is not None else list(convs)
    for n in [*names, *cfg.densities]:
        if n not in convs:
            raise FbsError(f"FbsConfig.layers: {n!r} is not a Conv2d layer of {type(model).__name__}")
    for n in names:
        set_submodule(out, n, FBSConv2d(convs[n], cfg.density_of(n), gate_bits=cfg.gate_bits, l1=cfg.l1,
                                        bn=kept.get(n), adaptive=cfg.adaptive))  # type: ignore[arg-type]
    return out.eval()


@torch.no_grad()
def fit_predictors(model: nn.Module, x: torch.Tensor, spread: float = 0.1, ridge: float = 1e-3, *,
                   per_channel: bool = True, clip: float = 8.0) -> nn.Module:
    """Start every predictor from a ridge regression of the channel importance on the pooled input.

    With all channels kept (as the dense model), each FBS layer's target for an image is
    ``1 + spread * (r_c - 1)``, ``r_c = mean_hw relu(bn(conv(x)))_c`` (the layer's BatchNorm where it still
    holds one: the value the gate scales) divided by its mean over ``x``: the
    ranking of the channels' activity with saliencies near 1, so boosting starts near the identity (a
    full-scale target rescales every channel at once and the network starts far from the dense one).
    ``per_channel=False`` divides by the layer's mean over channels and images instead (ranking by absolute
    activity); the ratio is clipped at ``clip``, so a channel nearly dead on the fit images cannot ask for a
    huge saliency on the few images where it fires (a ResNet's boosted residual stream then explodes).
    The predictor's weight and bias solve the least-squares fit. In place; each layer keeps its ``k``.
    """
    layers = fbs_layers(model)
    saved = {n: (m.k, None if m.threshold is None else m.threshold.clone()) for n, m in layers.items()}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    pooled: dict[str, torch.Tensor] = {}

    def hook(name: str, is_input: bool) -> Any:
        def run(m: nn.Module, args: tuple[torch.Tensor, ...], y: torch.Tensor) -> None:
            if is_input:  # the conv's input: what the predictor reads
                pooled[name] = args[0].mean(dim=(2, 3))
            seen[name] = (pooled[name], torch.relu(y).mean(dim=(2, 3)))  # the conv's, then the BN's output
        return run

    handles = [m.conv.register_forward_hook(hook(n, True)) for n, m in layers.items()]
    handles += [m.bn.register_forward_hook(hook(n, False)) for n, m in layers.items() if m.bn is not None]
    try:
        for m in layers.values():
            m.k = m.conv.out_channels
            if m.threshold is not None:
                m.threshold.zero_()
            m.predictor.weight.zero_()
            m.predictor.bias.fill_(1.0)
        with eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
        for n, m in layers.items():
            m.k, thr = saved[n]
            if thr is not None and m.threshold is not None:
                m.threshold.copy_(thr)
    for n, m in layers.items():
        p, t = (v.double() for v in seen[n])
        ref = t.mean(0) if per_channel else t.mean().expand(t.shape[1])
        t = 1 + spread * ((t / ref.clamp_min(1e-12)).clamp(max=clip) - 1)
        a = torch.cat([p, torch.ones(p.shape[0], 1, dtype=p.dtype)], 1)
        sol = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype), a.T @ t)
        m.predictor.weight.copy_(sol[:-1].T.to(m.predictor.weight.dtype))
        m.predictor.bias.copy_(sol[-1].to(m.predictor.bias.dtype))
    return model


@torch.no_grad()
def static_prior(model: nn.Module, keep: Mapping[str, torch.Tensor], margin: float = 0.5) -> nn.Module:
    """Start the winner-take-all at a static channel choice: the predictor bias of every channel outside
    ``keep[layer]`` (a ``(C_out,)`` bool, or a static pruning mask of the dense layer's weight, whose nonzero
    rows are the kept channels) is lowered by ``margin``. With ``margin`` above the predictors' per-image
    spread the model starts as the statically pruned one, its boosting (the kept channels scaled per image)
    on top; a smaller margin lets strongly active channels of an image still win. In place."""
    layers = fbs_layers(model)
    for name, k in keep.items():
        m = layers.get(name)
        if m is None:
            raise FbsError(f"static_prior: {name!r} is not an FBS layer of the model")
        kept = k.reshape(k.shape[0], -1).ne(0).any(1) if k.dim() > 1 or k.dtype != torch.bool else k
        if kept.shape[0] != m.conv.out_channels:
            raise FbsError(f"static_prior: {name!r} has {m.conv.out_channels} channels, the choice {kept.shape[0]}")
        m.predictor.bias.sub_(margin * (~kept).to(m.predictor.bias.dtype))
    return model


def train_fbs(model: nn.Module, teacher: nn.Module | None, train: tuple[torch.Tensor, torch.Tensor],
              cfg: FbsConfig, *, val: tuple[torch.Tensor, torch.Tensor] | None = None,
              fill: float = 0.0) -> dict[str, Any]:
    """Fine-tune the FBS ``model`` in place with the one trainer: KD from ``teacher`` (the dense model,
    when ``cfg.train.kd_alpha > 0``) and the L1 penalty of every FBS layer; the trainer's history."""
    layers = fbs_layers(model)
    if not layers:
        raise FbsError("train_fbs: the model has no FBS layer (convert it with to_fbs first)")
    n = int(train[0].shape[0])
    per_epoch = n // cfg.train.batch_size if cfg.train.drop_last else -(-n // cfg.train.batch_size)
    ramp = cfg.anneal * per_epoch * cfg.train.epochs

    refit_x = train[0][:cfg.refit_images]

    def before_step(epoch: int, step: int, _rank: int) -> None:
        done = epoch * per_epoch + step
        if cfg.refit_every and done and done % cfg.refit_every == 0:
            fit_predictors(model, refit_x, cfg.spread)  # keeps each layer's k
        if ramp > 0:
            t = min(1.0, (done + 1) / ramp)
            for m in layers.values():
                m.k = keep_count(1.0 - t * (1.0 - m.density), m.conv.out_channels)

    params = [q for m in layers.values() for q in m.predictor.parameters()]
    grads = [q.requires_grad for q in params]
    try:
        if cfg.refit_every:
            for q in params:
                q.requires_grad_(False)
        with straight_through(model, train[0][:2]) if cfg.straight_through else nullcontext():
            res = fit(model.train(), *train, cfg.train, teacher=teacher.eval() if teacher is not None else None,
                      val=val, fill=fill, before_step=before_step if ramp > 0 or cfg.refit_every else None,
                      desc="fbs finetune", config_name="FbsConfig.train")
    finally:
        for m in layers.values():
            m.k = m.conv.out_channels if m.adaptive else keep_count(m.density, m.conv.out_channels)
        for q, g in zip(params, grads, strict=True):
            q.requires_grad_(g)
    model.eval()
    return {"history": res.history, "train_time_s": round(res.train_time_s, 2), "epochs": cfg.train.epochs}


def _run_hooked(model: nn.Module, x: torch.Tensor, hooks: list[Any], batch_size: int) -> None:
    """Run ``model`` (eval mode) over ``x`` in batches so its forward ``hooks`` record them; then remove them."""
    try:
        with eval_mode(model):
            for i in range(0, x.shape[0], batch_size):
                model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()


def folds_constant(conv: nn.Conv2d) -> bool:
    """Whether a spatially constant input channel adds a constant to every output pixel of ``conv`` (no zero
    padding), so the hardware folds it into a per-image bias instead of computing it."""
    pad = conv.padding
    return conv.padding_mode != "zeros" or pad == "valid" or (not isinstance(pad, str) and not any(pad))


def input_activity(x: torch.Tensor, fold_constant: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, ``(N, C)`` bool each: the *active* input channels of a ``(N, C, H, W)`` conv input (nonzero
    and, with ``fold_constant`` and more than one pixel, not spatially constant) and the *constant* ones
    (nonzero, spatially constant: folded into a per-image bias)."""
    active = active_channels(x)
    const = torch.zeros_like(active)
    if fold_constant and x.shape[2] * x.shape[3] > 1:
        flat = x.detach().flatten(2)
        const = flat.eq(flat[:, :, :1]).all(dim=2) & active
    return active & ~const, const


def conv_execution(spec: LayerSpec, groups: int, active_in: torch.Tensor, const_in: torch.Tensor,
                   computed_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, ``(N,)`` int64 each: the active input channels, the computed output channels and the
    executed MACs of a conv (see the module doc). ``active_in`` / ``const_in`` from :func:`input_activity`;
    ``computed_out`` ``(N,)``: the output channels a groups-1 conv computes (unused for grouped convs: the
    outputs of the groups with an active input)."""
    n, ci, co = active_in.shape[0], spec.in_channels, spec.out_channels
    g = max(groups, 1)
    per = spec.macs // max(co * (ci // g), 1)  # kh * kw * H_out * W_out
    a_in = active_in.sum(1).long()
    if g == 1:
        a_out = computed_out.long()
        return a_in, a_out, a_in * a_out * per + const_in.sum(1).long() * a_out
    ai = active_in.reshape(n, g, ci // g).sum(2).long()
    cg = const_in.reshape(n, g, ci // g).sum(2).long()
    a_out = (ai > 0).long().sum(1) * (co // g)
    return a_in, a_out, (ai.sum(1) * per + cg.sum(1)) * (co // g)


def _conv_hook(sink: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None], spec: LayerSpec | None) -> Any:
    """A forward hook on a Conv2d or an FBS layer that hands ``sink`` its (a_in, a_out, macs) per image."""
    def run(m: nn.Module, a: tuple[torch.Tensor, ...], y: torch.Tensor) -> None:
        conv = m.conv if isinstance(m, FBSConv2d) else m
        assert isinstance(conv, nn.Conv2d)
        s = spec or LayerSpec("", "conv", (), (), conv.in_channels, conv.out_channels, groups=conv.groups,
                              macs=conv.in_channels * conv.out_channels // conv.groups)
        act, const = input_activity(a[0], folds_constant(conv))
        if isinstance(m, FBSConv2d):
            assert m.last_active is not None
            out = m.last_active[1]
        else:
            out = active_channels(y).sum(1)
        sink(*conv_execution(s, conv.groups, act, const, out))
    return run


@torch.no_grad()
def executed_macs(model: nn.Module, specs: Sequence[LayerSpec], x: torch.Tensor,
                  batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Per layer (the dense model's names, as in ``specs``), the MACs each image of ``x`` executes
    (``(N,)`` int64; see the module doc), and ``"total"``. ``model`` is an FBS model or any model
    whose compute layers keep the names of ``specs`` (a statically pruned one)."""
    by_name = {s.name: s for s in specs if s.is_compute}
    counts: dict[str, list[torch.Tensor]] = {n: [] for n in by_name}
    mods = dict(model.named_modules())
    hooks = []
    for name, spec in by_name.items():
        m = mods.get(name)
        if isinstance(m, FBSConv2d | nn.Conv2d):
            def sink(_a: torch.Tensor, _o: torch.Tensor, macs: torch.Tensor, name: str = name) -> None:
                counts[name].append(macs)
            hooks.append(m.register_forward_hook(_conv_hook(sink, spec)))
        elif m is not None:
            def after_dense(_m: nn.Module, a: tuple[torch.Tensor, ...], _y: Any, name: str = name,
                            s: LayerSpec = spec) -> None:
                counts[name].append(torch.full((a[0].shape[0],), s.macs, dtype=torch.int64))
            hooks.append(m.register_forward_hook(after_dense))
        else:
            raise FbsError(f"executed_macs: the model has no layer {name!r} of the specs")
    _run_hooked(model, x, hooks, batch_size)
    out = {n: torch.cat(v).long() for n, v in counts.items()}
    out["total"] = torch.stack(list(out.values())).sum(0)
    return out


@torch.no_grad()
def channel_counts(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None,
                   batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Per layer, ``(N, 2)`` int64: the active input and computed output channels of each image — the plain
    data :func:`mixq.hw.dynamic.dynamic_overlay` prices. ``layers`` (default: the FBS layers) may name plain
    Conv2d layers too (a statically pruned model, or the layers downstream of a gated one): their computed
    outputs are the nonzero channels (a grouped conv's: those of the groups with an active input), their
    active inputs by :func:`input_activity` (constant channels folded, see the module doc)."""
    mods = dict(model.named_modules())
    names = list(layers) if layers is not None else list(fbs_layers(model))
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    for n in names:
        m = mods.get(n)
        if not isinstance(m, FBSConv2d | nn.Conv2d):
            raise FbsError(f"channel_counts: {n!r} is not a Conv2d or FBS layer of the model")

        def sink(a_in: torch.Tensor, a_out: torch.Tensor, _macs: torch.Tensor, n: str = n) -> None:
            got[n].append(torch.stack([a_in, a_out], 1).long())
        hooks.append(m.register_forward_hook(_conv_hook(sink, None)))
    _run_hooked(model, x, hooks, batch_size)
    return {n: torch.cat(v) for n, v in got.items()}


def densities(model: nn.Module) -> dict[str, dict[str, float | int]]:
    """Per FBS layer: the configured density, ``k`` and the channel count (an adaptive layer: ``k`` the channel
    count, and its ``threshold``)."""
    return {n: {"density": m.density, "k": m.k, "channels": m.conv.out_channels,
                **({} if m.threshold is None else {"threshold": float(m.threshold)})}
            for n, m in fbs_layers(model).items()}


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Set every adaptive FBS layer's threshold so that it keeps, over the images ``x``, its density's share of
    its channels (the ``ceil(d * N * C)`` largest saliencies and any tied with the last); in place, layer by
    layer in forward order (a layer's saliencies depend on the thresholds before it). The fraction each layer
    then keeps on ``x``; empty when the model has no adaptive layer."""
    layers = {n: m for n, m in fbs_layers(model).items() if m.threshold is not None}
    kept: dict[str, float] = {}
    for name, m in layers.items():
        got: list[torch.Tensor] = []
        assert m.threshold is not None
        m.threshold.zero_()
        _run_hooked(model, x, [m.register_forward_hook(lambda mm, _a, _y, got=got: got.append(mm.last_saliency))],
                    batch_size)
        s = torch.cat(got).flatten()
        tau = share_threshold(s, m.density)
        m.threshold.fill_(float(tau))
        kept[name] = float(((s >= tau) & (s > 0)).double().mean())
    return kept


def fbs_and_quantize(model: nn.Module, make_plan: Callable[[nn.Module], QuantPlan],
                     train: tuple[torch.Tensor, torch.Tensor], cfg: FbsConfig, qat_cfg: QatConfig | None,
                     out_dir: str | Path, *, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                     fill: float = 0.0) -> tuple[dict[str, Any], nn.Module]:
    """The ``mixq prune --dynamic`` run: FBS conversion, predictor fit, KD fine-tune (``cfg.train``, with the
    gated convs' BatchNorm), the BatchNorm folded (:func:`fold_fbs_bn`), then QAT under
    ``make_plan(fbs_model)`` (``qat_cfg``; ``None``: float only), its gates quantized during QAT (calibrated on
    the float model) and calibrated again after.
    Writes ``out_dir/fbs.json`` (densities, accuracies, executed MACs per image on ``val``) and, with QAT,
    ``qat/`` (the QAT run folder) and ``model.pt`` (the quantized FBS model, gates calibrated). The summary and
    the final model (quantized with QAT, else the float FBS model)."""
    out = Path(out_dir)
    shape = tuple(int(d) for d in train[0].shape[1:])
    fbs = to_fbs(model, cfg, shape)
    fit_predictors(fbs, train[0][:1024], cfg.spread)
    summary: dict[str, Any] = {"densities": densities(fbs), "finetune_epochs": cfg.train.epochs}
    if cfg.train.epochs > 0:
        summary["finetune"] = train_fbs(fbs, model, train, cfg, fill=fill)
    fold_fbs_bn(fbs)  # the fine-tune ends here: quantization, the engine and the estimates take the folded form
    calibrate_thresholds(fbs, train[0][:5000])
    final: nn.Module = fbs
    if qat_cfg is not None:
        calib = [train[0][i:i + 256] for i in range(0, 1024, 256)]
        gated = calibrate_gates(copy.deepcopy(fbs), calib)  # QAT trains with the gates quantized
        res = train_qat(gated, make_plan(fbs), train, qat_cfg, out / "qat", val=val, teacher=fbs, fill=fill)
        final = calibrate_gates(res.model, calib)
        calibrate_thresholds(final, train[0][:5000])  # on the quantized saliencies
        atomic_write_torch(out / "model.pt", final.state_dict())
        summary["qat_train_time_s"] = res.summary.get("train_time_s")
    summary["densities"] = densities(final)  # an adaptive layer's threshold as calibrated at the end
    if val is not None:
        specs = capture(model, shape)
        macs = executed_macs(final, specs, val[0])["total"].double()
        summary.update(float_accuracy=accuracy(fbs, *val), val_accuracy=accuracy(final, *val),
                       dense_macs=sum(s.macs for s in specs if s.is_compute), macs_mean=float(macs.mean()),
                       macs_p95=float(torch.quantile(macs, 0.95)))
    atomic_write_json(out / "fbs.json", summary)
    return summary, final
