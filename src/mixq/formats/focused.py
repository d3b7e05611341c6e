"""Focused quantization (Zhao et al., NeurIPS 2019) for pruned layers.

The non-zero weights of a finely pruned layer are bimodal; a two-component
Gaussian mixture is fitted to them (``fit_focused``) and each component ``c``
gets power-of-two levels *around its mean*::

    levels = {0} ∪ { μ_c + s · α_c · 2^-j : c ∈ {0, 1}, s ∈ {-1, +1}, j = 0 .. n-1 } ∪ {μ_c}

with ``n = 2^(bits-2) - 1`` shift levels per side (``bits`` = 1 component bit +
a ``bits - 1`` bit sign/exponent offset code; zeros are the pruned weights, held
by the sparse encoding). All in unit scale: the weights are divided by their
``max|w|`` before fitting, so use ``scale = max|w|`` (``unit_max`` is 1, which is
what min-max scaling gives).

**Dyadic levels.** The fitted means ``μ_c`` are rounded to the nearest signed
power of two (in log2) and the spreads ``α_c`` are powers of two, so every
level is a sum of at most two signed powers of two: a product is two shifts and
an add, like SP2. Quantization is to the nearest level of the union (not by
component likelihood as in the paper): it never has larger error.

>>> f = Focused(3, means=(-0.25, 0.25), spreads=(0.125, 0.125))
>>> f.levels().tolist()
[-0.375, -0.25, -0.125, 0.0, 0.125, 0.25, 0.375]
>>> f.decompose(3)  # 0.375 = 0.25 + 0.125, frac_bits = 3
((1, 1), (1, 0))
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mixq.errors import FormatError
from mixq.formats._common import TableFormat, check_int, is_pow2, kernels

if TYPE_CHECKING:
    import torch


def _log2_exact(v: float, name: str) -> int:
    if not is_pow2(abs(v)):
        raise FormatError(f"focused.{name}: {v!r} is not a signed power of two")
    return int(math.log2(abs(v)))


@functools.lru_cache(maxsize=64)
def _table(bits: int, means: tuple[float, float], spreads: tuple[float, float]
           ) -> tuple[int, dict[int, tuple[tuple[int, int], ...]]]:
    """(frac_bits, {int level: decomposition}) of a Focused format."""
    n = 2 ** (bits - 2) - 1
    exps = [_log2_exact(m, "means") for m in means]
    sexps = [_log2_exact(a, "spreads") for a in spreads]
    frac = max(0, *(-e for e in exps), *(-(a - (n - 1)) for a in sexps))
    best: dict[int, tuple[tuple[int, int], ...]] = {0: ()}

    def add(terms: tuple[tuple[int, int], ...]) -> None:
        q = sum(s * (1 << k) for s, k in terms)
        if q == 0:
            return
        if q not in best or len(terms) < len(best[q]):
            best[q] = terms

    for mu, e, a in zip(means, exps, sexps, strict=True):
        mterm = (1 if mu > 0 else -1, e + frac)
        add((mterm,))
        for j in range(n):
            for s in (-1, 1):
                off = (s, a - j + frac)
                # the same value as one term when the two terms merge or cancel into a power of two
                q = mterm[0] * (1 << mterm[1]) + s * (1 << off[1])
                if q != 0 and abs(q) & (abs(q) - 1) == 0:
                    add(((1 if q > 0 else -1, abs(q).bit_length() - 1),))
                else:
                    add((mterm, off))
    if max(abs(q) for q in best) >= 2**62:
        raise FormatError("focused: integer levels exceed 2**62 (means/spreads too far apart)")
    return frac, best


@dataclass(frozen=True)
class Focused(TableFormat):
    """Shift levels around two fitted component means (unit scale: weights / max|w|)."""

    bits: int = 4
    means: tuple[float, float] = (-0.25, 0.25)
    spreads: tuple[float, float] = (0.125, 0.125)

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 3, 8, "focused")
        for name in ("means", "spreads"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != 2:
                raise FormatError(f"focused.{name}: expected two numbers, got {v!r}")
            for x in v:
                _log2_exact(float(x), name)
        if any(a <= 0 for a in self.spreads):
            raise FormatError(f"focused.spreads: must be positive powers of two, got {self.spreads!r}")
        _table(self.bits, self.means, self.spreads)

    kind = "focused"
    shift_add = False  # the integer engine multiplies (mixq.engine.kernels)

    @property
    def frac_bits(self) -> int:
        return _table(self.bits, self.means, self.spreads)[0]

    @property
    def storage_bits(self) -> int:
        """Bits per *non-zero* weight (zeros are held by the sparse encoding)."""
        return self.bits

    @property
    def unit_max(self) -> float:
        return 1.0

    def int_levels(self) -> np.ndarray:
        return np.array(sorted(_table(self.bits, self.means, self.spreads)[1]), dtype=np.int64)

    def decompose(self, q: int) -> tuple[tuple[int, int], ...]:
        terms = _table(self.bits, self.means, self.spreads)[1].get(int(q))
        if terms is None:
            raise FormatError(f"{self}: {q} is not a level of this format")
        return terms

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "focused", "bits": self.bits, "means": list(self.means),
                "spreads": list(self.spreads)}

    def __str__(self) -> str:
        return f"focused{self.bits}(means={self.means}, spreads={self.spreads})"


def _pow2_round(v: float) -> float:
    """Nearest signed power of two to ``v`` in log2 (``v != 0``)."""
    return math.copysign(2.0 ** round(math.log2(abs(v))), v)


def gmm2(x: np.ndarray, iters: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM fit of a two-component 1-D Gaussian mixture: (weights, means, stds), means ascending."""
    x = np.asarray(x, dtype=np.float64).ravel()
    neg, pos = x[x < 0], x[x >= 0]
    mu = np.array([neg.mean() if neg.size else x.min(), pos.mean() if pos.size else x.max()])
    sd = np.full(2, x.std() / 2 + 1e-12)
    pi = np.array([0.5, 0.5])
    for _ in range(iters):
        logp = -0.5 * ((x[:, None] - mu) / sd) ** 2 - np.log(sd) + np.log(pi)
        logp -= logp.max(axis=1, keepdims=True)
        r = np.exp(logp)
        r /= r.sum(axis=1, keepdims=True)
        nk = r.sum(axis=0) + 1e-12
        pi = nk / nk.sum()
        mu = (r * x[:, None]).sum(axis=0) / nk
        sd = np.sqrt((r * (x[:, None] - mu) ** 2).sum(axis=0) / nk) + 1e-12
    order = np.argsort(mu)
    return pi[order], mu[order], sd[order]


def fit_focused(w: torch.Tensor | np.ndarray, bits: int = 4, max_samples: int = 100_000) -> Focused:
    """Fit a :class:`Focused` format to the non-zero weights of ``w`` (use ``scale = max|w|``).

    Fits a 2-component GMM to ``w / max|w|`` (non-zeros), rounds the component means
    to signed powers of two, and picks each component's spread ``α_c`` (a power of two
    near its standard deviation) that minimizes the quantization MSE of the layer.
    Layers with more than ``max_samples`` non-zeros are fitted on an evenly strided
    subset of them (deterministic).
    """
    check_int("bits", bits, 3, 8, "focused")
    k = kernels()
    a = k.to_numpy64(w).ravel()
    nz = a[a != 0]
    if nz.size < 2:
        raise FormatError("focused: need at least two non-zero weights to fit")
    nz = nz / np.abs(nz).max()
    if nz.size > max_samples:
        nz = nz[:: -(-nz.size // max_samples)]
    _, mu, sd = gmm2(nz)
    means = tuple(_pow2_round(m) if m != 0 else (-2.0**-8 if i == 0 else 2.0**-8) for i, m in enumerate(mu))
    if means[0] == means[1]:
        means = (-abs(means[0]), abs(means[1]))
    xt = k.as_tensor(nz)
    best: tuple[float, Focused] | None = None
    base = [int(math.floor(math.log2(max(s, 2.0**-20)))) for s in sd]
    for d0 in (-1, 0, 1, 2):
        for d1 in (-1, 0, 1, 2):
            try:
                fmt = Focused(bits, (float(means[0]), float(means[1])),
                              (2.0 ** (base[0] + d0), 2.0 ** (base[1] + d1)))
            except FormatError:
                continue
            err = float(((fmt.snap(xt, 1.0) - xt) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, fmt)
    if best is None:  # pragma: no cover - the grid always has a valid member
        raise FormatError("focused: no valid fit")
    return best[1]
