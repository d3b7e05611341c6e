"""mixq.zoo.train: a tiny, reproducible training run on a data root written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mixq.data import load_fmnist_subset, write_idx
from mixq.errors import DataError, OptionError
from mixq.zoo.cnv import cnv, load_pretrained
from mixq.zoo.train import train_cnv


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An idx data root built from the shipped subset (train = test = its 2000 images)."""
    root = tmp_path_factory.mktemp("fmnist")
    x, y = load_fmnist_subset()
    for stem in ("train", "t10k"):
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y.astype("uint8"))
    return root


def test_smoke_training_is_reproducible(tmp_path: Path, data_root: Path) -> None:
    kw = {
        "epochs": 1,
        "seed": 5,
        "data_root": data_root,
        "progress": False,
        "max_train": 512,
        "max_test": 256,
    }
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    m1 = train_cnv(tmp_path / "a" / "w.pt", **kw)  # type: ignore[arg-type]
    m2 = train_cnv(tmp_path / "b" / "w.pt", **kw)  # type: ignore[arg-type]
    s1 = torch.load(tmp_path / "a" / "w.pt", weights_only=True)
    s2 = torch.load(tmp_path / "b" / "w.pt", weights_only=True)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert m1["weights_sha256"] == m2["weights_sha256"]

    meta = json.loads((tmp_path / "a" / "w.json").read_text())
    assert meta == json.loads(json.dumps(m1))
    assert meta["train_images"] == 512 and meta["test_images"] == 256 and meta["subset_images"] == 2000
    assert meta["command"] == f"mixq train --epochs 1 --seed 5 --out {tmp_path / 'a' / 'w.pt'} --data-root {data_root}"
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and meta["torch_version"] == torch.__version__
    assert not list((tmp_path / "a").glob("*.tmp"))  # atomic write left no temporary file

    model = load_pretrained(cnv(), tmp_path / "a" / "w.pt")  # the written file loads back
    assert not model.training
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (
        threads,
        det,
    )  # restored


def test_other_seed_gives_other_weights(tmp_path: Path, data_root: Path) -> None:
    kw = {"epochs": 1, "data_root": data_root, "progress": False, "max_train": 64, "max_test": 64}
    a = train_cnv(tmp_path / "a.pt", seed=0, **kw)  # type: ignore[arg-type]
    b = train_cnv(tmp_path / "b.pt", seed=1, **kw)  # type: ignore[arg-type]
    assert a["weights_sha256"] != b["weights_sha256"]


def test_missing_data_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nodata"):
        train_cnv(tmp_path / "w.pt", epochs=1, data_root=tmp_path / "nodata", progress=False)
    with pytest.raises(OptionError):
        train_cnv(tmp_path / "w.pt", epochs=0, data_root=tmp_path, progress=False)
