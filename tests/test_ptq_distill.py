"""Network-wise distillation (stage ``distill``): the prediction's KL falls, the model keeps exactly what was
learned, a run that does not help leaves the network as it came, residual streams stay tied and the integer
engine stays bit-exact."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixq import api
from mixq.algorithms.ptq import DistillConfig, quantize_report
from mixq.engine import verify
from mixq.engine.convert import to_integer
from mixq.errors import MixqError
from mixq.formats import FixedPoint, parse_format
from mixq.graph import capture
from mixq.graph.residual import ATTR
from mixq.plan import uniform_plan


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(torch.relu(self.stem(x))))
        return self.fc(x.flatten(1))


def _setup() -> tuple[nn.Module, object, torch.Tensor]:
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        net.fc.weight.mul_(30)  # confident predictions, as a trained network's
    names = [s.name for s in capture(net, (3, 8, 8)) if s.is_compute]
    plan = uniform_plan("net", names, FixedPoint(3, narrow=True), FixedPoint(4, signed=False), signed_inputs=names[:1])
    return net, plan, torch.randn(96, 3, 8, 8)


def _kl(net: nn.Module, q: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.kl_div(q(x).log_softmax(1), net(x).log_softmax(1), log_target=True, reduction="batchmean"))


FAST = DistillConfig(steps=150, batch=16, images=64, lr=1e-2, bias_lr=1e-3)


def test_distillation_lowers_the_kl_and_the_model_is_what_was_learned() -> None:
    net, plan, x = _setup()
    start = quantize_report(net, plan, x, "gptq").model
    r = quantize_report(net, plan, x, "gptq", distill=FAST)
    rep = r.details["distill"]
    assert rep["kept"] == "tuned" and rep["loss_after"] < 0.8 * rep["loss_before"]
    assert rep["layers"] == 3 and rep["act_groups"] == 3 and rep["biases"] == 3 and rep["images"] == 128
    seen = torch.cat([x[:64], x[:64].flip(-1)])  # the stage's own loss is the returned model's (written back)
    assert _kl(net, start, seen) == pytest.approx(rep["loss_before"], rel=1e-4)
    assert _kl(net, r.model, seen) == pytest.approx(rep["loss_after"], rel=1e-4)
    held_out = torch.randn(512, 3, 8, 8)
    assert _kl(net, r.model, held_out) < _kl(net, start, held_out)
    assert all(p.requires_grad and p.grad is None for p in r.model.parameters())  # left as it found them


def test_a_run_that_does_not_help_keeps_the_network_as_it_came() -> None:
    net, plan, x = _setup()
    start = quantize_report(net, plan, x, "gptq").model
    r = quantize_report(net, plan, x, "gptq", distill=dataclasses.replace(FAST, steps=20, lr=5.0, bias_lr=50.0))
    assert r.details["distill"]["kept"] == "start"
    assert r.details["distill"]["loss_after"] > r.details["distill"]["loss_before"]
    with torch.no_grad():
        assert torch.equal(r.model(x), start(x))


class _ResNet(nn.Module):
    """stem, two residual blocks, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(2))
        self.b = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(2))
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for a, b in zip(self.a, self.b, strict=True):
            x = torch.relu(x + b(torch.relu(a(x))))
        return self.fc(x.flatten(1))


def test_residual_streams_stay_tied_and_the_engine_stays_bit_exact() -> None:
    torch.manual_seed(0)
    m = _ResNet().eval()
    with torch.no_grad():
        m.fc.weight.mul_(30)
    x = torch.randn(96, 3, 8, 8)
    plan = api.default_plan("net", m, x, weight=parse_format("fixed3"), act=parse_format("ufixed8"))
    plan = dataclasses.replace(plan, residual_bits=8)
    r = quantize_report(m, plan, x, "minmax", distill=FAST)
    assert r.details["distill"]["kept"] == "tuned"
    assert verify(r.model, x[:8])["exact"]
    im = to_integer(r.model, x[:1])
    streams = {n.name for n in im.nodes if n.name.startswith(ATTR + ".")}
    # a layer reading a stream at the stream's format takes its codes as they are: the steps moved together
    assert streams and not [n.name for n in im.nodes if n.op == "requant" and set(n.inputs) & streams]


@pytest.mark.parametrize(("field", "value"), [("steps", 0), ("lr", 0.0), ("temperature", -1.0), ("bias_lr", -1e-3)])
def test_bad_settings_name_their_field(field: str, value: float) -> None:
    with pytest.raises(MixqError, match=f"distill.{field}"):
        DistillConfig(**{field: value})
    with pytest.raises(MixqError, match="nothing to learn"):
        DistillConfig(weights=False, acts=False, bias_lr=0.0)


def test_cli_distill_runs_the_stage_and_refuses_a_negative_count(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--recipe", "gptq", "--distill", "40",
                        "--images", "64", "--out", str(tmp_path / "a")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "a" / "summary.json").read_text())["details"]["distill"]
    assert rep["images"] == 128 and rep["kept"] in ("tuned", "start")
    assert (rep["loss_after"] < rep["loss_before"]) == (rep["kept"] == "tuned")
    assert "--distill: KL to the float prediction" in r.stdout and "128 calibration images" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--distill", "-1", "--out",
                          str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--distill" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()
