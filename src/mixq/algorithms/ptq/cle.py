"""Cross-layer equalization (CLE) and high-bias absorption (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019).

For two layers joined by a positively homogeneous function ``f`` (ReLU, max/avg pooling,
flatten), ``W2 f(W1 x + b1) = (W2 S) f(S^-1 W1 x + S^-1 b1)`` for any positive diagonal
``S``. CLE picks ``s_c = sqrt(r1_c / r2_c)`` (``r1_c`` the range of output row ``c`` of
``W1``, ``r2_c`` the range of input column ``c`` of ``W2``) so both become
``sqrt(r1_c r2_c)``: the per-tensor ranges stop being dominated by a few channels.
Chains (conv → depthwise → conv) are swept until the scales stop changing.

ReLU6 is not positively homogeneous. ``relu6="clip"`` (default) replaces it with a
:class:`ClippedReLU` whose per-channel upper bound ``6 / s_c`` keeps the float function
exactly; ``relu6="relu"`` replaces it with ReLU as DFQ and Brevitas do (changes the model);
``relu6="keep"`` leaves pairs joined by ReLU6 alone.

High-bias absorption moves ``c = max(0, μ - n·σ)`` of a channel whose pre-activation
``N(μ, σ²)`` is almost always above ``c`` from ``b1`` into ``b2 += W2 c``: the activation range
shrinks by ``c``. It is exact when the pre-activation stays above ``c`` and the second layer
has no zero padding (padded borders see 0, not ``c``); ``padded=False`` skips padded layers.

Everything returns a new model; the input is never changed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq import progress
from mixq.algorithms.ptq._common import groups_of
from mixq.errors import MixqError
from mixq.graph import capture, foldable_pairs, set_submodule
from mixq.graph.spec import LayerSpec


class ChannelStats(NamedTuple):
    """Per-channel mean and standard deviation of a layer's output (pre-activation)."""

    mean: torch.Tensor
    std: torch.Tensor


class ClippedReLU(nn.Hardtanh):
    """``min(max(x, 0), upper_c)`` with one upper bound per channel (dim 1): an equalized ReLU6."""

    upper: torch.Tensor

    def __init__(self, upper: torch.Tensor) -> None:
        super().__init__(0.0, float(upper.max()) if upper.numel() else 6.0)
        self.register_buffer("upper", upper.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.upper.to(x.dtype)
        shape = [1] * x.dim()
        shape[1 if x.dim() > 1 else 0] = -1
        return torch.minimum(torch.relu(x), u.reshape(shape))

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}, max_upper={float(self.upper.max()):.4g}"


@dataclass(frozen=True)
class EqualizationPair:
    """Two compute layers joined by channel-wise positively homogeneous ops.

    ``act`` is the activation module between them (``None`` when there is none or it is
    functional); ``between`` lists the spec kinds on the path; ``spatial`` is how many input
    features of ``second`` each channel of ``first`` feeds (``H·W`` when a flatten of a
    feature map sits between a conv and a linear layer, else 1); ``padded`` is whether
    ``second`` zero-pads its input.
    """

    first: str
    second: str
    act: str | None
    act_kind: str | None
    between: tuple[str, ...]
    spatial: int = 1
    padded: bool = False


_PASS_KINDS = ("relu", "relu6", "act", "maxpool", "avgpool", "gap", "flatten", "pad")
_CONSTANT_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)  # nn.ZeroPadNd are among them
_COMPUTE = ("conv", "dwconv", "linear")


def _zero_pad(model: nn.Module, module: str | None) -> bool:
    """A pad module that adds zeros (so ``pad(x / s) = pad(x) / s`` per channel); functional pads are not
    recorded with their value, so they do not pass."""
    m = model.get_submodule(module) if module else None
    return isinstance(m, _CONSTANT_PADS) and float(m.value) == 0.0


def bn_output_stats(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[str, ChannelStats]:
    """For every layer a BatchNorm follows: its output's per-channel (β, |γ|) (mean, std after BN).

    Read before folding; the data-free parts of DFQ (absorption, analytic bias correction)
    use these as the distribution of the folded layer's output.
    """
    out: dict[str, ChannelStats] = {}
    for layer_name, bn_name in foldable_pairs(model, input_shape):
        bn = model.get_submodule(bn_name)
        assert isinstance(bn, _BatchNorm)
        n = bn.num_features
        gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones(n)
        beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros(n)
        out[layer_name] = ChannelStats(beta.clone(), gamma.abs().clone())
    return out


def module_calls(specs: list[LayerSpec]) -> dict[str, int]:
    """How many times each module (by qualified name) is called in the captured graph."""
    calls: dict[str, int] = {}
    for s in specs:
        mod = s.extra.get("module")
        if mod:
            calls[mod] = calls.get(mod, 0) + 1
    return calls


def find_pairs(model: nn.Module, input_shape: tuple[int, ...]) -> list[EqualizationPair]:
    """Equalizable (first, second) layer pairs of ``model`` (BN already folded), in forward order.

    The first layer's output must feed only the path to the second (no residual branch),
    every op on the path must be channel-wise positively homogeneous (a zero pad module is: TF-style
    "same" padding in imported models), each layer is
    called once, and a ReLU6 on the path must be a module called once (so it can be
    replaced by a :class:`ClippedReLU`).
    """
    specs = capture(model, input_shape)
    by_name = {s.name: s for s in specs}
    calls = module_calls(specs)
    pairs: list[EqualizationPair] = []
    for s in specs:
        if s.kind not in _COMPUTE or calls.get(s.extra.get("module", ""), 0) != 1:
            continue
        if s.kind == "conv" and s.groups != 1:
            continue  # grouped (non-depthwise) first layers: rows still per channel, but keep it simple
        cur = s
        between: list[str] = []
        act: str | None = None
        act_kind: str | None = None
        spatial = 1
        ok = True
        while ok:
            if len(cur.outputs) != 1:
                ok = False
                break
            nxt = by_name[cur.outputs[0]]
            if nxt.kind in _COMPUTE:
                break
            if nxt.kind not in _PASS_KINDS:
                ok = False
                break
            mod = nxt.extra.get("module")
            if nxt.kind == "pad" and not _zero_pad(model, mod):
                ok = False
                break
            if nxt.kind in ("relu", "relu6", "act"):
                if act is not None or between:  # one activation, right after the first layer
                    ok = False
                    break
                is_clip = mod is not None and isinstance(model.get_submodule(mod), ClippedReLU)
                if nxt.kind == "act" and not is_clip:
                    ok = False
                    break
                if (nxt.kind == "relu6" or is_clip) and (mod is None or calls.get(mod, 0) != 1):
                    ok = False
                    break
                act, act_kind = mod, ("clip" if is_clip else nxt.kind)
            if nxt.kind == "flatten" and len(nxt.in_shape) == 3:
                spatial = nxt.in_shape[1] * nxt.in_shape[2]
            between.append(nxt.kind)
            cur = nxt
        if not ok:
            continue
        second = by_name[cur.outputs[0]]
        mod2 = second.extra.get("module")
        if mod2 is None or calls.get(mod2, 0) != 1:
            continue
        if second.kind == "linear" and second.in_channels != s.out_channels * spatial:
            continue
        if second.kind != "linear" and second.in_channels != s.out_channels:
            continue
        if second.kind == "linear" and spatial == 1 and "flatten" not in between and len(s.out_shape) != 1:
            continue
        pairs.append(EqualizationPair(
            first=str(s.extra["module"]), second=str(mod2), act=act, act_kind=act_kind, between=tuple(between),
            spatial=spatial,
            padded="pad" in between or (second.kind != "linear" and any(p > 0 for p in second.padding)),
        ))
    return pairs


# ---------------------------------------------------------------------------------------------- math
def row_ranges(w: torch.Tensor) -> torch.Tensor:
    """``max |W|`` of every output row."""
    return w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)


def _in_view(w2: torch.Tensor, groups: int, spatial: int) -> torch.Tensor:
    """``W2`` as ``(G, Og, Cg, rest)``: input channel ``c = g·Cg + j`` is ``[g, :, j, :]``."""
    o = w2.shape[0]
    if w2.dim() == 2:  # linear: (O, C·spatial)
        return w2.reshape(1, o, -1, spatial)
    cg = w2.shape[1]
    return w2.reshape(groups, o // groups, cg, -1)


def column_ranges(w2: torch.Tensor, groups: int = 1, spatial: int = 1) -> torch.Tensor:
    """``max |W2|`` over everything an input channel of ``W2`` touches (one value per channel)."""
    v = _in_view(w2.detach().abs(), groups, spatial)
    return v.amax(dim=(1, 3)).reshape(-1)


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``s = sqrt(r1 / r2)`` (1 where either range is zero): after scaling both ranges are ``sqrt(r1 r2)``.

    >>> equalization_scales(torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0])).tolist()
    [2.0, 0.5, 1.0]
    """
    ok = (r1 > 0) & (r2 > 0)
    s = torch.sqrt(torch.where(ok, r1, torch.ones_like(r1)) / torch.where(ok, r2, torch.ones_like(r2)))
    return torch.where(ok, s, torch.ones_like(s))


def scale_columns(w2: torch.Tensor, s: torch.Tensor, groups: int = 1, spatial: int = 1) -> torch.Tensor:
    """``W2`` with input channel ``c`` multiplied by ``s_c``."""
    v = _in_view(w2, groups, spatial)
    g, _, cg, _ = v.shape
    return (v * s.reshape(g, 1, cg, 1).to(w2.dtype)).reshape(w2.shape)


def column_sums(w2: torch.Tensor, c: torch.Tensor, groups: int = 1, spatial: int = 1) -> torch.Tensor:
    """``Σ_j W2[o, j] c_channel(j)`` for every output ``o``: what a constant input ``c`` adds to the output."""
    v = _in_view(w2, groups, spatial)
    g, og, cg, _ = v.shape
    per = (v * c.reshape(g, 1, cg, 1).to(w2.dtype)).sum(dim=(2, 3))
    return per.reshape(-1)


# ---------------------------------------------------------------------------------------------- models
def _layer(model: nn.Module, name: str) -> nn.Conv2d | nn.Linear:
    m = model.get_submodule(name)
    if not isinstance(m, nn.Conv2d | nn.Linear):
        raise MixqError(f"layer {name!r}: expected Conv2d or Linear, got {type(m).__name__}")
    return m


@torch.no_grad()
def divide_rows(layer: nn.Conv2d | nn.Linear, s: torch.Tensor) -> None:
    """Divide output row ``c`` of ``layer`` (weight and bias) by ``s_c``, in place (in float64)."""
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.copy_((layer.weight.double() / s.reshape(shape)).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_((layer.bias.double() / s).to(layer.bias.dtype))


@torch.no_grad()
def multiply_columns(layer: nn.Conv2d | nn.Linear, s: torch.Tensor, spatial: int = 1) -> None:
    """Multiply input channel ``c`` of ``layer`` by ``s_c``, in place (in float64)."""
    layer.weight.copy_(scale_columns(layer.weight.double(), s, groups_of(layer), spatial).to(layer.weight.dtype))


def replace_relu6(model: nn.Module, pairs: list[EqualizationPair],
                  mode: str) -> tuple[nn.Module, list[EqualizationPair]]:
    """A copy with the ReLU6 modules of ``pairs`` replaced (``clip``: ClippedReLU(6), ``relu``: ReLU),
    and the pairs updated; ``keep`` drops the pairs joined by ReLU6."""
    if mode not in ("clip", "relu", "keep"):
        raise MixqError(f"relu6: {mode!r} is not one of clip, relu, keep")
    out = copy.deepcopy(model)
    new_pairs: list[EqualizationPair] = []
    for p in pairs:
        if p.act_kind != "relu6":
            new_pairs.append(p)
            continue
        if mode == "keep" or p.act is None:
            continue
        first = _layer(out, p.first)
        rows = first.weight.shape[0]
        repl: nn.Module = ClippedReLU(torch.full((rows,), 6.0)) if mode == "clip" else nn.ReLU()
        set_submodule(out, p.act, repl)
        new_pairs.append(EqualizationPair(p.first, p.second, p.act, "clip" if mode == "clip" else "relu",
                                          p.between, p.spatial, p.padded))
    return out, new_pairs


def _scale_stats(stats: dict[str, ChannelStats], name: str, s: torch.Tensor) -> None:
    if name in stats:
        st = stats[name]
        stats[name] = ChannelStats(st.mean / s, st.std / s)


def activation_balanced_ranges(r1: torch.Tensor, act: torch.Tensor, weight: float) -> torch.Tensor:
    """``r1^(1-weight) · act^weight``: the range of the side divided by ``s`` when both the first
    layer's rows and the activation between the layers (each divided by ``s_c``) are to share the
    balance with the second layer's columns; channels without a positive activation range keep ``r1``.

    >>> activation_balanced_ranges(torch.tensor([4.0, 4.0]), torch.tensor([16.0, 0.0]), 0.5).tolist()
    [8.0, 4.0]
    """
    if not 0.0 <= weight <= 1.0:
        raise MixqError(f"cle act_weight: must be in [0, 1], got {weight}")
    ok = (act > 0) & (r1 > 0)
    mixed = r1.clamp(min=1e-300) ** (1.0 - weight) * act.clamp(min=1e-300) ** weight
    return torch.where(ok, mixed, r1)


@torch.no_grad()
def equalize_pair(model: nn.Module, pair: EqualizationPair, act_range: torch.Tensor | None = None,
                  act_weight: float = 0.0) -> torch.Tensor:
    """Equalize one pair in place; returns the scales ``s`` (output row ``c`` of ``first`` divided by ``s_c``).

    With ``act_range`` (per channel ``max |x|`` of the activation between the layers) and
    ``act_weight > 0`` the first layer's row ranges are blended with it
    (:func:`activation_balanced_ranges`): ``act_weight = 0`` is DFQ's weight-only rule, 1 balances
    the activation against the second layer's columns alone (SmoothQuant's rule).
    """
    l1, l2 = _layer(model, pair.first), _layer(model, pair.second)
    r1 = row_ranges(l1.weight).double()
    if act_range is not None and act_weight > 0:
        a = act_range.double()
        if pair.spatial > 1:
            a = a.reshape(-1, pair.spatial).amax(dim=1)
        r1 = activation_balanced_ranges(r1, a, act_weight)
    s = equalization_scales(r1, column_ranges(l2.weight, groups_of(l2), pair.spatial).double())
    divide_rows(l1, s)
    multiply_columns(l2, s, pair.spatial)
    if pair.act is not None:
        act = model.get_submodule(pair.act)
        if isinstance(act, ClippedReLU):
            act.upper.copy_((act.upper.double() / s).to(act.upper.dtype))
    return s.float()


def cross_layer_equalize(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    iterations: int = 20,
    tol: float = 1e-4,
    relu6: str = "clip",
    stats: dict[str, ChannelStats] | None = None,
    pairs: list[EqualizationPair] | None = None,
    act_ranges: dict[str, torch.Tensor] | None = None,
    act_weight: float | Mapping[str, float] = 0.0,
) -> tuple[nn.Module, dict[str, ChannelStats], list[EqualizationPair]]:
    """Equalize every pair of a BN-folded model; returns (new model, updated output stats, pairs used).

    ``stats`` (e.g. from :func:`bn_output_stats`) are rescaled with the layers they describe.
    Sweeps all pairs up to ``iterations`` times, stopping once no scale moves by more than ``tol``
    (relative). ``act_ranges`` (second layer name -> per channel ``max |x|`` of its input, measured
    on the model as given) with ``act_weight > 0`` make the balance activation-aware (see
    :func:`equalize_pair`); the ranges are tracked through the rescaling (they divide by ``s``).
    ``act_weight`` may be a mapping from a pair's first layer to its weight (missing: 0).
    """
    if pairs is None:
        pairs = find_pairs(model, input_shape)
    out, pairs = replace_relu6(model, pairs, relu6)
    new_stats = dict(stats or {})
    ranges = {k: v.double().clone() for k, v in (act_ranges or {}).items()}
    with progress.task("ptq cle", total=max(1, iterations)) as task:
        for _ in range(max(1, iterations)):
            worst = 0.0
            for p in pairs:
                a = ranges.get(p.second)
                w = act_weight.get(p.first, 0.0) if isinstance(act_weight, Mapping) else act_weight
                s = equalize_pair(out, p, a, w)
                if a is not None:
                    ranges[p.second] = a / (s.double().repeat_interleave(p.spatial) if p.spatial > 1 else s.double())
                _scale_stats(new_stats, p.first, s)
                worst = max(worst, float((s.double().log().abs()).max()) if s.numel() else 0.0)
            task.advance(pairs=len(pairs), largest_log_scale=worst)
            if worst < math.log1p(tol):
                break
    return out, new_stats, pairs


@torch.no_grad()
def absorb_high_bias(
    model: nn.Module,
    pairs: list[EqualizationPair],
    stats: dict[str, ChannelStats],
    *,
    n_std: float = 3.0,
    padded: bool = False,
) -> tuple[nn.Module, dict[str, ChannelStats], dict[str, torch.Tensor]]:
    """Absorb ``c = max(0, μ - n_std·σ)`` of each ReLU-joined pair's first layer into the second.

    Returns (new model, updated stats, the absorbed vector per first layer). Pairs without
    stats for the first layer, without a ReLU-type activation right after it, or (unless
    ``padded``) whose second layer zero-pads are skipped.
    """
    out = copy.deepcopy(model)
    new_stats = dict(stats)
    absorbed: dict[str, torch.Tensor] = {}
    for p in pairs:
        if p.first not in new_stats or p.act_kind not in ("relu", "clip") or (p.padded and not padded):
            continue
        if p.between and p.between[0] not in ("relu", "relu6", "act"):
            continue
        l1, l2 = _layer(out, p.first), _layer(out, p.second)
        st = new_stats[p.first]
        c = (st.mean - n_std * st.std).clamp(min=0.0).double()
        act = out.get_submodule(p.act) if p.act is not None else None
        if isinstance(act, ClippedReLU):
            c = torch.minimum(c, act.upper.double())
        if not bool((c > 0).any()):
            continue
        b1 = l1.bias.double() if l1.bias is not None else torch.zeros(l1.weight.shape[0], dtype=torch.float64)
        new_b1 = (b1 - c).to(l1.weight.dtype)
        if l1.bias is None:
            l1.bias = nn.Parameter(new_b1)
        else:
            l1.bias.copy_(new_b1)
        add = column_sums(l2.weight.double(), c, groups_of(l2), p.spatial)
        b2 = l2.bias.double() if l2.bias is not None else torch.zeros_like(add)
        if l2.bias is None:
            l2.bias = nn.Parameter((b2 + add).to(l2.weight.dtype))
        else:
            l2.bias.copy_((b2 + add).to(l2.bias.dtype))
        if isinstance(act, ClippedReLU):
            act.upper.copy_((act.upper.double() - c).to(act.upper.dtype))
        new_stats[p.first] = ChannelStats(st.mean - c.float(), st.std)
        absorbed[p.first] = c.float()
    return out, new_stats, absorbed
