"""Small real image sets found in installed packages: labelled samples and calibration photos.

* :func:`foolbox_samples`: the 20 labelled images per set shipped in the
  ``foolbox`` package (``foolbox/data/<set>_<idx>_<label>.<ext>``), located
  with ``importlib.util.find_spec`` (foolbox itself is never imported).
* :func:`natural_photos`: the colour photographs of everyday scenes shipped in
  scikit-image (``skimage/data``) and scikit-learn (``sklearn/datasets/images``),
  read as files. Only the names in :data:`NATURAL_PHOTOS` are used: grayscale
  images (camera, coins, moon, textures), synthetic ones (chessboard, logo,
  colour wheel, phantom, text) and scientific ones (hubble, retina, microscopy)
  are left out, and a listed file that decodes as gray is skipped too.
* :func:`calibration_set`: unlabelled ImageNet-preprocessed inputs for
  post-training calibration, drawn by seeded random crops and flips of those
  photos plus the foolbox ImageNet images.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixq.data.images import IMAGENET_MEAN, IMAGENET_STD, read_image, to_float_chw
from mixq.errors import DataError

__all__ = [
    "FOOLBOX_SETS",
    "NATURAL_PHOTOS",
    "calibration_set",
    "foolbox_data_dir",
    "foolbox_samples",
    "natural_photo_paths",
    "natural_photos",
    "opencv_photos",
]

# set name -> PIL mode the images are decoded in
FOOLBOX_SETS: dict[str, str] = {
    "imagenet": "RGB",
    "cifar10": "RGB",
    "cifar100": "RGB",
    "mnist": "L",
    "fashionMNIST": "L",
}

# (package, folder inside the package, file names): colour photographs of everyday scenes
NATURAL_PHOTOS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "skimage",
        "data",
        (
            "astronaut.png",
            "chelsea.png",
            "coffee.png",
            "motorcycle_left.png",
            "motorcycle_right.png",
            "rocket.jpg",
        ),
    ),
    ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
)


#: OpenCV's sample photos (Debian ``opencv-doc``): colour photographs only (no calibration boards, logos,
#: grayscale frames or paintings). Not a default source, so a machine with the package installed calibrates
#: as one without; pass :func:`opencv_photos` to :func:`calibration_set` for a wider calibration set.
OPENCV_PHOTO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_PHOTOS: tuple[str, ...] = (
    "HappyFish.jpg", "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "building.jpg",
    "butterfly.jpg", "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg",
    "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "stuff.jpg",
)


def opencv_photos(folder: Path = OPENCV_PHOTO_DIR) -> list[np.ndarray]:
    """:data:`OPENCV_PHOTOS` as uint8 (H, W, 3) arrays; :class:`DataError` naming the folder when none is there."""
    paths = [folder / n for n in OPENCV_PHOTOS if (folder / n).is_file()]
    if not paths:
        raise DataError(f"{folder}: no OpenCV sample photos (Debian: apt-get install -y opencv-doc)")
    return [read_image(p, "RGB") for p in paths]


def package_dirs(package: str) -> list[Path]:
    """The folders of an installed package, found without importing it (empty when it is absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _package_dir(package: str) -> Path | None:
    """The (first) folder of an installed package (None when absent)."""
    return next(iter(package_dirs(package)), None)


def foolbox_data_dir() -> Path:
    """``foolbox/data`` of the installed foolbox package; :class:`DataError` when it is not installed."""
    pkg = _package_dir("foolbox")
    if pkg is None or not (pkg / "data").is_dir():
        raise DataError(
            "foolbox sample images (foolbox/data) not found: install them with `pip install --no-deps foolbox==3.3.4`"
        )
    return pkg / "data"


def foolbox_samples(dataset: str = "imagenet") -> tuple[list[np.ndarray], np.ndarray]:
    """The labelled sample images of ``dataset`` shipped with foolbox, in index order.

    Returns a list of uint8 images — (H, W, 3) for "imagenet" (19 of 512x512
    and one of 683x1024, so a list rather than one array), "cifar10" and
    "cifar100" (32x32); (28, 28) for "mnist" and "fashionMNIST" (``np.stack``
    them for a batch) — and their int64 labels (ImageNet class indices 0-999
    for "imagenet"). :func:`mixq.data.imagenet_preprocess` turns an ImageNet
    one into a model input.
    """
    if dataset not in FOOLBOX_SETS:
        raise DataError(f"unknown foolbox sample set {dataset!r}; expected one of {sorted(FOOLBOX_SETS)}")
    folder = foolbox_data_dir()
    pattern = re.compile(rf"^{re.escape(dataset)}_(\d+)_(\d+)\.(png|jpg|jpeg)$")
    found = sorted(
        (int(m.group(1)), int(m.group(2)), f) for f in folder.iterdir() if (m := pattern.match(f.name)) is not None
    )
    if not found:
        raise DataError(f"no {dataset!r} sample images in {folder}")
    images = [read_image(f, FOOLBOX_SETS[dataset]) for _, _, f in found]
    return images, np.array([label for _, label, _ in found], dtype=np.int64)


def natural_photo_paths() -> list[Path]:
    """Paths of the photos in :data:`NATURAL_PHOTOS` that are installed (packages may be absent)."""
    paths: list[Path] = []
    for package, sub, names in NATURAL_PHOTOS:
        pkg = _package_dir(package)
        if pkg is None:
            continue
        paths.extend(p for p in (pkg / sub / n for n in names) if p.is_file())
    return paths


def natural_photos() -> list[np.ndarray]:
    """Unlabelled colour photos as uint8 (H, W, 3) arrays; gray-decoding files are skipped.

    Raises :class:`DataError` when none are installed (needs scikit-image or scikit-learn).
    """
    photos = []
    for p in natural_photo_paths():
        img = read_image(p, "RGB")
        if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]):
            continue  # grayscale stored as RGB
        photos.append(img)
    if not photos:
        raise DataError("no natural photos found: install scikit-image or scikit-learn (pip install mixq[photos])")
    return photos


def calibration_set(
    n: int = 256,
    size: int = 224,
    seed: int = 0,
    include_foolbox: bool = True,
    min_scale: float = 0.35,
    photos: list[np.ndarray] | None = None,
) -> torch.Tensor:
    """``n`` ImageNet-normalised float32 inputs (n, 3, size, size) for calibration.

    Sources are ``photos`` (uint8 (H, W, 3) arrays; default :func:`natural_photos`) plus, when foolbox is installed and
    ``include_foolbox``, its 20 ImageNet images. Input ``i`` comes from source
    ``i % len(sources)`` (so every source is used evenly): a square crop with
    side ``U(min_scale, 1) * min(H, W)`` at a uniform random position, flipped
    left-right with probability 1/2, resized to ``size`` (bilinear,
    antialiased), normalised with the ImageNet mean/std. Deterministic in ``seed``.
    """
    if n < 1 or size < 1 or not 0.0 < min_scale <= 1.0:
        raise DataError(f"calibration_set needs n >= 1, size >= 1, 0 < min_scale <= 1 (got {n}, {size}, {min_scale})")
    sources = [to_float_chw(p) for p in (natural_photos() if photos is None else photos)]
    if not sources:
        raise DataError("calibration_set: photos is empty")
    if include_foolbox:
        with contextlib.suppress(DataError):  # foolbox not installed: photos alone
            sources.extend(to_float_chw(im) for im in foolbox_samples("imagenet")[0])
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = int(src.shape[1]), int(src.shape[2])
        u = torch.rand(4, generator=gen).tolist()
        side = max(1, int(round((min_scale + (1.0 - min_scale) * u[0]) * min(h, w))))
        top, left = int(u[1] * (h - side + 1)), int(u[2] * (w - side + 1))
        crop = src[:, top : top + side, left : left + side]
        if u[3] < 0.5:
            crop = crop.flip(-1)
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i] = (crop[0] - mean) / std
    return out
