"""A fidelity set of natural ImageNet-style inputs for judging quantized models against their float twin.

:func:`fidelity_set` draws ``n`` views (default 2,000) of the 20 ImageNet photos shipped with foolbox
(:func:`mixq.data.foolbox_samples`): per photo the canonical view (shorter side to ``size · 8/7``,
center crop) and then seeded random views at several scales (square crops of side ``f · min(H, W)``,
``f`` cycling through :data:`SCALES`) at random positions, flipped left-right with probability 1/2,
with mild colour jitter (brightness, contrast and saturation each scaled by ``U(1 - jitter, 1 +
jitter)``). It is disjoint *by photo* from the calibration inputs the benchmarks use
(:func:`mixq.data.calibration_set` with ``include_foolbox=False``: crops of the scikit-image /
scikit-learn photos only), so no calibration crop overlaps a fidelity input.

Inputs are returned as uint8 ``(n, 3, size, size)`` (a 2,000-input set is 300 MB, not 1.2 GB of
float32); :func:`normalize` turns a batch into the ImageNet-normalised float32 a model takes. Each
input carries the index of its photo (``groups``), so a confidence interval can account for views of
one photo being correlated (:func:`clustered_paired_difference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixq.data.images import IMAGENET_MEAN, IMAGENET_STD, to_float_chw
from mixq.data.samples import foolbox_samples
from mixq.errors import DataError

__all__ = ["SCALES", "FidelitySet", "clustered_paired_difference", "fidelity_set", "normalize"]

#: crop sides as fractions of a photo's shorter side, cycled through per photo
SCALES: tuple[float, ...] = (1.0, 0.85, 0.7, 0.55, 0.4)


@dataclass(frozen=True)
class FidelitySet:
    """``x``: uint8 (n, 3, size, size) views; ``groups``: the photo index of each view (int64, n);
    ``scales``: the crop side of each view as a fraction of its photo's shorter side (1.0 and
    ``canonical`` for the center-crop view); ``labels``: the ImageNet label of each view's photo."""

    x: torch.Tensor
    groups: torch.Tensor
    scales: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) NCHW views as ImageNet-normalised float32."""
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (xf - mean) / std


def _jitter(img: torch.Tensor, b: float, c: float, s: float) -> torch.Tensor:
    """Brightness ``b``, contrast ``c`` (about the mean gray), saturation ``s`` (about the pixel's gray)."""
    img = img * b
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = (img - gray.mean()) * c + gray.mean()
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = (img - gray) * s + gray
    return img.clamp(0.0, 1.0)


def _resized(crop: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def fidelity_set(n: int = 2000, size: int = 224, seed: int = 0, jitter: float = 0.1) -> FidelitySet:
    """``n`` views of the shipped foolbox ImageNet photos (see the module doc); deterministic in ``seed``.
    Raises :class:`DataError` when foolbox's images are not installed or the arguments are out of range."""
    if n < 1 or size < 8 or not 0.0 <= jitter < 1.0:
        raise DataError(f"fidelity_set needs n >= 1, size >= 8, 0 <= jitter < 1 (got {n}, {size}, {jitter})")
    photos, labels = foolbox_samples("imagenet")
    sources = [to_float_chw(p) for p in photos]
    per = math.ceil(n / len(sources))
    gen = torch.Generator().manual_seed(seed)
    xs: list[torch.Tensor] = []
    groups: list[int] = []
    scales: list[float] = []
    for k, src in enumerate(sources):
        h, w = int(src.shape[1]), int(src.shape[2])
        short = min(h, w)
        for j in range(per):
            if j == 0:  # the canonical view: resize the shorter side to size·8/7, center crop
                side = round(short * 7 / 8)
                top, left, flip, frac = (h - side) // 2, (w - side) // 2, False, 1.0
                bcs = (1.0, 1.0, 1.0)
            else:
                u = torch.rand(7, generator=gen).tolist()
                frac = SCALES[(j - 1) % len(SCALES)]
                side = max(1, round(frac * short))
                top, left, flip = int(u[0] * (h - side + 1)), int(u[1] * (w - side + 1)), u[2] < 0.5
                bcs = tuple(1.0 + jitter * (2.0 * v - 1.0) for v in u[3:6])
            crop = src[:, top : top + side, left : left + side]
            if flip:
                crop = crop.flip(-1)
            view = _jitter(_resized(crop, size), *bcs) if bcs != (1.0, 1.0, 1.0) else _resized(crop, size).clamp(0, 1)
            xs.append((view * 255.0).round().to(torch.uint8))
            groups.append(k)
            scales.append(frac)
    # the first n views, spread over the photos: view j of every photo before view j + 1 of any
    order = sorted(range(len(xs)), key=lambda i: (i % per, i // per))[:n]
    order.sort()
    return FidelitySet(torch.stack([xs[i] for i in order]), torch.tensor([groups[i] for i in order]),
                       torch.tensor([scales[i] for i in order]),
                       torch.as_tensor(labels)[torch.tensor([groups[i] for i in order])])


def clustered_paired_difference(a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """Difference in points of two paired hit rates (per-input booleans on the same inputs) and the half
    width of its 95% confidence interval with the inputs clustered by ``groups`` (the cluster-robust
    variance of a mean: the views of one photo may err together, so the photos, not the views, are the
    independent draws; t quantile on ``G - 1`` degrees of freedom replaced by 1.96 · sqrt(G / (G - 1))).

    All ten misses on one photo of ten: the interval is far wider than the unclustered one (±5.9).

    >>> a = torch.tensor([True] * 90 + [False] * 10)
    >>> d, hw = clustered_paired_difference(a, torch.ones(100, dtype=torch.bool), torch.arange(100) // 10)
    >>> round(d, 1), round(hw, 1)
    (-10.0, 19.6)
    """
    x = a.double() - b.double()
    n = x.numel()
    mean = float(x.mean())
    g = torch.unique(groups)
    if g.numel() < 2:
        return 100.0 * mean, float("nan")
    sums = torch.stack([(x[groups == k] - mean).sum() for k in g])
    var = float((sums * sums).sum()) / (n * n) * g.numel() / (g.numel() - 1)
    return 100.0 * mean, 100.0 * 1.96 * var ** 0.5
