"""The ``device`` of the one training loop: ``cpu`` (default, bit-identical to a run that names no device),
``cuda`` / ``cuda:N`` refused at the door on a machine without CUDA (config, library and CLI: one error line,
no traceback), malformed device strings refused by the parser (exit 2); checkpoints hold CPU tensors and a
GPU-made checkpoint resumes on the CPU. The tests marked ``cuda`` run only where ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from mixq.algorithms.qat import QatConfig, QatError, low_bit_plan, read_checkpoint, train_qat
from mixq.algorithms.qat.checkpoint import check_config
from mixq.data import load_fmnist_subset, normalize_gray
from mixq.formats import parse_format
from mixq.training import Checkpointing, TrainConfig, TrainError, accuracy, device_problem, fit
from mixq.training.checkpoint import to_cpu

pytestmark = pytest.mark.usefixtures("one_thread")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")
MIXQ = [sys.executable, "-m", "mixq.cli"]
CFG = TrainConfig(epochs=2, batch_size=32, lr=0.05, weight_decay=1e-4, seed=3, threads=1, progress=False,
                  checkpoint_every=3, warmup_steps=2)
QCFG = QatConfig(epochs=1, batch_size=32, lr=0.02, progress=False, threads=1, calib_images=64)


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(8 * 7 * 7, 10))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fmnist_subset()
    return normalize_gray(x[:256]), torch.as_tensor(y[:256], dtype=torch.int64)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -- the config: device values ------------------------------------------------------------------------

def test_cpu_is_the_default_and_reaches_the_loop() -> None:
    assert TrainConfig().device == "cpu" and QatConfig().device == "cpu"
    assert QatConfig(device="cpu").train_config() == QatConfig().train_config()
    assert device_problem("cpu") is None


@pytest.mark.parametrize("bad", ["gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda0", " cpu", "", "mps", 0, None])
def test_a_malformed_device_is_one_error_naming_the_field(bad: object) -> None:
    with pytest.raises(TrainError, match=r"TrainConfig\.device: must be 'cpu', 'cuda' or 'cuda:N'"):
        TrainConfig(device=bad)  # type: ignore[arg-type]
    with pytest.raises(QatError, match=r"QatConfig\.device: must be 'cpu', 'cuda' or 'cuda:N'"):
        QatConfig(device=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("dev", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_error_naming_the_field(dev: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_cuda(monkeypatch)
    msg = r"no CUDA device \(torch.cuda.is_available\(\) is False\)"
    with pytest.raises(TrainError, match=rf"TrainConfig\.device: {msg}, got '{dev}'"):
        TrainConfig(device=dev)
    with pytest.raises(QatError, match=rf"QatConfig\.device: {msg}"):
        QatConfig(device=dev)


def test_a_device_index_past_the_last_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_problem("cuda:1") is None and device_problem("cuda") is None
    assert device_problem("cuda:2") == "no CUDA device 2 (torch.cuda.device_count() is 2)"


def test_device_does_not_change_the_trajectory_and_a_gpu_checkpoint_config_is_read_anywhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_cuda(monkeypatch)
    saved = {**QCFG.to_dict(), "device": "cuda:1"}  # written on a GPU machine
    check_config(QCFG)(tmp_path / "checkpoint.pt", saved)  # no error: the device is not the trajectory
    assert "device" not in QCFG.trajectory_diff(dataclasses.replace(QCFG, threads=2))
    old = {k: v for k, v in QCFG.to_dict().items() if k != "device"}  # a config from before the field
    assert QatConfig.from_dict(old) == QCFG
    with pytest.raises(QatError, match="lr"):
        check_config(QCFG)(tmp_path / "checkpoint.pt", {**saved, "lr": 0.5})


# -- the loop on the CPU --------------------------------------------------------------------------------

def test_explicit_cpu_is_bit_identical_to_the_default(data: tuple[torch.Tensor, torch.Tensor],
                                                      tmp_path: Path) -> None:
    x, y = data
    a, b = tiny(), tiny()
    ra = fit(a, x, y, CFG, val=(x, y))
    rb = fit(b, x, y, dataclasses.replace(CFG, device="cpu"), val=(x, y))
    assert _same(a, b)
    assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]
    assert [h["val_accuracy"] for h in ra.history] == [h["val_accuracy"] for h in rb.history]
    assert ra.history[-1]["train_loss"] < ra.history[0]["train_loss"]
    assert all(p.device.type == "cpu" for p in b.parameters())


def test_qat_with_explicit_cpu_is_bit_identical(data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    x, y = data
    model = tiny().eval()
    plan = low_bit_plan("tiny", model, x[:16], parse_format("fixed4n"), parse_format("ufixed4"))
    cfg = dataclasses.replace(QCFG, grad_bits=8)  # gradient noise: the generator on the device
    r1 = train_qat(model, plan, (x, y), cfg, tmp_path / "a")
    r2 = train_qat(model, plan, (x, y), dataclasses.replace(cfg, device="cpu"), tmp_path / "b")
    assert _same(r1.model, r2.model)
    assert r1.summary["history"][0]["train_loss"] == r2.summary["history"][0]["train_loss"]


def test_checkpoints_hold_cpu_tensors_and_keep_the_state_dict_metadata(
        data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    x, y = data
    path = tmp_path / "checkpoint.pt"
    fit(tiny(), x, y, CFG, checkpoint=Checkpointing(path=path, config=dataclasses.asdict(CFG)))
    obj = read_checkpoint(path)
    tensors = list(obj["model"].values()) + [t for s in obj["optimizer"]["state"].values() for t in s.values()
                                             if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert "cuda" not in obj["rng"]  # a CPU run records no CUDA RNG state
    sd = tiny().state_dict()
    moved = to_cpu(sd)
    assert isinstance(moved, OrderedDict) and moved._metadata == sd._metadata  # type: ignore[attr-defined]
    assert to_cpu({"a": [torch.ones(1), (torch.zeros(1), 3)]})["a"][1][1] == 3


# -- the command line: through real processes -----------------------------------------------------------

def _run(args: list[str], cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(MIXQ + args, cwd=cwd, capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.parametrize("cmd", [["qat"], ["prune"], ["train"]])
@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:"])
def test_a_malformed_device_is_a_usage_error(cmd: list[str], bad: str, tmp_path: Path) -> None:
    r = _run([*cmd, "--device", bad, "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--device" in r.stderr and "cpu, cuda or cuda:N" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("cmd", [["qat"], ["prune"], ["train"]])
def test_cuda_without_cuda_is_one_line_exit_1(cmd: list[str], tmp_path: Path) -> None:
    r = _run([*cmd, "--device", "cuda", "--out", str(tmp_path / "o")], tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--device cuda: no CUDA device (torch.cuda.is_available() is False)" in lines[0]


# -- on a GPU (skipped without one) ---------------------------------------------------------------------

@needs_cuda
def test_cuda_training_learns_and_returns_a_cpu_model(data: tuple[torch.Tensor, torch.Tensor],
                                                       tmp_path: Path) -> None:
    x, y = data
    model = tiny()
    teacher = tiny().eval()
    path = tmp_path / "checkpoint.pt"
    cfg = dataclasses.replace(CFG, epochs=3, device="cuda", kd_alpha=0.3)
    res = fit(model, x, y, cfg, teacher=teacher, val=(x, y),
              masks={"5.weight": (torch.rand(10, 8 * 7 * 7) > 0.5).float()},
              checkpoint=Checkpointing(path=path, config=dataclasses.asdict(cfg)))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    assert all(p.device.type == "cpu" for p in teacher.parameters())  # the caller's teacher stays put
    assert abs(accuracy(model, x, y) - res.history[-1]["val_accuracy"]) <= 2.0  # CPU eval ~ the GPU's
    obj = read_checkpoint(path)
    assert all(t.device.type == "cpu" for t in obj["model"].values()) and "cuda" in obj["rng"]
    # the GPU checkpoint resumes on the CPU (one more epoch)
    more = dataclasses.replace(cfg, epochs=4, device="cpu")
    res2 = fit(model, x, y, more, teacher=teacher,
               checkpoint=Checkpointing(path=path, config=dataclasses.asdict(more), resume=True))
    assert res2.resumed_from == {"epoch": 3, "step": 0, "global_step": 24} and len(res2.history) == 4


@needs_cuda
def test_qat_on_cuda_with_gradient_noise_and_ste_mse_weights(data: tuple[torch.Tensor, torch.Tensor],
                                                             tmp_path: Path) -> None:
    x, y = data
    model = tiny().eval()
    fixed = low_bit_plan("tiny", model, x[:16], parse_format("fixed4n"), parse_format("ufixed4"))
    msq = low_bit_plan("tiny", model, x[:16], parse_format("fixed4n"), parse_format("ufixed4"),
                       weight_alt=parse_format("sp2_4"), alt_ratio=0.5)
    runs = ((msq, dataclasses.replace(QCFG, device="cuda", grad_bits=8, kd_alpha=0.5, epochs=3)),
            (msq, dataclasses.replace(QCFG, device="cuda", weight_quant="ste", bn="train")),
            (fixed, dataclasses.replace(QCFG, device="cuda", weight_quant="dorefa", act_quant="dorefa")))
    for plan, cfg in runs:
        res = train_qat(model, plan, (x, y), cfg, tmp_path / cfg.weight_quant, val=(x, y))
        assert all(t.device.type == "cpu" for t in res.model.state_dict().values())
        losses = [h["train_loss"] for h in res.summary["history"]]
        assert all(torch.isfinite(torch.tensor(losses))), losses
        if cfg.epochs > 1:
            assert losses[-1] < losses[0], losses
