"""A QAT run killed with SIGKILL (mid-epoch, twice) and resumed ends with the same weights, bit for bit,
as a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

# The run, as source: executed here for the reference and as a script for the killed runs.
RUN = '''
import sys, time
from pathlib import Path
import torch
from torch import nn
from mixq.algorithms.qat import QatConfig, low_bit_plan, train_qat
from mixq.data import load_fmnist_subset, normalize_gray
from mixq.formats import parse_format


def run(out, resume=False, pause=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Linear(144, 10)).eval()
    x, y = load_fmnist_subset()
    x, y = normalize_gray(x[:192]), torch.as_tensor(y[:192], dtype=torch.int64)
    plan = low_bit_plan("tiny", model, x[:16], parse_format("fixed4n"), parse_format("ufixed4"))
    cfg = QatConfig(epochs=2, batch_size=32, lr=0.02, checkpoint_every=2, threads=1, progress=False,
                    kd_alpha=0.5, grad_bits=8, bn="train", calib_images=64, seed=7)

    def hook(pos):
        print(f"ckpt {pos.epoch} {pos.step}", flush=True)
        time.sleep(pause)

    return train_qat(model, plan, (x, y), cfg, out, resume=resume, on_checkpoint=hook)


if __name__ == "__main__":
    run(Path(sys.argv[1]), resume=sys.argv[2] == "1", pause=float(sys.argv[3]))
    print("done", flush=True)
'''


def _kill_after(script: Path, out: Path, line: str, resume: bool, pause: float) -> list[str]:
    """Run the script until it prints ``line``, then SIGKILL it; returns what it printed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), str(out), "1" if resume else "0", str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for raw in proc.stdout:
            seen.append(raw.strip())
            if raw.strip() == line:
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "training script too slow"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert line in seen, (seen, proc.stderr.read() if proc.stderr else "")
    assert proc.returncode == -signal.SIGKILL
    return seen


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    ns: dict[str, object] = {"__name__": "qat_resume_reference"}
    exec(compile(RUN, "qat_resume_run", "exec"), ns)
    ref = ns["run"](tmp_path / "ref")  # type: ignore[operator]
    script = tmp_path / "run_qat.py"
    script.write_text(RUN)
    out = tmp_path / "killed"
    # 1st kill: while the process pauses right after a mid-epoch checkpoint of epoch 0 (step 4 of 6)
    _kill_after(script, out, "ckpt 0 4", resume=False, pause=0.5)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ck["position"]["epoch"], ck["position"]["step"]) == (0, 4)
    # 2nd kill: the resumed run, at whatever it is doing just after the epoch-1 mid-epoch checkpoint
    seen = _kill_after(script, out, "ckpt 1 2", resume=True, pause=0.0)
    assert seen[0] == "ckpt 1 0"  # it continued from step 4 of epoch 0 to the end of the epoch
    assert not (out / "model.pt").exists()
    # resume to the end, in this process
    res = ns["run"](out, resume=True)  # type: ignore[operator]
    assert res.summary["resumed_from"]["global_step"] >= 8  # type: ignore[attr-defined]
    assert res.summary["steps"] == ref.summary["steps"] == 12  # type: ignore[attr-defined]
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert res.summary["history"] == ref.summary["history"] or all(  # type: ignore[attr-defined]
        {k: v for k, v in h1.items() if k != "train_time_s"} == {k: v for k, v in h2.items() if k != "train_time_s"}
        for h1, h2 in zip(res.summary["history"], ref.summary["history"], strict=True))  # type: ignore[attr-defined]


def test_checkpoint_position_is_exact(tmp_path: Path) -> None:
    """The checkpoint holds the RNG states and the position inside the epoch."""
    ns: dict[str, object] = {"__name__": "qat_resume_reference"}
    exec(compile(RUN, "qat_resume_run", "exec"), ns)
    ns["run"](tmp_path / "r")  # type: ignore[operator]
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["position"]["epoch"] == 2 and ck["position"]["step"] == 0 and ck["position"]["global_step"] == 12
    assert set(ck["rng"]) == {"torch", "numpy", "python"}
    assert {"model", "optimizer", "scheduler", "config"} <= set(ck)
