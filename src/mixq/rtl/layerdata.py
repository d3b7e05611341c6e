"""One compute layer of an integer model, as the layer engine sees it.

:func:`layer_data` takes a conv / linear node of an :class:`~mixq.engine.model.IntModel`
and the integers the engine computed for a batch (``IntEngine(model)(x, keep=True)``)
and returns plain arrays: weight codes per row and each row's format, the layer's input
codes, and its *post-processing* folded into one exact per-row rule.

The engine's chain after the accumulator ``acc = sum w*x + B`` is clamps (ReLU, ReLU6),
optionally a max-pool, and the next layer's input ``requant``:
``clamp((x * M + 2**(n-1)) >> n, qmin, qmax)``. It folds exactly into

    q = clamp((acc_nb * M' + C) >>> N, LO, HI)

with ``acc_nb`` the dot product without bias, ``N = max_r n_r``, ``M'_r = M_r << (N - n_r)``
(the same quotient, one shift for every row), ``C_r = B_r * M'_r + 2**(N-1)`` (bias and
rounding on the DSP post-adder). The engine's accumulator is ``acc_nb << g + B`` (``g``
fractional accumulator bits); ``floor((I * 2**e + K) / 2**N) == floor((I + (K >> e)) / 2**(N-e))``
for integer ``I`` removes ``e = min(g, N)`` of the shift, so the hardware uses
``M' << (g - e)``, ``C >> e`` and ``N - e`` and ``LO_r, HI_r`` the chain applied to -inf / +inf
(clamps compose to one clamp; requant is monotone, so it commutes with clamps and with
a max-pool). A max-pool is left to a stream operator after the engine: the reference
output is then the rule applied to the pre-pool accumulators, and its pooled value is
checked against the engine's own requant node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mixq.engine.model import IntModel, IntNode, quantizer_behind
from mixq.errors import ModelError

BIG = 2**62


@dataclass(frozen=True)
class LayerData:
    """A compute layer in engine integers (see the module docstring)."""

    name: str
    op: str  # conv | linear
    weight: np.ndarray  # (rows, cin/groups, kh, kw) or (rows, features) codes
    row_format: np.ndarray  # (rows,) index into formats
    formats: tuple[dict[str, Any], ...]
    in_fmt: dict[str, Any]
    out_fmt: dict[str, Any]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    mult: np.ndarray  # M' per row (python-int object array)
    const: np.ndarray  # C per row
    shift: int  # N
    lo: np.ndarray  # LO per row
    hi: np.ndarray  # HI per row
    x: np.ndarray  # input codes (batch, C, H, W) or (batch, F), int64
    y: np.ndarray  # reference output codes (batch, rows, Ho, Wo) or (batch, rows), int64
    bias: np.ndarray
    pooled: bool = False
    dilation: tuple[int, int] = (1, 1)  # window taps ky * dh, kx * dw apart

    @property
    def rows(self) -> int:
        return int(self.weight.shape[0])

    @property
    def row_length(self) -> int:
        return int(np.prod(self.weight.shape[1:]))

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3])) if self.op == "conv" else (1, 1)

    def columns(self, batch: int, pixels: list[tuple[int, int]] | None = None) -> np.ndarray:
        """Input vectors (im2col columns) of ``pixels`` of sample ``batch``: (n_pix, groups, row_length)."""
        if self.op == "linear":
            return self.x[batch].reshape(1, 1, -1)
        x = torch.from_numpy(self.x[batch : batch + 1]).to(torch.float64)
        kh, kw = self.kernel
        cols = F.unfold(x, (kh, kw), padding=self.padding, stride=self.stride)[0]  # (C*kh*kw, L)
        ho, wo = self.y.shape[2], self.y.shape[3]
        pix = pixels if pixels is not None else [(i, j) for i in range(ho) for j in range(wo)]
        idx = [i * wo + j for i, j in pix]
        c = cols[:, idx].T.numpy().round().astype(np.int64)  # (n_pix, C*kh*kw) channel-major
        return c.reshape(len(idx), self.groups, self.row_length)

    def reference(self, batch: int, pixels: list[tuple[int, int]] | None = None) -> np.ndarray:
        """Reference output codes (n_pix, rows) of ``pixels`` of sample ``batch``."""
        if self.op == "linear":
            return self.y[batch].reshape(1, -1)
        ho, wo = self.y.shape[2], self.y.shape[3]
        pix = pixels if pixels is not None else [(i, j) for i in range(ho) for j in range(wo)]
        return np.stack([self.y[batch, :, i, j] for i, j in pix])


def _per_row(a: np.ndarray | None, rows: int, default: int) -> list[int]:
    if a is None:
        return [default] * rows
    v = np.asarray(a).reshape(-1)
    if v.size == 1:
        return [int(v[0])] * rows
    if v.size != rows:
        raise ModelError(f"per-row array of {v.size} values for {rows} rows")
    return [int(t) for t in v]


def _requant(x: int, m: int, n: int) -> int:
    return (x * m + ((1 << n) >> 1)) >> n


def layer_data(model: IntModel, values: dict[str, torch.Tensor], name: str) -> LayerData:
    """The layer ``name`` of ``model`` with the integers ``values`` the engine kept (``keep=True``)."""
    node = model.node(name)
    if node.op not in ("conv", "linear"):
        raise ModelError(f"layer {name!r}: op {node.op!r} has no layer engine (conv and linear only)")
    consumers: dict[str, list[IntNode]] = {}
    for n in model.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    chain: list[IntNode] = []
    cur = node
    while True:
        nxt = consumers.get(cur.name, [])
        if len(nxt) != 1:
            raise ModelError(f"layer {name!r}: output {cur.name!r} feeds {len(nxt)} nodes; the layer engine "
                             "needs one chain conv -> clamp/maxpool -> requant")
        cur = nxt[0]
        if cur.op == "requant":
            break
        if cur.op not in ("clamp", "maxpool"):
            raise ModelError(f"layer {name!r}: {cur.name!r} ({cur.op}) between the layer and the next "
                             "requantization is not supported by the layer engine (clamp, maxpool)")
        chain.append(cur)
    req = cur
    rows = int(node.arrays["weight"].shape[0])
    ms = _per_row(req.arrays["M"], rows, 0)
    ns = _per_row(req.arrays["n"], rows, 0)
    if any(m < 0 for m in ms):
        raise ModelError(f"layer {name!r}: negative requant multiplier")
    bias = _per_row(node.arrays["bias"], rows, 0)
    g = int(node.attrs.get("acc_frac_bits", 0))  # acc = (sum w*x) << g + B
    big_n = max(ns)
    m_full = [m << (big_n - n) for m, n in zip(ms, ns, strict=True)]
    e = min(g, big_n)  # floor((I * 2**e + K) / 2**N) == floor((I + (K >> e)) / 2**(N-e)) for integer I
    mult = [m << (g - e) for m in m_full]
    const = [(b * m + ((1 << big_n) >> 1)) >> e for b, m in zip(bias, m_full, strict=True)]
    shift = big_n - e
    lo_x, hi_x = [-BIG] * rows, [BIG] * rows
    for c in chain:
        if c.op != "clamp":
            continue
        lo = _per_row(c.arrays.get("lo"), rows, -BIG)
        hi = _per_row(c.arrays.get("hi"), rows, BIG)
        lo_x = [min(max(v, a), b) for v, a, b in zip(lo_x, lo, hi, strict=True)]
        hi_x = [min(max(v, a), b) for v, a, b in zip(hi_x, lo, hi, strict=True)]
    qmin, qmax = int(req.attrs["qmin"]), int(req.attrs["qmax"])
    lo_q = [min(max(_requant(v, m, n), qmin), qmax) for v, m, n in zip(lo_x, ms, ns, strict=True)]
    hi_q = [min(max(_requant(v, m, n), qmin), qmax) for v, m, n in zip(hi_x, ms, ns, strict=True)]
    x = values[node.inputs[0]].numpy().astype(np.int64)
    acc = values[name].to(torch.int64)
    # the engine's own chain on its accumulators: clamps, requant, clamp (exact python integers)
    shape = (1, rows) + (1,) * (acc.dim() - 2)

    def col(v: list[int]) -> np.ndarray:
        return np.array(v, dtype=object).reshape(shape)

    a = np.minimum(np.maximum(acc.numpy().astype(object), col(lo_x)), col(hi_x))
    p = (a * col(ms) + col([(1 << n) >> 1 for n in ns])) >> col(ns)
    y = np.minimum(np.maximum(p, qmin), qmax).astype(np.int64)
    pooled = any(c.op == "maxpool" for c in chain)
    got = values.get(req.name)
    if got is not None:
        check = torch.from_numpy(y)
        for c in chain:
            if c.op == "maxpool":
                at = c.attrs
                check = F.max_pool2d(check.double(), at["kernel"], at["stride"], at["padding"], at["dilation"],
                                     ceil_mode=at["ceil_mode"]).long()
        if check.shape == got.shape and not torch.equal(check, got.to(torch.int64)):
            raise ModelError(f"layer {name!r}: the folded requantization disagrees with the engine's {req.name!r}")
    a_ = node.attrs
    src = model.node(node.inputs[0])
    return LayerData(
        name=name, op=node.op, weight=np.asarray(node.arrays["weight"], dtype=np.int64),
        row_format=np.asarray(node.arrays["row_format"], dtype=np.int64),
        formats=tuple(dict(f) for f in a_["formats"]), in_fmt=dict(quantizer_behind(src, model.node).attrs["fmt"]),
        out_fmt=dict(req.attrs["fmt"]),
        stride=tuple(a_.get("stride", (1, 1))), padding=tuple(a_.get("padding", (0, 0))),  # type: ignore[arg-type]
        groups=int(a_.get("groups", 1)), dilation=tuple(int(v) for v in a_.get("dilation", (1, 1))),  # type: ignore[arg-type]
        mult=np.array(mult, dtype=object), const=np.array(const, dtype=object), shift=shift,
        lo=np.array(lo_q, dtype=object), hi=np.array(hi_q, dtype=object), x=x, y=y,
        bias=np.array(bias, dtype=object), pooled=pooled,
    )
