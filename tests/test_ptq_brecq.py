"""Block reconstruction (BRECQ + QDrop): blocks from the graph, lower block errors, weights on the grid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mixq.algorithms.ptq import BrecqConfig, find_blocks, get_recipe, quantize_report
from mixq.errors import MixqError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph import capture
from mixq.nn import QConv2d, QLinear
from mixq.plan import uniform_plan
from mixq.quant import fake_quant


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class _Net(nn.Module):
    """conv, a residual block, two convs in a row, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.res = _Res(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.res(x)
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.flatten(1))


def _setup(weight: object = None, alt: object = None, ratio: float = 0.0) -> tuple[nn.Module, object, torch.Tensor]:
    torch.manual_seed(0)
    net = _Net().eval()
    names = [s.name for s in capture(net, (3, 8, 8)) if s.is_compute]
    plan = uniform_plan("net", names, weight or FixedPoint(3, narrow=True), FixedPoint(4, signed=False),
                        signed_inputs=names[:1], weight_alt=alt, alt_ratio=ratio)
    return net, plan, torch.randn(96, 3, 8, 8)


FAST = BrecqConfig(iterations=150, batch=16, images=64, lr=1e-2)


def test_blocks_follow_the_graph() -> None:
    net, plan, x = _setup()
    q = quantize_report(net, plan, x, "plan").model
    blocks = [b.layers for b in find_blocks(q, max_layers=2)]
    # the stem alone (the residual block after it holds two layers already), the residual block whole,
    # the conv pair, the classifier
    assert blocks == [["stem"], ["res.a", "res.b"], ["c1", "c2"], ["fc"]]
    assert [b.layers for b in find_blocks(q, max_layers=1)] == [["stem"], ["res.a", "res.b"], ["c1"], ["c2"], ["fc"]]
    assert [b.layers for b in find_blocks(q, max_layers=3)] == [["stem", "res.a", "res.b"], ["c1", "c2", "fc"]]


@pytest.mark.parametrize("msq", [False, True], ids=["fixed", "msq"])
def test_reconstruction_lowers_every_block_error_and_lands_on_the_grid(msq: bool) -> None:
    alt = SumOfPowers(4) if msq else None
    net, plan, x = _setup(FixedPoint(4, narrow=True) if msq else None, alt, 0.5 if msq else 0.0)
    r = quantize_report(net, plan, x, "brecq", brecq=FAST)
    rep = r.details["brecq"]
    assert list(rep) == ["stem", "res.a", "c1", "fc"]
    for name, v in rep.items():  # never worse than the start; learned (and better) on the blocks that matter
        assert v["rec_after"] <= v["rec_before"], name
    assert all(v["kept"] == "learned" and v["rec_after"] < v["rec_before"] for v in list(rep.values())[:3])
    learned = {"stem": ["stem"], "res.a": ["res.a", "res.b"], "c1": ["c1", "c2"], "fc": ["fc"]}
    for block in (b for b, v in rep.items() if v["kept"] == "learned"):
        for name in learned[block]:  # a learned weight is one of its row format's levels times the row's scale
            m = r.model.get_submodule(name)
            w = m.weight.detach()
            assert torch.allclose(m.quantized_weight().detach(), w, rtol=0, atol=1e-6 * float(w.abs().max()))


def test_one_rounding_method_per_recipe() -> None:
    with pytest.raises(MixqError, match="recipe.gptq / recipe.brecq"):
        get_recipe("gptq", brecq=BrecqConfig())
    with pytest.raises(MixqError, match="brecq.drop"):
        BrecqConfig(drop=1.0)


def test_the_learned_steps_become_the_frozen_scales() -> None:
    net, plan, x = _setup()
    q0 = quantize_report(net, plan, x, "minmax", weight_scales="output").model
    q1 = quantize_report(net, plan, x, "brecq", brecq=FAST).model
    s0 = [m.input_quant.scale.item() for m in q0.modules() if isinstance(m, QConv2d | QLinear)]
    s1 = [m.input_quant.scale.item() for m in q1.modules() if isinstance(m, QConv2d | QLinear)]
    assert s0 != s1 and all(v > 0 for v in s1)
    a = next(m.input_quant for m in q1.modules() if isinstance(m, QConv2d))
    t = torch.rand(100) * 3
    assert torch.equal(a(t), fake_quant(t, a.fmt, a.scale))


def test_cli_device_is_for_block_reconstruction_only(tmp_path: Path) -> None:
    """``mixq quantize --device`` moves block reconstruction to a GPU; any other recipe refuses it, and a device the
    machine lacks is refused before any work, one line naming the option."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--recipe", "gptq", "--device", "cuda",
                        "--out", str(tmp_path / "a")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("mixq: error: --device cuda: only")
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--recipe", "brecq", "--device", "cuda",
                            "--out", str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 1 and "--device cuda: no CUDA device" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_reconstruction_on_the_gpu_lowers_every_block_error() -> None:
    net, plan, x = _setup()
    cfg = BrecqConfig(**{**FAST.__dict__, "device": "cuda"})
    rep = quantize_report(net, plan, x, "brecq", brecq=cfg).details["brecq"]
    assert all(v["rec_after"] <= v["rec_before"] for v in rep.values())
    assert next(net.parameters()).device.type == "cpu"
