"""The ONNX model zoo's MNIST CNN (shipped in qonnx, a dependency of the onnx extra), as a user brings it: real
processes from capture to search. It writes each conv's bias as ``Conv`` + ``Add`` of a constant (the integer engine
refused it: `graph.normalize` folds it now) and takes raw 0-255 pixels, so its logits spread in the thousands (a
saturated softmax: every sensitivity was 0 and the search picked 2-bit layers; `search.sensitivity` takes its KLs at
a temperature now)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixq.data.sources import CALIB_PATH

pytestmark = pytest.mark.usefixtures("one_thread")

MIXQ = [sys.executable, "-m", "mixq"]


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MIXQ + args, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    spec = importlib.util.find_spec("qonnx")
    assert spec is not None and spec.origin is not None
    model = Path(spec.origin).parent / "data" / "onnx" / "mnist-conv" / "model.onnx"
    out = tmp_path_factory.mktemp("zoo_mnist")
    shutil.copy(CALIB_PATH, out / "calib.npz")  # a user's own .npz, given by a path relative to where they stand
    # raw 0-255 pixels: mean 0, std 1/255
    q = _run(["quantize", str(model), "--calib", "calib.npz", "--images", "64", "--mean", "0", "--std",
              "0.00392156862745098", "--out", "q"], cwd=out)
    assert q.returncode == 0, q.stderr
    recorded = json.loads((out / "q" / "summary.json").read_text())["calibration"]["source"]
    assert recorded == str((out / "calib.npz").resolve())  # so a later --from finds it from anywhere
    return model, out


def test_capture_and_verify(artifact: tuple[Path, Path]) -> None:
    """capture lists no add (the two biases are in the convs); the artifact runs on the integer engine exactly."""
    model, out = artifact
    cap = _run(["capture", str(model), "--out", str(out / "cap")])
    assert cap.returncode == 0, cap.stderr
    kinds = [row["kind"] for row in json.loads((out / "cap" / "layers.json").read_text())]
    assert kinds.count("conv") == 2 and "other" not in kinds, kinds
    v = _run(["verify", "--from", str(out / "q"), "--out", str(out / "v")])
    assert v.returncode == 0, v.stderr
    assert "EXACT" in v.stdout + v.stderr


def test_search_finds_a_plan_that_beats_uniform_w4a4(artifact: tuple[Path, Path]) -> None:
    """Run from another working directory than quantize (the artifact's relative --calib resolved when recorded).
    Judged by agreement with the float model on 512 held-out images (Fashion-MNIST pictures: out of this model's
    distribution, so even W8A8 agrees on 97.5%): the searched plan at uniform W4A4's frame rate agrees on 96%, W4A4
    on 75%, and it is chosen within 5 points. With every sensitivity 0 the plan at that rate agreed on 34%."""
    _, out = artifact
    s = _run(["search", "--from", str(out / "q"), "--points", "2", "--calib-images", "64", "--eval-images", "512",
              "--max-drop", "5", "--cache-dir", str(out / "cache"), "--out", str(out / "s")])
    assert s.returncode == 0, s.stderr
    assert "temperature" in s.stderr
    d = json.loads((out / "s" / "pareto.json").read_text())
    points = {p["label"]: p for p in d["points"]}
    w4 = points["uniform W4A4"]
    same_rate = [p for p in d["points"] if p["kind"] == "searched" and p["fps"] >= w4["fps"] * 0.999]
    assert same_rate and max(p["accuracy"] for p in same_rate) > w4["accuracy"] + 10, d["points"]
    chosen = d["chosen"]
    assert chosen["fps"] >= w4["fps"] * 0.999 and chosen["drop"] <= 5


def test_a_search_that_misses_its_bound_writes_its_points(artifact: tuple[Path, Path]) -> None:
    """No plan agrees within 0.001 points on these out-of-distribution pictures (W8A8: 97.5%): exit 3, one line
    naming pareto.json, which holds every evaluated point (`met` false), and no plan.json."""
    _, out = artifact
    s = _run(["search", "--from", str(out / "q"), "--points", "1", "--calib-images", "64", "--eval-images", "256",
              "--max-drop", "0.001", "--cache-dir", str(out / "cache"), "--out", str(out / "miss")])
    assert s.returncode == 3, s.stderr
    last = s.stderr.strip().splitlines()[-1]
    assert last.startswith("mixq: error: search: no searched plan stays within 0.001 points") and "pareto.json" in last
    d = json.loads((out / "miss" / "pareto.json").read_text())
    assert d["met"] is False and any(p["kind"] == "uniform" for p in d["points"])
    assert not (out / "miss" / "plan.json").exists()
