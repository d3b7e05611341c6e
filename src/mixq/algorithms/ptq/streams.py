"""Activation-aware equalization of residual streams (CLE across residual adds).

Cross-layer equalization (:mod:`~mixq.algorithms.ptq.cle`) only rescales pairs of layers
joined by a single path; the tensors that residual connections add together are left alone,
and they are where per-tensor activation quantization hurts most: a stream's few wide channels
set the range of all the others (the MobileNetV2 figures are in
benchmarks/results/design_measurements.md, "Residual streams").

A *stream* is a set of tensors joined by residual adds and by channel-wise positively
homogeneous ops (ReLU, max/avg pooling, global pooling, flatten). Dividing channel ``j`` of
every stream tensor by ``s_j > 0`` keeps the float function when every layer that writes into
the stream (a *producer*) divides output row ``j`` (weights and bias) by ``s_j`` and every
layer that reads it (a *consumer*) multiplies input column ``j`` by ``s_j``. With ``a_j`` the
largest ``|x_j|`` the consumers see on calibration data and ``w_j`` the largest ``|W[:, j]|``
over the consumers, ``s_j = a_j^α / w_j^(1-α)`` (SmoothQuant's rule, α = 0.5 by default)
leaves both the activation channel and the weight column at ``a_j^(1-α) w_j^α``: the
activation's per-tensor range stops being set by a few channels, and the weights share the load.

A stream is left alone when any of its tensors reaches something that cannot absorb the scale
(a ReLU6, a concat, the model output, a layer called more than once, ...). Everything returns a
new model; the input is never changed.

:func:`rotate_streams` applies an orthogonal matrix instead of a diagonal one, to the streams a
rotation keeps (nothing but adds between dense producers and consumers: MobileNetV2's seven).
Measured on MobileNetV2 (benchmarks/README.md, session 25) it spreads a stream's outlier channels
but costs agreement at W4A8 and W4A4; it is an option (``Recipe.stream_rotate``), not a default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from mixq.algorithms.ptq._common import groups_of, input_channel_ranges
from mixq.algorithms.ptq.cle import (
    ChannelStats,
    _layer,
    _scale_stats,
    column_ranges,
    divide_rows,
    module_calls,
    multiply_columns,
)
from mixq.errors import MixqError
from mixq.graph import capture
from mixq.graph.spec import LayerSpec

_COMPUTE = ("conv", "dwconv", "linear")
# channel-wise and positively homogeneous: f(x / s) = f(x) / s for s > 0 per channel
_PASS = ("add", "relu", "maxpool", "avgpool", "gap", "flatten")


@dataclass(frozen=True)
class Stream:
    """One residual stream: the layers writing into it and those reading it (module names)."""

    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    channels: int


def find_streams(model: nn.Module, input_shape: tuple[int, ...], *, linear: bool = False) -> list[Stream]:
    """The residual streams of ``model`` (BN folded) that can be rescaled, in forward order.

    A stream is grown from every residual ``add`` over neighbouring pass-through ops; the compute
    layers feeding it are its producers, those it feeds its consumers. It qualifies when every
    edge leaving it ends in a compute layer called once whose input channels are the stream's,
    every producer is such a layer with one output channel per stream channel, and nothing else
    (another op, the model output) touches it.

    With ``linear`` the streams are those a rotation of the channels keeps (:func:`rotate_streams`):
    nothing but adds between producers and consumers, every producer and consumer a dense (``groups``
    1) conv or linear layer, and a layer whose output only dense layers read is a stream on its own.
    """
    specs = capture(model, input_shape)
    by = {s.name: s for s in specs}
    calls = module_calls(specs)
    passes, computes = (("add",), ("conv", "linear")) if linear else (_PASS, _COMPUTE)

    def once(name: str) -> bool:
        mod = by[name].extra.get("module")
        return (isinstance(mod, str) and calls.get(mod, 0) == 1 and by[name].kind in computes
                and (not linear or by[name].groups == 1))

    def alone(spec: LayerSpec) -> bool:  # a dense layer read only by dense layers: a stream without an add
        return linear and once(spec.name) and bool(spec.outputs) and all(once(o) for o in spec.outputs)

    order = {s.name: i for i, s in enumerate(specs)}
    seen: set[str] = set()
    found: list[tuple[int, Stream]] = []  # (its first producer's place in the graph, stream)
    for start in (s.name for s in specs if s.kind == "add" or alone(s)):
        if start in seen:
            continue
        members: set[str] = set()
        producers: set[str] = set()
        consumers: set[str] = set()
        ok = True
        if by[start].kind != "add":  # the layer's output is the stream
            _append(found, by, order, {start}, set(by[start].outputs), True)
            continue
        todo = [start]
        while todo:
            n = todo.pop()
            if n in members:
                continue
            members.add(n)
            spec = by[n]
            if not spec.outputs:
                ok = False  # the stream is (part of) the model output
            # compute layers feeding a stream tensor write into it; those it feeds read it
            for neighbours, ends in ((spec.inputs, producers), (spec.outputs, consumers)):
                for m in neighbours:
                    if by[m].kind in passes:
                        todo.append(m)
                    elif once(m):
                        ends.add(m)
                    else:
                        ok = False
        seen |= members
        # a producer's output is a stream tensor: all its readers must be stream ops or consumers
        for p in producers:
            for o in by[p].outputs:
                if once(o):
                    consumers.add(o)
                elif o not in members:
                    ok = False
        _append(found, by, order, producers, consumers, ok)
    return [st for _, st in sorted(found, key=lambda f: f[0])]


def _append(found: list[tuple[int, Stream]], by: dict[str, LayerSpec], order: dict[str, int], producers: set[str],
            consumers: set[str], ok: bool) -> None:
    """Add the stream of ``producers`` and ``consumers`` to ``found`` (with its first producer's place in
    ``order``) when it qualifies."""
    channels = {by[p].out_channels for p in producers}
    if not ok or not producers or not consumers or len(channels) != 1:
        return
    c = channels.pop()
    if any(by[n].in_channels != c for n in consumers):
        return  # e.g. a linear layer reading a flattened (C, H, W) map
    ps, cs = sorted(producers, key=order.__getitem__), sorted(consumers, key=order.__getitem__)
    found.append((order[ps[0]], Stream(producers=tuple(str(by[p].extra["module"]) for p in ps),
                                       consumers=tuple(str(by[q].extra["module"]) for q in cs), channels=c)))


def consumer_input_ranges(model: nn.Module, streams: list[Stream], data: torch.Tensor,
                          batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per-channel ``max |x|`` of every consumer's input over ``data``."""
    names = sorted({c for st in streams for c in st.consumers})
    for n in names:
        _layer(model, n)  # a consumer must be a Conv2d / Linear
    return input_channel_ranges(model, names, data, batch_size)


def stream_scales(act_range: torch.Tensor, weight_range: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``s = a^α / w^(1-α)`` per channel (1 where either range is zero).

    >>> stream_scales(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0])).tolist()
    [4.0, 0.5, 1.0]
    """
    if not 0.0 <= alpha <= 1.0:
        raise MixqError(f"stream equalization alpha: must be in [0, 1], got {alpha}")
    ok = (act_range > 0) & (weight_range > 0)
    a = torch.where(ok, act_range, torch.ones_like(act_range))
    w = torch.where(ok, weight_range, torch.ones_like(weight_range))
    return torch.where(ok, a**alpha / w ** (1.0 - alpha), torch.ones_like(a))


@torch.no_grad()
def equalize_streams(model: nn.Module, input_shape: tuple[int, ...], data: torch.Tensor, *, alpha: float = 0.5,
                     stats: dict[str, ChannelStats] | None = None, batch_size: int = 16,
                     streams: list[Stream] | None = None,
                     ) -> tuple[nn.Module, dict[str, ChannelStats], dict[str, torch.Tensor]]:
    """Rescale every residual stream of a BN-folded ``model`` (see the module doc).

    Returns (new model, ``stats`` with the producers' output statistics rescaled, the scales per
    stream keyed by its first producer). ``data`` are calibration inputs (the ranges the
    consumers see are measured on them).
    """
    out = copy.deepcopy(model).eval()
    if streams is None:
        streams = find_streams(out, input_shape)
    new_stats = dict(stats or {})
    scales: dict[str, torch.Tensor] = {}
    if not streams:
        return out, new_stats, scales
    ranges = consumer_input_ranges(out, streams, data, batch_size)
    for st in streams:
        a = torch.stack([ranges[c] for c in st.consumers]).amax(dim=0)
        w = torch.stack([column_ranges(_layer(out, c).weight, groups_of(_layer(out, c))).double()
                         for c in st.consumers]).amax(dim=0)
        s = stream_scales(a, w, alpha)
        for p in st.producers:
            divide_rows(_layer(out, p), s)
            _scale_stats(new_stats, p, s.float())
        for c in st.consumers:
            multiply_columns(_layer(out, c), s)
        scales[st.producers[0]] = s.float()
    return out, new_stats, scales


def orthogonal(n: int, seed: int) -> torch.Tensor:
    """A random ``n x n`` orthogonal matrix (float64; Haar-distributed, from ``seed``): for ``n`` a power of
    two a Walsh-Hadamard matrix with random signs on its columns, otherwise the Q of a Gaussian matrix's QR.

    >>> q = orthogonal(24, 0); bool(torch.allclose(q @ q.T, torch.eye(24, dtype=q.dtype)))
    True
    """
    g = torch.Generator().manual_seed(seed)
    if n & (n - 1) == 0:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        signs = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
        return h * signs / n**0.5
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@torch.no_grad()
def rotate_streams(model: nn.Module, input_shape: tuple[int, ...], *, seed: int = 0,
                   streams: list[Stream] | None = None) -> tuple[nn.Module, list[Stream]]:
    """Rotate the channels of every stream a rotation keeps (``find_streams(linear=True)``) by a random
    orthogonal ``Q``: producers' output rows (weights and bias) become ``Q W`` and consumers' input columns
    ``W Q^T``, so the float function is unchanged (up to float rounding) while each stream tensor and each
    weight row it touches is spread evenly over the channels (the incoherence of QuaRot / QuIP): a few wide
    channels no longer set a per-tensor activation range, and a weight row's outliers are shared among
    its neighbours before rounding. Every stream gets its own ``Q`` (seed + index). A new model;
    returns it with the streams rotated."""
    out = copy.deepcopy(model).eval()
    if streams is None:
        streams = find_streams(out, input_shape, linear=True)
    for i, st in enumerate(streams):
        q = orthogonal(st.channels, seed + i)
        for p in st.producers:
            layer = _layer(out, p)
            w = layer.weight.double()
            layer.weight.copy_(torch.einsum("oc,c...->o...", q, w).to(layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.copy_((q @ layer.bias.double()).to(layer.bias.dtype))
        for c in st.consumers:
            layer = _layer(out, c)
            w = layer.weight.double()
            layer.weight.copy_(torch.einsum("oc...,dc->od...", w, q).to(layer.weight.dtype))
    return out, streams
