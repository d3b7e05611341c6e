"""ImageNet-style image input without torchvision.

Preprocessing follows the torchvision ImageNet evaluation recipe:
resize the shorter side to 256 (bilinear, antialiased; the longer side is
``int(256 * long / short)``), center crop 224 (top/left offsets
``round((size - 224) / 2)``), scale to ``[0, 1]`` and normalise with
:data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`. Resizing runs in torch
(``torch.nn.functional.interpolate(..., antialias=True)``) on float pixels, so
results can differ from a PIL uint8 resize by rounding (well under 1/255).

Files are decoded with Pillow (installed with matplotlib, a mixq dependency),
imported only when a file is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mixq.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "center_crop",
    "imagenet_preprocess",
    "read_image",
    "resize_shorter",
    "to_float_chw",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Decode an image file to uint8: (H, W, 3) for ``mode="RGB"``, (H, W) for ``mode="L"``.

    A missing, unreadable, truncated or non-image file raises :class:`DataError` naming the path.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file not found: {p}")
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow ships with matplotlib
        raise DataError(f"reading {p} needs Pillow (pip install pillow)") from e
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("F", "I", "I;16"):  # float / wide-integer pixels: check before narrowing to uint8
                raw = np.asarray(im, dtype=np.float64)
                if not np.isfinite(raw).all():
                    bad = int((~np.isfinite(raw)).sum())
                    raise ValueError(f"{bad} NaN or Inf pixels")
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        raise DataError(f"cannot decode image {p}: {e}") from e
    return arr.copy()


def to_float_chw(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> float32 (3, H, W) in [0, 1] (gray replicated)."""
    t = torch.as_tensor(np.asarray(img))
    if t.dtype != torch.uint8:
        raise DataError(f"expected a uint8 image, got {t.dtype}")
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
        raise DataError(f"expected an (H, W[, C]) image with C in 1, 3, 4; got shape {tuple(t.shape)}")
    t = t[..., :3] if t.shape[-1] == 4 else t.expand(-1, -1, 3) if t.shape[-1] == 1 else t
    return t.permute(2, 0, 1).to(torch.float32) / 255.0


def resize_shorter(x: torch.Tensor, size: int = 256) -> torch.Tensor:
    """Resize a (C, H, W) float image so its shorter side is ``size`` (bilinear, antialiased)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    if (nh, nw) == (h, w):
        return x
    out = F.interpolate(x.unsqueeze(0), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    return out[0]


def center_crop(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The central ``size`` x ``size`` window of a (C, H, W) image (at least that large)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < size or w < size:
        raise DataError(f"image of {h}x{w} is smaller than the {size}x{size} crop")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def imagenet_preprocess(img: np.ndarray | torch.Tensor, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """uint8 (H, W, 3) or (H, W) image -> normalised float32 (3, crop, crop) tensor.

    ``resize`` shorter side (bilinear, antialiased) -> center ``crop`` ->
    ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` per channel.
    """
    x = center_crop(resize_shorter(to_float_chw(img), resize), crop)
    return _normalize(x).contiguous()


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """Images in class subfolders: ``root/<class>/<file>``, classes indexed in sorted order.

    ``transform`` maps a decoded uint8 (H, W, 3) image to the returned tensor
    (default :func:`imagenet_preprocess`). Files with other extensions are
    ignored; a missing root or a root without images raises :class:`DataError`.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[np.ndarray], torch.Tensor] = imagenet_preprocess,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        self.transform = transform
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = [
            (f, self.class_to_idx[c])
            for c in self.classes
            for f in sorted((self.root / c).rglob("*"))
            if f.is_file() and f.suffix.lower() in extensions
        ]
        if not self.samples:
            raise DataError(f"no images with extensions {extensions} in class folders of {self.root}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(read_image(path)), label
