"""The dw_act_equalize stage: per-channel ranges at a depthwise layer's input through row scales alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from mixq.algorithms.ptq import quantize_report
from mixq.algorithms.ptq.cle import ClippedReLU
from mixq.algorithms.ptq.dw_act import CLIP_RATIOS, MIN_SCALE, equalizing_scales, searched_clips
from mixq.engine import verify
from mixq.formats import FixedPoint
from mixq.graph import capture
from mixq.nn import QConv2d
from mixq.plan import uniform_plan
from mixq.quant import fake_quant


class _Net(nn.Module):
    """expand (ReLU6) -> depthwise (ReLU6) -> project, with channel ranges 100x apart after the expand."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            gains = torch.logspace(0, -2, 8)
            self.expand.weight.mul_(gains[:, None, None, None])
            self.expand.bias.mul_(gains)
            self.dw.weight.div_(gains[:, None, None, None])  # every channel matters as much downstream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.act2(self.dw(self.act1(self.expand(x)))))


def _setup() -> tuple[nn.Module, object, torch.Tensor]:
    torch.manual_seed(0)
    net = _Net().eval()
    names = [s.name for s in capture(net, (3, 10, 10)) if s.is_compute]
    plan = uniform_plan("net", names, FixedPoint(8, narrow=True), FixedPoint(4, signed=False), signed_inputs=names[:1])
    return net, plan, torch.randn(128, 3, 10, 10) * 2


def test_scales_equalize_to_the_widest_channel_within_bounds() -> None:
    s = equalizing_scales(torch.tensor([2.0, 0.5, 0.0, 1e-6], dtype=torch.float64))
    assert s.tolist() == [1.0, 0.25, 1.0, MIN_SCALE]


def test_the_function_is_unchanged_and_the_depthwise_input_is_equalized() -> None:
    net, plan, x = _setup()
    r = quantize_report(net, plan, x, "minmax", stages=("dw_act_equalize",))
    assert r.details["dw_act_equalize"]["pairs"] == 1  # expand -> dw; dw -> project sums over channels: left
    dw = r.model.get_submodule("dw")
    assert isinstance(dw, QConv2d)
    for m in r.model.modules():  # quantizers off: the float function through the equalized layers
        if hasattr(m, "input_quant"):
            m.input_quant.mode = "float"
    seen: list[torch.Tensor] = []
    h = dw.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        ref = net(x)
        d = float((r.model(x) - ref).abs().max())
    h.remove()
    ch = seen[0].abs().amax(dim=(0, 2, 3))
    assert float(ch.min() / ch.max()) > 0.97  # every channel at the widest one's range (was ~1e-2 of it)
    assert d < 0.05 * float(ref.abs().max())  # the original function, up to the 8-bit weights' rounding


def test_it_lowers_the_4bit_activation_error() -> None:
    net, plan, x = _setup()
    base = quantize_report(net, plan, x, "minmax")
    eq = quantize_report(net, plan, x, "minmax", stages=("dw_act_equalize",))
    with torch.no_grad():
        ref = net(x)
        e_base = float((base.model(x) - ref).pow(2).mean())
        e_eq = float((eq.model(x) - ref).pow(2).mean())
    assert e_eq < 0.5 * e_base, (e_eq, e_base)


def test_the_integer_engine_reproduces_the_equalized_model_exactly() -> None:
    net, plan, x = _setup()
    r = quantize_report(net, plan, x, "minmax", stages=("dw_act_equalize",))
    rep = verify(r.model, x[:16])
    assert rep["exact"] and rep["mismatching_outputs"] == 0


# ---------------------------------------------------------------------------------------------- dw_act_clip
def _heavy(n: int = 128) -> torch.Tensor:
    """Inputs whose expand outputs have rare large values (Student t, 2 degrees of freedom): clipping pays."""
    return torch.distributions.StudentT(2.0).sample((n, 3, 10, 10))


def test_searched_clips_take_each_channels_least_output_error() -> None:
    torch.manual_seed(1)
    dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    x = _heavy(16)[:, :1].repeat(1, 4, 1, 1).abs() * torch.tensor([1.0, 3.0, 0.5, 0.0]).view(1, 4, 1, 1)
    fmt = FixedPoint(4, signed=False)
    top = x.amax(dim=(0, 2, 3)).double()
    clips = searched_clips(dw, {"": fmt}, {"": top}, x, batch_size=8)[""]
    assert clips[3] == 0  # a channel that never fires has no range
    for c in range(3):  # brute force, one channel and one ratio at a time
        errs = []
        for r in CLIP_RATIOS:
            scale = torch.ones(4, dtype=torch.float64)
            scale[c] = float(top[c]) * r / 15.0
            d = torch.zeros_like(x)
            d[:, c] = fake_quant(x[:, c], fmt, float(scale[c])) - x[:, c]
            with torch.no_grad():
                errs.append(float((dw(d)[:, c].double() ** 2).sum()))
        best = min(errs)
        chosen = round(float(clips[c] / top[c]), 6)
        j = [round(r, 6) for r in CLIP_RATIOS].index(chosen)
        assert errs[j] <= best * (1 + 1e-6), (c, chosen, errs[j], best)
        assert errs[j] <= errs[-1]  # never worse than the channel's own max (r = 1)


def test_clip_stage_clips_every_channel_at_one_bound_and_runs_exactly_in_integers() -> None:
    net, plan, _ = _setup()
    x = _heavy()
    r = quantize_report(net, plan, x, "minmax", stages=("dw_act_clip",))
    det = r.details["dw_act_clip"]
    assert det["pairs"] == 1 and set(det["clip"]) == {"dw"}
    relu = [m for m in r.model.modules() if isinstance(m, ClippedReLU)]
    assert len(relu) == 1
    assert torch.allclose(relu[0].upper, torch.full_like(relu[0].upper, det["clip"]["dw"]), rtol=1e-4)
    rep = verify(r.model, x[:16])
    assert rep["exact"] and rep["mismatching_outputs"] == 0


def test_clip_stage_lowers_the_depthwise_output_error_below_minmax_and_equalizing() -> None:
    net, plan, _ = _setup()
    x = _heavy()
    seen: list[torch.Tensor] = []

    def dw_out(model: nn.Module) -> torch.Tensor:
        h = model.get_submodule("dw").register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        with torch.no_grad():
            model(x)
        h.remove()
        return seen.pop()

    ref = dw_out(net)
    errs = {}
    for stages in ((), ("dw_act_equalize",), ("dw_act_clip",)):
        q = quantize_report(net, plan, x, "minmax", stages=stages).model
        for name, m in q.named_modules():  # only the depthwise input quantized (its weights at 8 bits)
            if hasattr(m, "input_quant") and name != "dw":
                m.input_quant.mode = "float"
        errs[stages] = float((dw_out(q) - ref).pow(2).mean())
    assert errs[("dw_act_clip",)] < 0.9 * errs[("dw_act_equalize",)] < 0.9 * 0.8 * errs[()], errs


def test_clip_search_sees_the_width_first_act_8bit_plans() -> None:
    net, plan, _ = _setup()
    x = _heavy()
    c4 = quantize_report(net, plan, x, "minmax", stages=("dw_act_clip",)).details["dw_act_clip"]["clip"]["dw"]
    c8 = quantize_report(net, plan, x, "minmax", stages=("first_act_8bit", "dw_act_clip")
                         ).details["dw_act_clip"]["clip"]["dw"]
    assert c8 > c4  # 8-bit steps are fine enough to keep more of the tail


_BUILDER = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
'''


def test_cli_stage_reaches_the_recipe_and_the_artifact_verifies(tmp_path: Path) -> None:
    """``mixq quantize --stage`` through a real process: added to the recipe's own stages, in summary.json,
    and the artifact runs bit-exactly in the integer engine; a bad name is a usage error naming the option."""
    (tmp_path / "net.py").write_text(_BUILDER)
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "mixq", "quantize", f"{tmp_path / 'net.py'}:build", "--input-shape", "3,16,16",
           "--calib", "photos", "--images", "16", "--recipe", "minmax_pct", "--stage", "dw_act_clip",
           "--stage", "first_act_8bit", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"]["stages"] == ["act_percentile", "dw_act_clip", "first_act_8bit"]
    v = subprocess.run([sys.executable, "-m", "mixq", "verify", "--from", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert v.returncode == 0, v.stderr[-2000:]
    bad = subprocess.run([*cmd[:-2], "--stage", "dw_clip", "--out", str(tmp_path / "b")], capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 2 and "--stage" in bad.stderr and "dw_clip" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "b").exists()


def test_the_cli_offers_every_extra_stage() -> None:
    from mixq.algorithms.ptq.pipeline import EXTRA_STAGES
    from mixq.cli.quantize import STAGES  # kept torch-free for --help; must not drift

    assert tuple(EXTRA_STAGES) == STAGES
