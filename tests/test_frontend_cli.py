"""The front end through the command line: a user's encoder-decoder (transposed conv, concat skip,
PixelShuffle, upsample, sigmoid) captured with its support column, quantized to an artifact, and the
artifact estimated and searched (`search --from`) without re-calibration."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixq.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.e1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.pool = nn.MaxPool2d(2)
            self.e2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
            self.up = nn.ConvTranspose2d(16, 8, 2, 2)
            self.d1 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
            self.ps = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))
            self.out = nn.Conv2d(3, 10, 3, stride=2, padding=1)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(self.pool(a))
            c = self.d1(torch.cat([a, self.up(b)], 1))
            return self.head(self.out(self.ps(c)))


    def build():
        torch.manual_seed(0)
        return Net()


    build.input_shape = (3, 32, 32)


    def gated():
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 4, 3, padding=1)

        class Gate(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = conv

            def forward(self, x):
                y = self.conv(x)
                return torch.flatten(y - y, 1)

        return Gate()


    gated.input_shape = (3, 8, 8)
''')


@pytest.fixture()
def unet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unet.py").write_text(UNET)
    return tmp_path


def test_capture_prints_every_node_with_its_support(unet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "unet.py:build", "--out", "c"]) == 0
    text = capsys.readouterr().out
    assert "up_zeros" in text and "zero_insert" in text and "pixel_shuffle" in text and "all ok" in text
    layers = json.loads((unet / "c" / "layers.json").read_text())
    assert {d["name"]: d["kind"] for d in layers}["up"] == "conv"
    assert main(["capture", "unet.py:gated", "--out", "g"]) == 0
    text = capsys.readouterr().out
    assert "no quantize/engine/export/estimate" in text and "1 unsupported" in text


def test_quantize_then_estimate_and_search_from_the_artifact(unet: Path) -> None:
    assert main(["quantize", "unet.py:build", "--calib", "photos", "--images", "32", "--out", "q"]) == 0
    plan = json.loads((unet / "q" / "plan.json").read_text())
    assert {"e1.0", "e2.0", "up", "d1.0", "ps.0", "out"} <= set(plan["layers"])
    assert main(["estimate", "--from", "q", "--out", "es"]) == 0
    # --eval the calibration source: the plans are judged on its other images, never on calibration ones
    # (they were: the first 16 photo crops calibrated and were 16 of the 32 judged)
    from mixq.tasks.search import artifact_task

    _, _, calib, ev = artifact_task(unet / "q", 16, 32, "photos")
    same = (calib[:, None] == ev.x[None]).flatten(2).all(2)  # type: ignore[attr-defined]
    assert len(ev.x) == 32 and not bool(same.any())  # type: ignore[attr-defined]
    # search from the artifact: its model, calibration source and preprocessing, judged on unused photos
    r = subprocess.run([sys.executable, "-m", "mixq", "search", "--from", "q", "--points", "1", "--executor",
                        "serial", "--calib-images", "16", "--eval-images", "16", "--max-drop", "50", "--out", "s"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    chosen = json.loads((unet / "s" / "plan.json").read_text())
    assert set(chosen["layers"]) == set(plan["layers"])
    # the candidates were judged under the artifact's own recipe (quantize's default, minmax), not plan's
    assert json.loads((unet / "s" / "pareto.json").read_text())["config"]["recipe"] == "minmax"
    # usage: exactly one of MODEL / --from; --eval only with --from
    r = subprocess.run([sys.executable, "-m", "mixq", "search", "cnv", "--from", "q"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "not both" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "mixq", "search", "cnv", "--eval", "photos"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "--eval goes with --from" in r.stderr


def test_a_search_from_an_artifact_judges_with_its_recipe(tmp_path: Path) -> None:
    """`search --from` without --recipe takes the artifact's recipe by name; one it does not know (or none) is
    plan; overrides the artifact was made with are reported (the CLI says so), since candidates do not get them."""
    from mixq.algorithms.ptq import get_recipe
    from mixq.tasks.search import artifact_recipe

    def made_with(recipe: object) -> Path:
        (tmp_path / "summary.json").write_text(json.dumps({"recipe": recipe}))
        return tmp_path

    dfq = json.loads(json.dumps(get_recipe("dfq").to_dict()))
    assert artifact_recipe(made_with(dfq)) == ("dfq", False)
    assert artifact_recipe(made_with({**dfq, "bias_passes": 3})) == ("dfq", True)
    assert artifact_recipe(made_with({**dfq, "version": 99})) == ("dfq", False)
    assert artifact_recipe(made_with({"name": "nope"})) == ("plan", False)
    assert artifact_recipe(made_with("dfq")) == ("plan", False)
    (tmp_path / "summary.json").unlink()
    assert artifact_recipe(tmp_path) == ("plan", False)
