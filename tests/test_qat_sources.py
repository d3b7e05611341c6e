"""`mixq qat` / `prune` on a user's model and data (session 22): any model source (here a builder file with a
residual add), a folder of class subfolders or an .npz of labelled inputs, the run folder read back by
`verify --from` bit-exactly; bad data refused in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x)


def build():
    torch.manual_seed(0)
    return Net()


build.input_shape = (3, 16, 16)
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A builder file and two image folders of real Fashion-MNIST pictures as RGB PNGs: 3 classes (the model's
    outputs) and 4 classes; a flat folder without classes."""
    from PIL import Image

    from mixq.data import load_fmnist_subset

    root = tmp_path_factory.mktemp("user")
    (root / "net.py").write_text(NET)
    x, y = load_fmnist_subset()
    for name, classes in (("three", 3), ("four", 4)):
        for c in range(classes):
            (root / name / f"c{c}").mkdir(parents=True)
            for i in np.nonzero(y == c)[0][:20]:
                img = Image.fromarray(np.asarray(x[i]).astype("uint8")).convert("RGB")
                img.save(root / name / f"c{c}" / f"{i}.png")
    (root / "flat").mkdir()
    for i in range(4):
        Image.fromarray(np.asarray(x[i]).astype("uint8")).save(root / "flat" / f"{i}.png")
    return {"root": root, "net": root / "net.py", "three": root / "three", "four": root / "four", "flat": root / "flat"}


def _mixq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mixq", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_qat_a_builder_on_an_image_folder(user: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q"
    r = _mixq("qat", "--model", f"{user['net']}:build", "--dataset", str(user["three"]), "--epochs", "1",
              "--batch-size", "16", "--residual-bits", "8", "--weight", "fixed8n", "--act", "ufixed8", "--threads",
              "1", "--mean", "0.5,0.4,0.3", "--std", "0.25,0.25,0.5", "--quiet", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["train_images"] == 54 and res["val_images"] == 6  # a seeded tenth of 60 held out
    plan = json.loads((out / "plan.json").read_text())
    assert plan["residual_bits"] == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"]["source"] == str(user["three"])
    assert summary["calibration"]["preprocess"]["size"] == [16, 16]
    assert summary["calibration"]["preprocess"]["mean"] == [0.5, 0.4, 0.3]  # the model's own normalisation
    assert summary["calibration"]["preprocess"]["std"] == [0.25, 0.25, 0.5]
    v = _mixq("verify", "--from", str(out), "--images", "8", "--out", str(tmp_path / "v"), cwd=tmp_path)
    assert v.returncode == 0 and "EXACT (0 of 24 outputs differ" in v.stdout, v.stdout + v.stderr
    if shutil.which("verilator"):  # the trained model with its 8-bit streams as a whole accelerator (~20 s)
        b = _mixq("rtl", "build", "--from", str(out), "--images", "2", "--out", str(tmp_path / "rtl"), cwd=tmp_path)
        assert b.returncode == 0 and "0 mismatches, 0 missing, 0 extra" in b.stdout, b.stdout + b.stderr


@pytest.mark.parametrize(("data", "extra", "needle"), [
    ("four", [], "label 3 (of 4 classes or more) but build has 3 outputs"),
    ("flat", [], "no labels"),
    ("three", ["--data-root", "."], "--data-root: only for --dataset fmnist / mnist"),
    ("three", ["--test-data", "nowhere"], "nowhere"),
])
def test_bad_training_data_is_one_line(user: dict[str, Path], tmp_path: Path, data: str, extra: list[str],
                                       needle: str) -> None:
    out = tmp_path / "q"
    r = _mixq("qat", "--model", f"{user['net']}:build", "--dataset", str(user[data]), *extra, "--epochs", "1",
              "--quiet", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (out / "model.pt").exists()


def test_labelled_npz_and_split(tmp_path: Path) -> None:
    """An .npz of inputs and labels trains a 1x28x28 model as the idx files do; the held-out tenth is seeded."""
    from mixq.tasks.training import labelled_data

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (30, 28, 28), dtype=np.uint8),
             y=rng.integers(0, 10, 30))
    a = labelled_data(str(tmp_path / "d.npz"), (1, 28, 28))
    b = labelled_data(str(tmp_path / "d.npz"), (1, 28, 28), max_train=10)
    assert a[0][0].shape == (27, 1, 28, 28) and a[1][0].shape == (3, 1, 28, 28)
    assert torch.equal(a[1][0], b[1][0]) and torch.equal(a[0][0][:10], b[0][0])
    t = labelled_data(str(tmp_path / "d.npz"), (1, 28, 28), test=str(tmp_path / "d.npz"))
    assert t[0][0].shape[0] == t[1][0].shape[0] == 30


def test_the_gray_datasets_take_the_models_own_normalisation() -> None:
    """`--dataset fmnist / mnist` normalise with --mean / --std (ccexam's MNIST CNN, trained on
    (x - 0.1307) / 0.3081, lost a point before any quantization under mixq's Fashion-MNIST preset: 98.05 vs
    99.05% on the MNIST test set); --input-size / --grayscale do not apply to them and are refused by name."""
    from mixq.data import load_fmnist_subset
    from mixq.errors import OptionError
    from mixq.tasks.training import ImageOptions, labelled_data

    (xtr, _), (xte, yte), pre = labelled_data("fmnist", (1, 28, 28), max_train=4, max_test=6,
                                             image=ImageOptions(mean=(0.5,), std=(0.25,)))
    raw, labels = load_fmnist_subset()  # the first 2000 test images, in order
    want = (torch.as_tensor(np.asarray(raw[:6]), dtype=torch.float32) / 255.0 - 0.5) / 0.25
    assert torch.equal(xte[:, 0], want) and torch.equal(yte, torch.as_tensor(labels[:6], dtype=torch.int64))
    assert pre is not None and pre.mean == (0.5,) and pre.std == (0.25,) and xtr.shape == (4, 1, 28, 28)
    default = labelled_data("fmnist", (1, 28, 28), max_train=4, max_test=6)
    assert not torch.equal(default[1][0], xte) and default[2] is not None and default[2].mean == (0.286,)
    for image, flag in ((ImageOptions(size=(32, 32)), "--input-size"), (ImageOptions(gray=True), "--grayscale")):
        with pytest.raises(OptionError, match=f"^{flag}.*--dataset fmnist is 28x28 gray"):
            labelled_data("fmnist", (1, 28, 28), max_train=4, max_test=4, image=image)
