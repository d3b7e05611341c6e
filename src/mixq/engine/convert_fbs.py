"""FBS layers (:class:`mixq.nn.FBSConv2d`) in the integer engine: builder, kernel, faithful form, counts.

An FBS layer becomes five integer nodes, all but the last ones the engine already has::

    x      = requant / quantize         the conv's input codes (its QAct)
    pool   = sumpool (global)           sum_hw x on the grid s_x / (H W), exact
    pred   = requant + linear           the predictor (QLinear: its own input quantizer, integer weights)
    relu   = clamp (lo 0)
    gate   = requant                    the saliency codes (the FBS gate quantizer, unsigned)
    fbs    = fbs (x, gate)              the gated conv

``fbs`` keeps, per image, the ``k`` largest gate codes (:func:`mixq.nn.fbs.wta_mask` on the integers: a
stable sort, ties to the lower channel — the rule of the fake-quant model, whose gate values are the
codes times one positive scale) that are not 0 (an adaptive layer: every code of at least ``min_gate``,
:meth:`mixq.nn.FBSConv2d.min_gate_code`), and computes only those output channels, over only the
input channels holding a nonzero code: ``acc = (sum w x) << g + B`` (the conv's accumulator, as the
``conv`` op), then ``y = acc * gate`` on the grid ``s_acc * s_gate``; skipped channels are 0. Its
arrays are the conv's (``weight``, ``bias``, ...) plus ``acc_grid``; attrs the conv's plus ``k`` and ``min_gate``.
The products run in float64 (exact: the accumulator bound is below 2**53, checked at conversion).
Executed MACs are added to the run's ``stats`` under ``"<layer>:macs"``; :func:`engine_channel_counts`
gives them per image.

The hardware-faithful form (:func:`faithful_fbs`) computes the same in float64 on dequantized values —
pooling, the predictor, the gate requantization with the same multipliers — and ranks the gate codes it
gets; engine and faithful model agree bit for bit, outputs and decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq.engine.arith import FLOAT64_EXACT, exact_dtype
from mixq.engine.context import Ctx, Val, quant_input, where
from mixq.engine.model import IntModel, IntNode
from mixq.engine.trace import OpInfo
from mixq.errors import ModelError
from mixq.nn import QConv2d, QLinear
from mixq.nn.fbs import FBSConv2d, keep_channels

Builder = Callable[[Ctx, fx.Node, OpInfo], Val | None]


def _scratch(ctx: Ctx, v: Val, out_shape: tuple[int, ...]) -> fx.Node:
    """An FX call node whose one input is ``v`` and whose output has ``out_shape``: lets a builder of
    :data:`mixq.engine.convert.BUILDERS` build a layer inside the FBS module on an inner tensor."""
    g = fx.Graph()
    p = g.placeholder("fbs_inner")
    ctx.env[p] = v
    n = g.call_function(torch.relu, (p,))
    n.meta["shape"] = (1, *out_shape)
    return n


def fbs_builder(layer: Builder) -> Builder:
    """The builder of the ``fbs`` kind, building its conv and predictor with ``layer`` (the engine's
    QConv2d / QLinear builder)."""

    def build(ctx: Ctx, node: fx.Node, info: OpInfo) -> Val:
        m = info.module
        assert isinstance(m, FBSConv2d)
        at = where(info)
        if not isinstance(m.conv, QConv2d) or not isinstance(m.predictor, QLinear):
            raise ModelError(f"{at}: its conv and predictor must be quantized (plan entries "
                             f"{info.name}.conv and {info.name}.predictor)")
        if m.gate_quant.mode != "quant":
            raise ModelError(f"{at}: its gate quantizer is in mode {m.gate_quant.mode!r}; calibrate the model "
                             "(or mixq.nn.fbs.calibrate_gates) first")
        v = ctx.arg(node, info)
        x = quant_input(ctx, v, m.conv.input_quant, f"{info.name}.conv.input_quant", info)
        if len(x.shape) != 3 or np.ndim(x.scale) != 0:
            raise ModelError(f"{at}: needs (C, H, W) input codes on one grid, got {x.shape}")
        c, h, w = x.shape
        count = h * w
        pool = ctx.add(IntNode(f"{info.name}.pool", "sumpool", (x.node,), (c,), x.scale / count, x.bound * count,
                               {"kernel": [h, w], "stride": [h, w], "padding": [0, 0], "count": count,
                                "keepdim": False, "count_include_pad": True, "float_op": "global_avgpool"}, {},
                               f"{info.name} ({info.type})"))
        cout = m.conv.out_channels
        pred = layer(ctx, _scratch(ctx, pool, (cout,)),
                     OpInfo("qlinear", f"{info.name}.predictor", "QLinear", m.predictor))
        assert pred is not None
        relu = ctx.add(IntNode(f"{info.name}.relu", "clamp", (pred.node,), pred.shape, pred.scale, pred.bound,
                               {"lo_real": 0.0, "hi_real": None, "float_op": "relu"},
                               {"lo": np.zeros(np.shape(pred.scale), dtype=np.int64)}, f"{info.name} ({info.type})"))
        gate = quant_input(ctx, relu, m.gate_quant, f"{info.name}.gate_quant", info)
        conv = layer(ctx, node, OpInfo("qconv", f"{info.name}.conv", "QConv2d", m.conv))
        assert conv is not None
        cnode = ctx.nodes.pop()  # its place is taken by the gated conv
        assert cnode.name == conv.node and cnode.op == "conv"
        if cnode.attrs["saturate"] or cnode.bound >= FLOAT64_EXACT:
            raise ModelError(f"{at}: its accumulator needs {cnode.attrs['acc_bits']} bits; the gated conv "
                             "supports accumulators within the budget and below 2**53")
        attrs = {**cnode.attrs, "k": m.k, "min_gate": m.min_gate_code(float(gate.scale), int(gate.bound))}
        arrays = {**cnode.arrays, "acc_grid": np.asarray(cnode.scale, dtype=np.float64)}
        grid = np.asarray(cnode.scale, dtype=np.float64) * float(gate.scale)
        return ctx.add(IntNode(info.name, "fbs", (x.node, gate.node), cnode.shape, grid,
                               cnode.bound * int(gate.bound), attrs, arrays, f"{info.name} ({info.type})"))

    return build


def _conv_args(node: IntNode) -> dict[str, Any]:
    a = node.attrs
    return {"stride": a["stride"], "padding": a["padding"], "dilation": a["dilation"]}


def fbs_kernel(node: IntNode, bounds: dict[str, int], products: str) -> Callable[..., torch.Tensor]:
    """The gated conv on integer codes: only kept channels, only nonzero input channels (module doc)."""
    w = torch.from_numpy(node.arrays["weight"].astype(np.float64))
    bias = torch.from_numpy(node.arrays["bias"].astype(np.int64))
    shift, k, conv = 2 ** int(node.attrs["acc_frac_bits"]), int(node.attrs["k"]), _conv_args(node)
    floor = int(node.attrs.get("min_gate", 1))
    per = int(np.prod(w.shape[2:])) * int(np.prod(node.shape[1:]))
    out_dt = exact_dtype(node.bound, allow_float32=False)

    def run(xs: list[torch.Tensor], stats: dict[str, int]) -> torch.Tensor:
        x, gate = xs[0], xs[1].to(torch.int64)
        keep = keep_channels(gate, k, floor)
        active = x.ne(0).flatten(2).any(dim=2)
        out = torch.zeros(x.shape[0], *node.shape, dtype=torch.int64)
        macs = 0
        for i in range(x.shape[0]):
            rows, cols = keep[i].nonzero().flatten(), active[i].nonzero().flatten()
            if rows.numel() == 0:
                continue
            xi = x[i:i + 1, cols].to(torch.float64)
            dot = F.conv2d(xi, w[rows][:, cols], None, **conv)[0].to(torch.int64) if cols.numel() else 0
            acc = dot * shift + bias[rows].reshape(-1, 1, 1)
            out[i, rows] = acc * gate[i, rows].reshape(-1, 1, 1)
            macs += int(rows.numel()) * int(cols.numel()) * per
        stats[f"{node.name}:macs"] = stats.get(f"{node.name}:macs", 0) + macs
        return out.to(out_dt)

    return run


def engine_channel_counts(engine: Any, x: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``engine`` (an :class:`~mixq.engine.runner.IntEngine`) on ``x``; (its result, per FBS layer the
    ``(N, 2)`` active input / computed output channels of every image, by the kernel's own rule)."""
    im: IntModel = engine.model
    fbs = [n for n in im.nodes if n.op == "fbs"]
    res = engine(x, keep={i for n in fbs for i in n.inputs})
    out = {}
    for n in fbs:
        xin, gate = res.values[n.inputs[0]], res.values[n.inputs[1]]
        a_in = xin.ne(0).flatten(2).any(dim=2).sum(1)
        a_out = keep_channels(gate, int(n.attrs["k"]), int(n.attrs.get("min_gate", 1))).sum(1)
        out[n.name] = torch.stack([a_in, a_out], 1).long()
    return res, out


# ----------------------------------------------------------------------------- hardware-faithful form


class FaithfulFBS(nn.Module):
    """An FBS layer in hardware-faithful mode (float64, on the integer model's grids)."""

    def __init__(self, inode: IntNode, nodes: dict[str, IntNode], layer: Callable[..., nn.Module],
                 quant: Callable[[IntNode, dict[str, IntNode]], nn.Module], m: FBSConv2d) -> None:
        super().__init__()
        self.int_name, self.k = inode.name, int(inode.attrs["k"])
        self.floor = int(inode.attrs.get("min_gate", 1))
        gate_node = nodes[inode.inputs[1]]
        relu = nodes[gate_node.inputs[0]]
        lin = nodes[relu.inputs[0]]
        pool = nodes[nodes[lin.inputs[0]].inputs[0]]
        conv_node = IntNode(f"{inode.name}.conv", "conv", inode.inputs[:1], inode.shape, inode.arrays["acc_grid"],
                            inode.bound // max(1, gate_node.bound), inode.attrs, inode.arrays)
        self.x_quant = quant(nodes[inode.inputs[0]], nodes)
        self.pool_grid = float(pool.scale)
        self.count = int(pool.attrs["count"])
        self.predictor = layer(m.predictor, quant(nodes[lin.inputs[0]], nodes), lin)
        self.gate = quant(gate_node, nodes)
        self.conv = layer(m.conv, self.x_quant, conv_node)
        self.last_keep: torch.Tensor | None = None
        self.gate_scale: torch.Tensor
        self.grid: torch.Tensor
        self.register_buffer("gate_scale", torch.tensor(float(gate_node.scale), dtype=torch.float64))
        self.register_buffer("grid", torch.from_numpy(np.asarray(inode.scale, dtype=np.float64)).unsqueeze(0))

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate codes ``(N, C)``, kept channels) of a batch."""
        xq = self.x_quant(x)
        pooled = torch.round(xq.sum(dim=(2, 3)) / (self.pool_grid * self.count)) * self.pool_grid
        g = self.gate.codes(torch.relu(self.predictor(pooled)))  # type: ignore[operator]
        return g, keep_channels(g, self.k, self.floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, keep = self.codes(x)
        self.last_keep = keep
        y = self.conv(x) * torch.where(keep, g.to(torch.float64) * self.gate_scale, 0.0)[:, :, None, None]
        return torch.round(y / self.grid) * self.grid


def faithful_fbs(m: nn.Module | None, inode: IntNode, nodes: dict[str, IntNode], layer: Callable[..., nn.Module],
                 quant: Callable[[IntNode, dict[str, IntNode]], nn.Module]) -> nn.Module:
    """The faithful module of an FBS node; ``layer`` / ``quant`` are :mod:`mixq.engine.faithful`'s
    ``FaithfulLayer`` and quantizer factory (passed in: that module imports this one)."""
    assert isinstance(m, FBSConv2d)
    return FaithfulFBS(inode, nodes, layer, quant, m)
