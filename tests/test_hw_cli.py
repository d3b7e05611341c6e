"""`mixq estimate` and `mixq calibrate-hw` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixq.cli import main


def test_estimate_streaming_default_plan(tmp_path: Path) -> None:
    assert main(["estimate", "cnv", "--part", "xc7z020", "--out", str(tmp_path), "--save-plan"]) == 0
    d = json.loads((tmp_path / "estimate.json").read_text())
    folded = json.loads((tmp_path / "plan.json").read_text())
    first = next(ly for ly in d["layers"] if ly["macs"] > 0)
    assert folded["layers"][first["name"]]["mapping"]["pe"] == first["pe"]
    assert d["fits"] and d["fps"] > 0 and d["arch"] == "streaming"
    assert d["bottleneck"] and d["peak_macs_per_s"] > 0 and 0 < d["utilization"]["lut"] < 1
    assert {ly["name"] for ly in d["layers"]} >= {"features.0", "classifier.0"} or d["layers"]


def test_estimate_overlay_with_a_plan_file(tmp_path: Path) -> None:
    from mixq import zoo
    from mixq.formats import FixedPoint, SumOfPowers
    from mixq.graph.capture import capture
    from mixq.plan import save_plan, uniform_plan

    specs = capture(zoo.load("cnv"), zoo.input_shape("cnv"))
    names = [s.name for s in specs if s.is_compute]
    plan = uniform_plan("cnv", names, FixedPoint(4), FixedPoint(4, signed=False),
                        weight_alt=SumOfPowers(4), alt_ratio=0.5)
    save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "o"
    assert main(["estimate", "cnv", "--plan", str(tmp_path / "plan.json"), "--arch", "overlay",
                 "--part", "xc7z045", "--out", str(out)]) == 0
    d = json.loads((out / "estimate.json").read_text())
    assert {c["core"] for c in d["cores"]} == {"dsp", "sp2"}


def test_estimate_that_does_not_fit_is_a_failed_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["estimate", "resnet18", "--part", "xc7z020", "--weight", "fixed8", "--act", "ufixed8",
               "--out", str(tmp_path)])
    assert rc == 3
    assert "does not fit" in capsys.readouterr().err
    d = json.loads((tmp_path / "estimate.json").read_text())  # the JSON is written anyway, with the overflow
    assert not d["fits"] and any(o["resource"] == "bram" and o["excess"] > 0 for o in d["overflows"])


def test_unknown_part_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "cnv", "--part", "xc0000", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "xc0000" in err[0]


def test_calibrate_refit_from_stored_records(tmp_path: Path) -> None:
    rc = main(["calibrate-hw", "--refit", "--out", str(tmp_path), "--golden", str(tmp_path / "g"),
               "--table", str(tmp_path / "t.md")])
    assert rc == 0
    assert (tmp_path / "coefficients.json").exists() and (tmp_path / "t.md").exists()


def test_an_op_mixq_does_not_know_is_not_priced_as_free(tmp_path: Path) -> None:
    """A user's model with an op no stage knows (torch.roll): capture marks it, and `mixq estimate` exits 1 with
    one line naming the layer instead of estimating the network without it (a real process)."""
    import subprocess
    import sys

    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.c, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(512, 4)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.roll(torch.relu(self.c(x)), 1, dims=2).flatten(1))\n\n\n"
        "def build():\n    return Net()\n")
    r = subprocess.run([sys.executable, "-m", "mixq", "estimate", f"{tmp_path / 'net.py'}:build", "--input-shape",
                        "3,8,8", "--out", str(tmp_path / "e")], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1] == ("mixq: error: estimate: layer 'roll' (roll) is an op mixq does not know; the hardware "
                         "model cannot price it")
    assert not (tmp_path / "e" / "estimate.json").exists()
