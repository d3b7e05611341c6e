"""Scale selection: ``compute_scale`` for tensors (weights) and ``ActObserver`` for activations.

Observers (how a clipping value ``T`` is chosen; the scale is ``T / unit_max``
where ``unit_max`` is the largest unit-scale level the format maps ``T`` to,
``qmax`` for fixed point):

* ``minmax``     ``T = max|x|`` (signed formats) or ``max(x, 0)`` (unsigned formats).
  Binary and ternary have no meaningful max: ``minmax`` gives XNOR-Net's
  ``α = mean|x|`` for binary and TWN's ``2·t·mean|x|`` for ternary (so the zero
  band is exactly ``t·mean|x|``, ``t = Ternary.threshold``).
* ``percentile`` ``T`` = the given percentile of ``|x|`` (or of ``max(x, 0)``).
* ``mse``        ``T`` minimizing the quantization MSE (grid search over ``T / max|x|``
  then a finer grid around the best; closed form ``mean|x|`` for binary).
* ``kl``         ``T`` minimizing KL(P‖Q) between the histogram of ``|x|`` clipped at
  ``T`` and its quantized version (TensorRT-style entropy calibration, generalised
  to non-uniform formats by grouping histogram bins by the level they round to).

Granularity: ``tensor`` (one scale, a 0-dim tensor), ``channel`` (one per
index of ``axis``, shaped to broadcast, e.g. ``(C, 1, 1, 1)``), ``group`` (one
per run of ``group_size`` consecutive channels along ``axis``; returned
expanded to the channel shape so it broadcasts the same way).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from mixq.errors import MixqError
from mixq.formats import Binary, NumberFormat, Ternary
from mixq.quant.fakequant import snap

GRANULARITIES = ("tensor", "channel", "group")
OBSERVERS = ("minmax", "percentile", "mse", "kl")


def unit_max(fmt: NumberFormat) -> float:
    """The unit-scale level that the clipping value maps to (``qmax`` for fixed point)."""
    v = getattr(fmt, "unit_max", None)
    if v is None:
        v = float(abs(fmt.levels()).max())
    return float(v)


def is_signed(fmt: NumberFormat) -> bool:
    return bool(fmt.levels()[0] < 0)


def _safe(s: torch.Tensor) -> torch.Tensor:
    """Replace zero / non-finite scales (all-zero rows) by 1 so nothing divides by zero."""
    ok = torch.isfinite(s) & (s > 0)
    return torch.where(ok, s, torch.ones_like(s))


def _magnitudes(m: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    return m.abs() if is_signed(fmt) else m.clamp(min=0)


def _closed_form(fmt: NumberFormat, m: torch.Tensor) -> torch.Tensor | None:
    """XNOR / TWN scales per row of ``m`` (None for other formats)."""
    if isinstance(fmt, Binary):
        return m.abs().mean(dim=1)
    if isinstance(fmt, Ternary):
        return 2.0 * float(fmt.threshold) * m.abs().mean(dim=1)
    return None


def search_clip_ratio(err: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, coarse: int = 24,
                      fine: int = 8) -> torch.Tensor:
    """Per-element clipping ratio in ``(0, 1]`` minimizing ``err(ratio)`` (ratios and errors shaped like
    ``like``): a ``coarse`` grid, then ``fine`` steps either side of the best point."""
    grid = torch.linspace(1.0 / coarse, 1.0, coarse, dtype=like.dtype, device=like.device)
    errs = torch.stack([err(torch.full_like(like, float(r))) for r in grid])
    best_err, idx = errs.min(dim=0)
    best = grid[idx]
    step = 1.0 / coarse
    for k in range(-fine, fine + 1):
        if k == 0:
            continue
        r = (best + k * step / fine).clamp(step / fine, 1.0)
        e = err(r)
        better = e < best_err
        best, best_err = torch.where(better, r, best), torch.where(better, e, best_err)
    return best


def _mse_search(m: torch.Tensor, fmt: NumberFormat, top: torch.Tensor,
                coarse: int = 24, fine: int = 8) -> torch.Tensor:
    """Per-row clipping value in ``(0, top]`` minimizing the squared error of ``m`` (R, N)."""
    um = unit_max(fmt)

    def err(ratio: torch.Tensor) -> torch.Tensor:  # ratio (R,)
        s = _safe(top * ratio / um)[:, None]
        return ((snap(m, fmt, s) - m) ** 2).sum(dim=1)

    best = search_clip_ratio(err, top, coarse, fine)
    return top * best


def _kl_search(hist: torch.Tensor, top: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """Per-row clipping value from histograms ``hist`` (R, B) of magnitudes over ``[0, top]`` (searched on
    the CPU; the result on ``top``'s device)."""
    where = top.device
    hist, top = hist.cpu(), top.cpu()
    r, b = hist.shape
    lv = torch.as_tensor(fmt.levels(), dtype=torch.float64)
    mids = ((lv[1:] + lv[:-1]) / 2).numpy()
    um = unit_max(fmt)
    hist = hist.double()
    best_kl = torch.full((r,), math.inf, dtype=torch.float64)
    best_i = torch.full((r,), b, dtype=torch.long)
    n_pos = int((lv > 0).sum())
    start = min(b, max(2, n_pos + 1, b // 16))
    step = max(1, b // 256)
    for i in list(range(start, b, step)) + [b]:
        sliced = hist[:, :i]
        p = sliced.clone()
        p[:, -1] += hist[:, i:].sum(dim=1)  # reference: clipped mass lumped into the last bin
        centers = (torch.arange(i, dtype=torch.float64) + 0.5) / i * um  # unit scale, T -> unit_max
        idx = torch.from_numpy(np.searchsorted(mids, centers.numpy(), side="left"))  # nearest level per bin
        nb = int(idx.max()) + 1
        nz = (sliced > 0).double()
        # candidate: the in-range histogram (without the clipped mass) spread over each level's bins
        mass = torch.zeros(r, nb, dtype=torch.float64).index_add_(1, idx, sliced)
        cnt = torch.zeros(r, nb, dtype=torch.float64).index_add_(1, idx, nz)
        q = (mass / cnt.clamp(min=1))[:, idx] * nz
        ps = p / p.sum(dim=1, keepdim=True).clamp(min=1e-300)
        qs = q / q.sum(dim=1, keepdim=True).clamp(min=1e-300)
        term = torch.where(ps > 0, ps * (torch.log(ps.clamp(min=1e-300)) - torch.log(qs.clamp(min=1e-300))),
                           torch.zeros_like(ps))
        kl = term.sum(dim=1)
        better = kl < best_kl
        best_kl = torch.where(better, kl, best_kl)
        best_i = torch.where(better, torch.full_like(best_i, i), best_i)
    return (top.double() * best_i.double() / b).to(where)


def _row_hist(mag: torch.Tensor, top: torch.Tensor, bins: int) -> torch.Tensor:
    """Histograms (R, bins) of non-negative ``mag`` (R, N) over ``[0, top_r]``."""
    t = _safe(top)[:, None]
    idx = (mag / t * bins).long().clamp_(0, bins - 1)
    h = torch.zeros(mag.shape[0], bins, dtype=torch.float64, device=mag.device)
    return h.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def _percentile_rows(mag: torch.Tensor, percentile: float) -> torch.Tensor:
    n = mag.shape[1]
    k = min(n, max(1, math.ceil(percentile / 100.0 * n)))
    return mag.kthvalue(k, dim=1).values


def scale_rows(m: torch.Tensor, fmt: NumberFormat, observer: str = "minmax",
               percentile: float = 99.99, bins: int | None = None) -> torch.Tensor:
    """One scale per row of the 2-D ``m`` (R, N) for ``fmt`` with the given observer."""
    if observer not in OBSERVERS:
        raise MixqError(f"observer: {observer!r} is not one of {', '.join(OBSERVERS)}")
    m = m.detach()
    if not m.is_floating_point():
        m = m.float()
    mag = _magnitudes(m, fmt)
    top = mag.amax(dim=1)
    um = unit_max(fmt)
    if observer == "minmax" or (observer == "mse" and isinstance(fmt, Binary)):
        cf = _closed_form(fmt, m)
        t = cf if cf is not None else top / um
    elif observer == "percentile":
        if not 0 < percentile <= 100:
            raise MixqError(f"percentile: must be in (0, 100], got {percentile!r}")
        t = _percentile_rows(mag, percentile) / um
    elif observer == "mse":
        t = _mse_search(m, fmt, top) / um
    else:
        nb = bins or (2048 if m.shape[0] == 1 else 256)
        t = (_kl_search(_row_hist(mag, top, nb), top.double(), fmt) / um).to(m.dtype)
    return _safe(t)


ROW_SCALE_FLOOR_BITS = 12


def floor_rows(s: torch.Tensor) -> torch.Tensor:
    """Per-row scales floored at ``2**-ROW_SCALE_FLOOR_BITS`` of the largest. A row of near-zero weights
    (a dead channel after BatchNorm folding: |w| ~ 1e-9 beside rows of 1 .. 20) would otherwise get a
    scale so small that its bias, on the accumulator grid ``s_act * s_w``, needs 40 and more bits; floored,
    its weights quantize to (nearly) zero, which is what they are."""
    if s.numel() <= 1:
        return s
    return torch.maximum(s, s.max() * 2.0**-ROW_SCALE_FLOOR_BITS)


def compute_scale(x: torch.Tensor, fmt: NumberFormat, granularity: str = "tensor", observer: str = "minmax",
                  axis: int = 0, group_size: int | None = None, percentile: float = 99.99) -> torch.Tensor:
    """Scale(s) for quantizing ``x`` with ``fmt``, broadcastable against ``x`` (see module doc).

    >>> from mixq.formats import FixedPoint
    >>> w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    >>> compute_scale(w, FixedPoint(8), "channel").flatten().tolist()
    [0.015748031437397003, 0.003937007859349251]
    >>> compute_scale(w, FixedPoint(8)).shape
    torch.Size([])
    """
    if granularity not in GRANULARITIES:
        raise MixqError(f"granularity: {granularity!r} is not one of {', '.join(GRANULARITIES)}")
    x = x.detach()
    one: Callable[[torch.Tensor], torch.Tensor] = lambda m: scale_rows(m, fmt, observer, percentile)  # noqa: E731
    if granularity == "tensor" or x.dim() == 0:
        return one(x.reshape(1, -1))[0]
    ax = axis % x.dim()
    c = x.shape[ax]
    rows = x.movedim(ax, 0).reshape(c, -1)
    shape = [1] * x.dim()
    shape[ax] = c
    if granularity == "channel":
        return floor_rows(one(rows)).reshape(shape)
    if group_size is None or group_size < 1:
        raise MixqError(f"group_size: group granularity needs a positive group size, got {group_size!r}")
    g = min(group_size, c)
    full = (c // g) * g
    parts = [one(rows[:full].reshape(c // g, -1))] if full else []
    if full < c:
        parts.append(one(rows[full:].reshape(1, -1)))
    s = floor_rows(torch.cat(parts)).repeat_interleave(g)[:c]
    return s.reshape(shape)


class ActObserver:
    """Accumulates activation statistics over calibration batches; ``scale(fmt)`` picks the scale.

    Keeps running min/max/mean|x| and (for ``percentile``, ``mse``, ``kl``) histograms of
    ``|x|`` and of ``max(x, 0)`` over ``[0, max|x|]``; when a batch widens the range the old
    histogram is re-binned into the new one. Signed formats use the ``|x|`` statistics,
    unsigned formats (after ReLU) those of ``max(x, 0)``.
    """

    def __init__(self, method: str = "minmax", percentile: float = 99.99, bins: int = 2048) -> None:
        if method not in OBSERVERS:
            raise MixqError(f"observer: {method!r} is not one of {', '.join(OBSERVERS)}")
        self.method = method
        self.percentile = percentile
        self.bins = bins
        self.seen = False
        self.min = math.inf
        self.max = -math.inf
        self.abs_sum = 0.0
        self.count = 0
        self.top = 0.0
        self.hist_abs = torch.zeros(bins, dtype=torch.float64)
        self.hist_pos = torch.zeros(bins, dtype=torch.float64)

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.seen else 0.0

    def _rebin(self, h: torch.Tensor, new_top: float) -> torch.Tensor:
        if self.top <= 0 or not bool((h > 0).any()):
            return torch.zeros_like(h)
        centers = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (self.top / self.bins)
        idx = (centers / new_top * self.bins).long().clamp_(0, self.bins - 1)
        return torch.zeros_like(h).index_add_(0, idx, h)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add one batch of activations (statistics kept on the CPU: a batch on a GPU is copied)."""
        x = x.detach().flatten().double().cpu()
        if x.numel() == 0:
            return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.abs_sum += float(x.abs().sum())
        self.count += x.numel()
        self.seen = True
        if self.method == "minmax":
            return
        amax = self.absmax
        if amax > self.top:
            new_top = amax if self.top == 0 else max(amax, 1.25 * self.top)
            self.hist_abs = self._rebin(self.hist_abs, new_top)
            self.hist_pos = self._rebin(self.hist_pos, new_top)
            self.top = new_top
        if self.top <= 0:
            self.hist_abs[0] += x.numel()
            self.hist_pos[0] += x.numel()
            return
        for h, v in ((self.hist_abs, x.abs()), (self.hist_pos, x.clamp(min=0))):
            idx = (v / self.top * self.bins).long().clamp_(0, self.bins - 1)
            h.index_add_(0, idx, torch.ones_like(v))

    def scale(self, fmt: NumberFormat) -> torch.Tensor:
        """The scale for ``fmt`` from everything seen so far (0-dim float32 tensor)."""
        if not self.seen:
            raise MixqError("ActObserver.scale: no calibration batch was observed")
        signed = is_signed(fmt)
        um = unit_max(fmt)
        t: float
        top = self.absmax if signed else max(self.max, 0.0)
        if self.method == "minmax" or top <= 0:
            mean_abs = self.abs_sum / max(self.count, 1)
            if isinstance(fmt, Binary):
                t = mean_abs
            elif isinstance(fmt, Ternary):
                t = 2.0 * float(fmt.threshold) * mean_abs
            else:
                t = top / um
        else:
            h = self.hist_abs if signed else self.hist_pos
            # only bins up to this format's top are populated for the unsigned histogram
            edges_top = self.top
            if self.method == "percentile":
                cdf = torch.cumsum(h, 0) / h.sum()
                j = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100.0, dtype=torch.float64)))
                t = min((j + 1) * edges_top / self.bins, top) / um
            elif self.method == "mse":
                t = self._hist_mse(h, edges_top, fmt) / um
            else:
                t = float(_kl_search(h[None], torch.tensor([edges_top], dtype=torch.float64), fmt)[0]) / um
        s = torch.tensor(t, dtype=torch.float32)
        return _safe(s)

    def _hist_mse(self, h: torch.Tensor, top: float, fmt: NumberFormat) -> float:
        """Clipping value minimizing the histogram-weighted squared error (bin centers as samples)."""
        centers = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (top / self.bins)
        um = unit_max(fmt)
        signed_centers = centers  # magnitudes; symmetric formats treat ±c alike
        best_t, best_e = top, math.inf
        for r in torch.linspace(1.0 / 100, 1.0, 100).tolist():
            t = r * top
            e = float((h * (snap(signed_centers, fmt, t / um) - signed_centers) ** 2).sum())
            if e < best_e:
                best_t, best_e = t, e
        return best_t
