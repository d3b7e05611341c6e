"""The torch kernels of the formats (internal): loaded on the first tensor quantize / dequantize.

:mod:`mixq.formats` itself imports without torch (the hardware model and the plan read
formats as plain data); every tensor operation of a format runs here. Nearest-level search
of the level-table formats: ``torch.bucketize`` on the midpoints between neighbouring
levels, or, for float32 on the CPU, a lookup table on the float32 bit patterns (see
:mod:`mixq.formats._common` for the tie rule).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch


def scale_tensor(scale: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``scale`` as a floating tensor on ``like``'s device (keeps its dtype if floating)."""
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            scale = scale.to(torch.get_default_dtype())
        return scale.to(like.device)
    return torch.tensor(float(scale), device=like.device, dtype=torch.float64)


def out_dtype(scale: torch.Tensor | float) -> torch.dtype:
    if isinstance(scale, torch.Tensor) and scale.is_floating_point():
        return scale.dtype
    return torch.get_default_dtype()


@functools.lru_cache(maxsize=512)
def _torch_table(fmt: Any, dtype: torch.dtype, device: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted levels, midpoints, int levels) as tensors; cached per format/dtype/device."""
    lv = np.asarray(fmt.levels(), dtype=np.float64)
    mids = (lv[1:] + lv[:-1]) / 2.0
    return (
        torch.as_tensor(lv, dtype=dtype, device=device),
        torch.as_tensor(mids, dtype=dtype, device=device),
        torch.as_tensor(np.asarray(fmt.int_levels(), dtype=np.int64), device=device),
    )


_LUT_MAX = 1 << 22


class _Side:
    """Nearest-level lookup on one side (magnitudes ``>= 0``) by a table on float32 bit patterns.

    The key of a non-negative float32 ``a`` is its bit pattern shifted right by ``23 - k``:
    monotone in ``a``, each binade split into ``2^k`` cells. ``k`` is the smallest value for
    which no cell holds two midpoints, so ``index = lut[key] + (a > mids[lut[key]])`` is exact.
    """

    def __init__(self, mags: np.ndarray, full_index: np.ndarray) -> None:
        mids32 = ((mags[1:] + mags[:-1]) / 2.0).astype(np.float32)
        self.ok = False
        self.full_index = torch.tensor(np.array(full_index, dtype=np.int64), dtype=torch.long)
        self.mids = torch.as_tensor(np.concatenate([mids32, [np.inf]]).astype(np.float32))
        if mids32.size == 0:
            self.ok, self.k, self.key_lo, self.lut = True, 0, 0, torch.zeros(1, dtype=torch.int32)
            return
        bits = mids32.view(np.int32).astype(np.int64)
        for k in range(2, 15):
            keys = bits >> (23 - k)
            if np.all(np.diff(keys) > 0):
                lo, hi = int(keys[0]), int(keys[-1]) + 1
                if hi - lo + 1 > _LUT_MAX:
                    return
                cells = (np.arange(lo, hi + 1, dtype=np.int64) << (23 - k)).astype(np.int32).view(np.float32)
                lut = np.searchsorted(mids32, cells, side="left")  # mids strictly below the cell start
                self.ok, self.k, self.key_lo = True, k, lo
                self.lut = torch.as_tensor(lut.astype(np.int32))
                return

    def index(self, a: torch.Tensor) -> torch.Tensor:
        """Side index (int32) of the nearest magnitude to float32 ``a >= 0`` (ties to the smaller)."""
        if self.mids.numel() == 1:
            return torch.zeros_like(a, dtype=torch.int32)
        key = (a.view(torch.int32) >> (23 - self.k)).sub_(self.key_lo).clamp_(0, self.lut.numel() - 1)
        i = self.lut.index_select(0, key.flatten()).view(a.shape)
        return i.add_(a > self.mids.index_select(0, i.flatten()).view(a.shape))


@functools.lru_cache(maxsize=512)
def _fast_tables(fmt: Any) -> tuple[_Side, _Side | None] | None:
    """(positive side, negative side or None if symmetric) for the float32 fast path, or None."""
    lv = np.asarray(fmt.levels(), dtype=np.float64)
    idx = np.arange(lv.size)
    has_zero = bool((lv == 0).any())
    symmetric = np.array_equal(lv, -lv[::-1])
    if not (has_zero or symmetric) or lv.size > 1 << 20:
        return None
    pos_m, pos_i = lv[lv >= 0], idx[lv >= 0]
    neg_m, neg_i = -lv[lv <= 0][::-1], idx[lv <= 0][::-1]
    if pos_m.size == 0:  # no non-negative level: every value rounds on the negative side
        pos_m, pos_i = neg_m[:1], neg_i[:1]
    if neg_m.size == 0:  # unsigned: negatives round to the smallest level
        neg_m, neg_i = pos_m[:1], pos_i[:1]
    pos = _Side(pos_m, pos_i)
    if symmetric:
        return (pos, None) if pos.ok else None
    neg = _Side(neg_m, neg_i)
    return (pos, neg) if pos.ok and neg.ok else None


def _fast_index(fmt: Any, y: torch.Tensor) -> torch.Tensor | None:
    tables = _fast_tables(fmt) if y.dtype == torch.float32 and y.device.type == "cpu" else None
    if tables is None:
        return None
    pos, neg = tables
    a = y.abs()
    neg_side = y < 0
    if neg is None:  # symmetric: +level i sits at n - p + i, -level i at p - 1 - i
        n, p = len(fmt.levels()), pos.mids.numel()
        i = pos.index(a).long()
        return torch.where(neg_side, (p - 1) - i, i.add_(n - p))
    fi_neg = neg.full_index.index_select(0, neg.index(a).flatten().long()).view(y.shape)
    fi_pos = pos.full_index.index_select(0, pos.index(a).flatten().long()).view(y.shape)
    return torch.where(neg_side, fi_neg, fi_pos)


def nearest_index(fmt: Any, y: torch.Tensor) -> torch.Tensor:
    """Index into ``fmt.levels()`` of the level nearest to unit-scale values ``y`` (tie rule above).

    float32 CPU inputs use a bit-pattern lookup table (a few elementwise passes); other
    dtypes use ``torch.bucketize`` on the midpoints. Both give identical results in float32.
    """
    dtype = y.dtype if y.is_floating_point() else torch.get_default_dtype()
    y = y.to(dtype).contiguous()
    fast = _fast_index(fmt, y)
    if fast is not None:
        return fast
    return bucketize_index(fmt, y)


def bucketize_index(fmt: Any, y: torch.Tensor) -> torch.Tensor:
    """Reference nearest-level search with ``torch.bucketize`` (any float dtype)."""
    _, mids, _ = _torch_table(fmt, y.dtype, str(y.device))
    if mids.numel() == 0:
        return torch.zeros_like(y, dtype=torch.long)
    idx = torch.bucketize(y, mids, right=False)  # mids[idx-1] < y <= mids[idx]
    # y exactly on a midpoint takes the lower level; for y <= 0 the upper one is the smaller magnitude.
    on_mid = (y <= 0) & (mids[idx.clamp(max=mids.numel() - 1)] == y)
    return idx + on_mid.long()


def table_quantize(fmt: Any, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Integer levels ``q`` (int64) of the nearest level of ``fmt``'s table to ``x / scale``."""
    s = scale_tensor(scale, x)
    y = x / s
    _, _, ints = _torch_table(fmt, y.dtype, str(y.device))
    idx = nearest_index(fmt, y)
    return ints.index_select(0, idx.flatten()).view(idx.shape)


def table_dequantize(frac_bits: int, q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``q * 2**-frac_bits * scale`` as a float tensor (dtype of ``scale`` if it is a float tensor)."""
    dt = out_dtype(scale)
    s = scale_tensor(scale, q).to(dt)
    return q.to(dt) * (2.0 ** -frac_bits) * s


def table_snap(fmt: Any, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Fake-quantized value (nearest level times scale) in ``x``'s dtype, without the int round-trip."""
    s = scale_tensor(scale, x).to(x.dtype)
    y = x / s
    lv, _, _ = _torch_table(fmt, y.dtype, str(y.device))
    idx = nearest_index(fmt, y)
    return lv.index_select(0, idx.flatten()).view(idx.shape).mul_(s)


def fixed_quantize(x: torch.Tensor, scale: torch.Tensor | float, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round(x / scale), qmin, qmax)`` as int64 (ties to even)."""
    y = torch.round(x / scale_tensor(scale, x))
    return y.clamp_(qmin, qmax).to(torch.int64)


def fixed_dequantize(q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    dt = out_dtype(scale)
    return q.to(dt) * scale_tensor(scale, q).to(dt)


def fixed_snap(x: torch.Tensor, scale: torch.Tensor | float, qmin: int, qmax: int) -> torch.Tensor:
    s = scale_tensor(scale, x).to(x.dtype)
    return torch.round(x / s).clamp_(qmin, qmax) * s


def csd_digits(q: torch.Tensor) -> torch.Tensor:
    """Count of non-zero CSD digits of every integer in ``q`` (see :func:`mixq.formats.fixed.csd_digits`)."""
    n = q.abs().to(torch.int64)
    x = (3 * n) ^ n
    count = torch.zeros_like(n)
    while bool((x != 0).any()):
        count += x & 1
        x = x >> 1
    return count


def to_numpy64(w: Any) -> np.ndarray:
    """``w`` (a tensor or array-like) as a float64 numpy array."""
    if isinstance(w, torch.Tensor):
        return w.detach().cpu().double().numpy()
    return np.asarray(w, np.float64)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)
