"""Ops outside networks use that the front end and the integer engine took wrongly or refused (found by
``benchmarks/pytorchcv_sweep.py --package monai`` and pytorchcv's FractalNet): each in a small model, bit-exact on
the integer engine, or refused in one line that says why."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixq import api
from mixq.engine import verify
from mixq.errors import HardwareError, ModelError
from mixq.formats import FixedPoint
from mixq.graph.capture import capture
from mixq.graph.normalize import normalize
from mixq.hw.estimate import estimate


def _exact(model: nn.Module, x: torch.Tensor, name: str) -> None:
    """``model`` quantized (W8A8 min-max) runs bit-exactly on the integer engine."""
    q = api.quantize(model, api.default_plan(name, model, x), x)
    rep = verify(q, x[:4])
    assert rep["exact"] and rep["mismatching_outputs"] == 0


def _stack_free(model: nn.Module, x: torch.Tensor) -> None:
    """The normalized model has no ``stack`` left and computes what ``model`` computes."""
    norm = normalize(model, tuple(x.shape[1:]))
    assert not any(getattr(n.target, "__name__", "") == "stack" for n in norm.graph.nodes)
    with torch.no_grad():
        assert torch.allclose(norm(x), model(x), atol=1e-6)


class Moves(nn.Module):
    """VNet's channel copies (``repeat``), HighResNet's channel pad with the batch dim listed, UpCat's "replicate"
    pad of nothing, a Dropout3d, and heads computed and dropped (BasicUNet++ without deep supervision)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 24, 1)
        self.drop = nn.Dropout3d(0.2)
        self.head_a = nn.Conv2d(24, 2, 1)
        self.head_b = nn.Conv2d(24, 2, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y.repeat(1, 4, 1, 1)))
        y = F.pad(y, [0, 0, 0, 0, 8, 8, 0, 0]) + torch.relu(self.c3(y))  # 24 channels: 8 zeros each side
        y = F.pad(self.drop(y), [0, 0, 0, 0], "replicate")
        a, b = self.head_a(y), self.head_b(y)
        return [b] if a is not None else [a]


def test_moves_of_monai_networks_run_bit_exact_and_dead_heads_are_gone() -> None:
    torch.manual_seed(0)
    model = Moves().eval()
    norm = normalize(model, (3, 12, 12))
    assert not hasattr(norm, "head_a")  # computed and dropped: not a layer of the plan
    x = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(norm(x), model(x)[0])  # the one tensor of the one-element list is the output
    _exact(model, x, "moves")
    assert [s.name for s in capture(model, (3, 12, 12)) if s.kind == "conv"] == ["c1", "c2", "c3", "head_b"]


def test_a_repeat_of_two_dims_is_refused_by_name() -> None:
    class Tile(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.c(x)).repeat(1, 2, 2, 1)

    torch.manual_seed(0)
    model, x = Tile().eval(), torch.rand(8, 3, 6, 6)
    q = api.quantize(model, api.default_plan("tile", model, x), x)
    with pytest.raises(ModelError, match=r"layer 'repeat'.*copies 2 dims; the engine repeats one"):
        verify(q, x[:2])


@pytest.mark.parametrize("norm", [nn.InstanceNorm2d(4, affine=True), nn.GroupNorm(2, 4)])
def test_per_image_norms_are_refused_with_the_reason_and_the_way_out(norm: nn.Module) -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(4, 2, 1)).eval(), \
        torch.rand(8, 3, 6, 6)
    q = api.quantize(model, api.default_plan("norm", model, x), x)
    with pytest.raises(ModelError, match=rf"layer '1' \({type(norm).__name__}\): not supported by the integer "
                                         r"engine \(it normalizes each image by its own mean and variance.*BatchNorm"):
        verify(q, x[:2])
    specs = capture(model, (3, 6, 6))
    with pytest.raises(HardwareError, match=r"layer '1'.*cannot price it \(it normalizes each image"):
        estimate(specs, api.default_plan("norm", model, x), "xc7z020")


def test_a_mean_of_stacked_branches_is_their_average_and_runs_bit_exact() -> None:
    """pytorchcv's FractalNet joins its columns by ``torch.stack(outs, 0).mean(0)``."""

    class Join(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cols = nn.ModuleList(nn.Conv2d(3, 4, 3, padding=1) for _ in range(3))
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.stack([torch.relu(c(x)) for c in self.cols], dim=0)
            assert out.size(0) == len(self.cols)
            return self.head(out.mean(dim=0))

    torch.manual_seed(0)
    model = Join().eval()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    _stack_free(model, x)
    _exact(model, x, "join")


def test_a_layer_the_forward_never_calls_is_one_calibration_error() -> None:
    from mixq.graph.convert import calibrate
    from mixq.nn import QAct

    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.spare = nn.Conv2d(3, 4, 3), QAct(FixedPoint(8, signed=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    model = Spare()
    with pytest.raises(ModelError, match=r"activation quantizer 'spare' saw no data"):
        calibrate(model, [torch.rand(2, 3, 6, 6)])


def test_a_one_slope_prelu_is_its_leaky_relu_and_a_per_channel_one_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(init=0.3), nn.Conv2d(4, 4, 1), nn.PReLU(4))
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    norm = normalize(model.eval(), (3, 6, 6))
    leaky = norm.get_submodule("1")
    assert type(leaky) is nn.LeakyReLU and leaky.negative_slope == pytest.approx(0.3)
    assert type(norm.get_submodule("3")) is nn.PReLU
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(norm(x), model(x))
    _exact(model[:3], x, "prelu")
    q4 = api.quantize(model, api.default_plan("prelu4", model, x), x)
    with pytest.raises(ModelError, match=r"layer '3' \(PReLU\): not supported by the integer engine"):
        verify(q4, x[:2])


def test_a_sum_of_a_maps_stacked_halves_is_their_add_and_runs_bit_exact() -> None:
    """MONAI's RegUNet / LocalNet upsampling: ``torch.sum(torch.stack(x.split(c // 2, 1), dim=-1), dim=-1)``."""

    class Halves(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(2, 8, 3, padding=1), nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.c1(x))
            y = torch.sum(torch.stack(y.split(split_size=y.shape[1] // 2, dim=1), dim=-1), dim=-1)
            return self.c2(y)

    torch.manual_seed(0)
    model = Halves().eval()
    x = torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    _stack_free(model, x)
    _exact(model, x, "halves")


def test_a_two_channel_model_takes_its_npz_inputs_as_they_are_through_the_cli(tmp_path: Path) -> None:
    src = tmp_path / "pair.py"
    src.write_text(textwrap.dedent('''
        import torch
        from torch import nn


        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))


        build.input_shape = (2, 16, 16)
        '''))
    data = tmp_path / "pairs.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((12, 2, 16, 16)).astype(np.float32))

    def mixq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mixq", *args], capture_output=True, text=True, timeout=300)

    bad = mixq("quantize", f"{src}:build", "--calib", "photos", "--out", str(tmp_path / "qb"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "takes an .npz file of (N, 2, 16, 16) float arrays (the bundled sets are images)" in bad.stderr
    r = mixq("quantize", f"{src}:build", "--calib", str(data), "--images", "8", "--out", str(tmp_path / "q"))
    assert r.returncode == 0, r.stderr
    v = mixq("verify", "--from", str(tmp_path / "q"), "--images", "4", "--out", str(tmp_path / "v"))
    assert v.returncode == 0, v.stderr
    rep = json.loads((tmp_path / "v" / "verify.json").read_text())
    assert rep["exact"] and rep["images"] == 4 and rep["total_outputs"] == 4 * 2 * 16 * 16


def test_a_cat_of_a_per_channel_sum_and_a_sum_of_two_tables_runs_bit_exact() -> None:
    """MONAI's UNet (PReLU, residual units): an add of two lookup-table outputs (one grid) concatenated with an add
    that has a conv's per-channel grid; the scalar grid was stored as a 1-element array and the cat took it for one
    channel (an internal error)."""

    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.ModuleList(nn.Conv2d(3, 4, 3, padding=1) for _ in range(4))
            self.act = nn.ModuleList(nn.PReLU() for _ in range(3))
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.act[0](self.c[0](x)) + self.act[1](self.c[1](x))
            t = self.act[2](self.c[2](x)) + self.c[3](x)
            return self.out(torch.cat([t, s], 1))

    torch.manual_seed(0)
    model = Cat().eval()
    _exact(model, torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(6)), "cat")


def test_a_mean_over_a_flattened_map_is_its_global_average_pool_and_runs_bit_exact() -> None:
    """A squeeze-excite block written ``x.view(b, c, -1).mean(-1)`` (the engine pools (C, H, W) maps only)."""

    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 8), nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x))
            b, c = y.shape[:2]
            s = torch.sigmoid(self.fc(y.view(b, c, -1).mean(-1)))
            return self.head(y * s.view(b, c, 1, 1))

    torch.manual_seed(0)
    model = SE().eval()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    norm = normalize(model, (3, 8, 8))
    means = [n for n in norm.graph.nodes if n.op == "call_method" and n.target == "mean"]
    assert [m.args[1] for m in means] == [(2, 3)]
    with torch.no_grad():
        assert torch.allclose(norm(x), model(x), atol=1e-6)
    _exact(model, x, "se")


def test_a_pad_of_nothing_goes_and_a_real_pad_stays() -> None:
    """MONAI's UpCat pads its skip to the upsampled size with ``F.pad(x, sp, "replicate")``, where ``sp`` is all 0
    at matching sizes (read from the shapes: concretely traced): the identity, which the RTL otherwise ran as a
    gather stage between two frame buffers. A real pad stays."""

    class Up(nn.Module):
        def __init__(self, extra: int) -> None:
            super().__init__()
            self.conv, self.conv2, self.extra = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 2, 1), extra

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x))
            sp = [0, 0, 0, 0]
            if y.shape[-1] % 2 == 1:  # a branch on a size: plain FX cannot trace it
                sp[1] = 1
            sp[3] = self.extra
            return torch.cat([F.pad(y, sp, "replicate"), F.pad(torch.relu(self.conv2(x)), [0, sp[1], 0, sp[3]])], 1)

    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for extra, left in ((0, 0), (1, 2)):
        model = Up(extra).eval()
        norm = normalize(model, (3, 8, 8))
        pads = [n for n in norm.graph.nodes if getattr(n.target, "__name__", "") == "pad"]
        assert len(pads) == left, [n.args for n in pads]
        with torch.no_grad():
            assert torch.allclose(norm(x), model(x), atol=1e-6)
    _exact(Up(0).eval(), x, "up")
