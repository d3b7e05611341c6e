"""mixq.training: the one training loop (loss falls, exact resume, the zoo's stream order), the one
top-1 accuracy (percent), the one size rule (mixq.nn.size, also api.model_size_bytes) and the one safe
torch load/save (mixq.validate.read_torch / mixq.io.atomic_write_torch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mixq import api
from mixq.data import load_fmnist_subset, normalize_gray
from mixq.errors import DataError
from mixq.io import atomic_write_torch
from mixq.nn import QLinear
from mixq.nn.size import model_size_bytes, sparse_size_bytes
from mixq.training import (
    Checkpointing,
    Position,
    TrainConfig,
    TrainError,
    accuracy,
    augment_shift_flip,
    fit,
    top1_correct,
)
from mixq.validate import read_torch

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TrainConfig(epochs=2, batch_size=32, lr=0.05, weight_decay=1e-4, seed=3, threads=1, progress=False,
                  checkpoint_every=2, warmup_steps=2)


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(8 * 7 * 7, 10))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fmnist_subset()
    return normalize_gray(x[:256]), torch.as_tensor(y[:256], dtype=torch.int64)


def _ckpt(path: Path, resume: bool = False, on_save: object = None) -> Checkpointing:
    return Checkpointing(path=path, config=dataclasses.asdict(CFG), resume=resume, on_save=on_save)  # type: ignore[arg-type]


def test_a_tiny_model_learns_and_the_run_is_reproducible(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    model = tiny()
    before = accuracy(model, x, y)
    res = fit(model, x, y, dataclasses.replace(CFG, epochs=3), val=(x, y))
    losses = [h["train_loss"] for h in res.history]
    assert res.steps == 3 * (256 // 32) and not model.training
    assert losses[-1] < 0.8 * losses[0], losses
    assert res.history[-1]["val_accuracy"] == accuracy(model, x, y) > before + 20
    again = tiny()
    fit(again, x, y, dataclasses.replace(CFG, epochs=3))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))


def test_a_stopped_run_resumes_to_the_same_weights_bit_for_bit(tmp_path: Path,
                                                               data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    ref = tiny()
    fit(ref, x, y, CFG, checkpoint=_ckpt(tmp_path / "ref" / "checkpoint.pt"))

    class Stop(Exception):
        pass

    def stop_at_epoch1_step2(pos: Position) -> None:
        if (pos.epoch, pos.step) == (1, 2):
            raise Stop

    path = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(Stop):
        fit(tiny(), x, y, CFG, checkpoint=_ckpt(path, on_save=stop_at_epoch1_step2))
    resumed = tiny()
    res = fit(resumed, x, y, CFG, checkpoint=_ckpt(path, resume=True))
    assert res.resumed_from == {"epoch": 1, "step": 2, "global_step": 10}
    assert res.steps == 16
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = dataclasses.replace(CFG, lr=0.1)

    def check(p: Path, saved: dict[str, object]) -> None:
        if saved["lr"] != other.lr:
            raise TrainError(f"{p}: lr differs")

    with pytest.raises(TrainError, match="checkpoint.pt: lr differs"):
        fit(tiny(), x, y, other, checkpoint=Checkpointing(path=path, config={}, check_config=check, resume=True))


def test_stream_order_is_reproducible_not_resumable(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    cfg = dataclasses.replace(CFG, order="stream", schedule="absolute", drop_last=False, checkpoint_every=0)
    a, b = tiny(), tiny()
    ra = fit(a, x[:250], y[:250], cfg)
    fit(b, x[:250], y[:250], cfg)
    assert ra.steps == 2 * 8  # 7 full batches and the last of 26 images, per epoch
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    seeded = tiny()
    fit(seeded, x[:250], y[:250], dataclasses.replace(cfg, order="seeded"))
    assert not torch.equal(seeded[0].weight, a[0].weight)  # type: ignore[arg-type]
    with pytest.raises(TrainError, match=r"ZooConfig\.order: a checkpointed run must be 'seeded'"):
        fit(tiny(), x, y, cfg, checkpoint=_ckpt(tmp_path / "c.pt"), config_name="ZooConfig")
    with pytest.raises(TrainError, match=r"TrainConfig\.order: must be one of seeded, stream"):
        TrainConfig(order="random")


def test_accuracy_is_percent_of_correct_top1_and_keeps_the_mode() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    x = torch.eye(3)[[0, 1, 2, 0]]
    y = torch.tensor([0, 1, 2, 2])  # the last one is wrong
    model.train()
    assert top1_correct(model, x, y, batch_size=3) == 3
    assert accuracy(model, x, y, batch_size=3) == 75.0
    assert model.training
    assert accuracy(model, x[:0], y[:0]) == 0.0


def test_augmentation_shifts_in_the_fill_and_keeps_the_shape() -> None:
    x = torch.ones(64, 1, 6, 6)
    out = augment_shift_flip(x, torch.Generator().manual_seed(0), shift=2, fill=-5.0)
    assert out.shape == x.shape
    assert set(out.unique().tolist()) == {-5.0, 1.0}
    assert bool((out == 1.0).any(dim=(1, 2, 3)).all())  # every image keeps its centre
    flat = torch.randn(4, 10)
    assert augment_shift_flip(flat, torch.Generator()) is flat


def test_one_size_rule_dense_and_sparse() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    sample = torch.randn(16, 4)
    q = api.quantize(model, api.default_plan("mlp", model, sample), sample)
    # W8 per row + a 32-bit scale per row + 32-bit biases: (8*12 + 32*3 + 32*3) + (8*6 + 32*2 + 32*2) bits
    assert model_size_bytes(q) == api.model_size_bytes(q) == (288 + 176) // 8
    size = sparse_size_bytes(q)
    assert size["dense_bytes"] == 58 and size["bytes"] == 58 and not any(v["sparse"] for v in size["layers"].values())
    first = next(m for m in q.modules() if isinstance(m, QLinear))
    with torch.no_grad():
        first.weight[:, :3] = 0.0  # 3 of 4 weights of every row pruned
    size = sparse_size_bytes(q)
    layer = size["layers"]["0"]
    # sparse: 1 weight x 8 bits + a 4-bit bitmap + scale + bias per row
    assert layer["sparse"] and layer["sparse_bits"] == 3 * (8 + 4 + 32 + 32) < layer["dense_bits"] == 288
    assert size["bytes"] == (3 * 76 + 176 + 7) // 8 and size["dense_bytes"] == 58


def test_the_one_safe_load_and_save(tmp_path: Path) -> None:
    obj: dict[str, Any] = {"a": torch.arange(3), "nested": {"b": torch.ones(2)}}
    data = atomic_write_torch(tmp_path / "x.pt", obj)
    assert (tmp_path / "x.pt").read_bytes() == data and not list(tmp_path.glob("*.tmp"))
    back = read_torch(tmp_path / "x.pt")
    assert torch.equal(back["a"], obj["a"]) and torch.equal(back["nested"]["b"], obj["nested"]["b"])
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(TrainError, match=r"^bad checkpoint: not a readable checkpoint \(corrupt"):
        read_torch(tmp_path / "bad.pt", "bad checkpoint", what="readable checkpoint", error=TrainError)
    torch.save(nn.ReLU(), tmp_path / "module.pt")
    with pytest.raises(DataError, match=r"module.pt: not a PyTorch file \(it holds a pickled torch.nn"):
        read_torch(tmp_path / "module.pt")
    with pytest.raises(DataError, match="nothere.pt: file not found"):
        read_torch(tmp_path / "nothere.pt")
