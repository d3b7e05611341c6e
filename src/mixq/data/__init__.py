"""Dataset readers: Fashion-MNIST / MNIST (idx, pickle), ImageNet-style folders, packaged samples,
and data sources for calibration and evaluation (:mod:`mixq.data.sources`: ``Preprocess``,
``load_images`` from a keyword, a folder or an .npz file, ``as_batch`` for any tensor / Dataset / DataLoader).

Everything returns plain uint8 numpy images and int64 labels, or normalised
float32 torch tensors; every bad path or corrupt file raises
:class:`mixq.errors.DataError` naming the path. Imports only torch, numpy,
mixq.errors and mixq.validate (Pillow is imported lazily to decode JPEG/PNG files).
"""

from __future__ import annotations

from mixq.data.idx import read_bytes, read_idx, read_mnist_pickle, write_idx
from mixq.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolder,
    center_crop,
    imagenet_preprocess,
    read_image,
    resize_shorter,
    to_float_chw,
)
from mixq.data.mnist import (
    FMNIST_CLASSES,
    FMNIST_DEBIAN_ROOT,
    FMNIST_SUBSET_PATH,
    GRAY_MEAN,
    GRAY_STD,
    data_loader,
    load_fashion_mnist,
    load_fmnist_subset,
    load_idx_pair,
    load_mnist,
    normalize_gray,
    tensor_dataset,
)
from mixq.data.samples import (
    calibration_set,
    foolbox_data_dir,
    foolbox_samples,
    natural_photo_paths,
    natural_photos,
    opencv_photos,
)
from mixq.data.sources import ImageSet, Preprocess, as_batch, as_labelled, iter_batches, load_images

__all__ = [
    "FMNIST_CLASSES",
    "FMNIST_DEBIAN_ROOT",
    "FMNIST_SUBSET_PATH",
    "GRAY_MEAN",
    "GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolder",
    "ImageSet",
    "Preprocess",
    "as_batch",
    "as_labelled",
    "calibration_set",
    "center_crop",
    "data_loader",
    "foolbox_data_dir",
    "foolbox_samples",
    "imagenet_preprocess",
    "iter_batches",
    "load_fashion_mnist",
    "load_fmnist_subset",
    "load_idx_pair",
    "load_images",
    "load_mnist",
    "natural_photo_paths",
    "natural_photos",
    "opencv_photos",
    "normalize_gray",
    "read_bytes",
    "read_idx",
    "read_image",
    "read_mnist_pickle",
    "resize_shorter",
    "tensor_dataset",
    "to_float_chw",
    "write_idx",
]
