"""Every model source kind through the whole command line: one small network holding the op set of the
front end (asymmetric padding; strided, depthwise, grouped-dilated conv; ConvTranspose2d; BatchNorm;
ReLU6, LeakyReLU, Hardtanh, Hardswish, SiLU, Sigmoid; max / average / adaptive-average pooling;
residual add; concat; PixelShuffle; nearest and bilinear upsampling; flatten; Linear), given as a
Python builder with a weights file, an ONNX file, a TorchScript file and a torch.export (.pt2) file.
Each goes quantize -> verify --from (bit-exact) -> export --from --check (QONNX executor and
onnxruntime) -> estimate --from."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mixq.cli import main
from mixq.zoo.source import ModelSource

pytestmark = pytest.mark.usefixtures("one_thread")

NET = textwrap.dedent('''
    import torch
    from torch import nn


    class AllOps(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(3, 16, 4), nn.BatchNorm2d(16), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16),
                                    nn.LeakyReLU(0.1))
            self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4), nn.ReLU())
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Hardswish())
            self.pool = nn.MaxPool2d(2)
            self.mid = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.SiLU())
            self.avg = nn.AvgPool2d(2)
            self.up = nn.ConvTranspose2d(32, 32, 2, 2)
            self.bil = nn.Upsample(scale_factor=2, mode="bilinear")
            self.near = nn.Upsample(scale_factor=2, mode="nearest")
            self.gate = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3), nn.Sigmoid())
            self.fuse = nn.Sequential(nn.Conv2d(64, 32, 1), nn.Hardtanh(-2.0, 2.0))
            self.ps = nn.PixelShuffle(2)
            self.head = nn.Sequential(nn.Conv2d(8, 10, 3, stride=2, padding=1), nn.Sigmoid(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 10))

        def forward(self, x):
            s = self.stem(x)
            r = s + self.dw(s)
            d = self.down(self.grouped(r))
            d = d * self.gate(torch.cat([d.mean(1, keepdim=True), d.amax(1, keepdim=True)], 1))  # spatial attention
            a = self.avg(self.mid(self.pool(d)))
            u = self.near(self.up(a) + self.bil(a))
            return self.head(self.ps(self.fuse(torch.cat([d, u], 1))))


    def build():
        torch.manual_seed(0)
        return AllOps()


    build.input_shape = (3, 32, 32)


    class Signal(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.ConstantPad1d((2, 3), 0.0), nn.Conv1d(2, 16, 6), nn.BatchNorm1d(16), nn.ReLU(),
                                      nn.MaxPool1d(2), nn.Conv1d(16, 16, 3, padding=1, groups=4), nn.ReLU(),
                                      nn.Conv1d(16, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.flatten(self.body(x), 1))


    def signal():
        torch.manual_seed(0)
        return Signal()


    signal.input_shape = (2, 64)
''')


def _files(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "allops.py").write_text(NET)
    model = ModelSource(f"{tmp_path / 'allops.py'}:build").load(pretrained=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking BN statistics, so folding is not a no-op
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    torch.save(model.state_dict(), tmp_path / "allops_weights.pt")
    x = torch.rand(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "allops.onnx"), dynamo=False, opset_version=17,
                          input_names=["input"])
        torch.jit.save(torch.jit.trace(model, x), str(tmp_path / "allops.ts"))
        torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "allops.pt2"))
    return {
        "builder": [f"{tmp_path / 'allops.py'}:build", "--weights", str(tmp_path / "allops_weights.pt")],
        "onnx": [str(tmp_path / "allops.onnx")],
        "torchscript": [str(tmp_path / "allops.ts"), "--input-shape", "3,32,32"],
        "pt2": [str(tmp_path / "allops.pt2")],
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    return _files(tmp_path_factory.mktemp("sources"))


@pytest.mark.parametrize("kind", ["builder", "onnx", "torchscript", "pt2"])
def test_every_source_kind_through_quantize_verify_export_estimate(
        kind: str, sources: dict[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = tmp_path / "q"
    assert main(["quantize", *sources[kind], "--calib", "photos", "--images", "32", "--out", str(q)]) == 0
    summary = json.loads((q / "summary.json").read_text())
    assert summary["source"]["kind"] == ("builder" if kind == "builder" else "file")
    plan = json.loads((q / "plan.json").read_text())
    assert len(plan["layers"]) == 10  # 9 convs (the transposed one as a conv) and the Linear: none left in float
    capsys.readouterr()
    assert main(["verify", "--from", str(q), "--images", "16", "--out", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert "EXACT (0 of" in out, out
    for fmt in ("qonnx", "qdq"):
        assert main(["export", "--from", str(q), "--format", fmt, "--check", "--images", "8",
                     "--out", str(tmp_path / fmt)]) == 0, fmt
        assert "argmax agreement 100.00%" in capsys.readouterr().out, fmt
    assert main(["estimate", "--from", str(q), "--out", str(tmp_path / "es")]) == 0
    est = json.loads((tmp_path / "es" / "estimate.json").read_text())
    kinds = {layer["kind"] for layer in est["layers"]}
    assert {"conv", "dwconv", "linear", "add", "concat", "act", "upsample", "zero_insert", "pixel_shuffle",
            "maxpool", "avgpool", "pad", "mul", "reduce"} <= kinds, kinds


def _signal_files(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "allops.py").write_text(NET)
    model = ModelSource(f"{tmp_path / 'allops.py'}:signal").load(pretrained=False)
    torch.save(model.state_dict(), tmp_path / "signal_weights.pt")
    x = torch.randn(1, 2, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "signal.onnx"), dynamo=False, opset_version=17)
        torch.jit.save(torch.jit.trace(model, x), str(tmp_path / "signal.ts"))
        torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "signal.pt2"))
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, 64)
    sig = torch.sin(2 * torch.pi * (torch.rand(256, 2, 1, generator=g) * 6 + 1) * t) + 0.1 * torch.randn(256, 2, 64,
                                                                                                       generator=g)
    np.savez(tmp_path / "signals.npz", x=sig.numpy().astype(np.float32))
    return {
        "builder": [f"{tmp_path / 'allops.py'}:signal", "--weights", str(tmp_path / "signal_weights.pt")],
        "onnx": [str(tmp_path / "signal.onnx")],
        "torchscript": [str(tmp_path / "signal.ts"), "--input-shape", "2,64"],
        "pt2": [str(tmp_path / "signal.pt2")],
        "calib": [str(tmp_path / "signals.npz")],
    }


@pytest.fixture(scope="module")
def signals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    return _signal_files(tmp_path_factory.mktemp("signals"))


@pytest.mark.parametrize("kind", ["builder", "onnx", "torchscript", "pt2"])
def test_conv1d_model_of_every_source_kind_end_to_end(kind: str, signals: dict[str, list[str]], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    q = tmp_path / "q"
    assert main(["quantize", *signals[kind], "--calib", *signals["calib"], "--images", "64",
                 "--eval", *signals["calib"], "--out", str(q)]) == 0
    assert len(json.loads((q / "plan.json").read_text())["layers"]) == 4
    capsys.readouterr()
    assert main(["verify", "--from", str(q), "--images", "32", "--out", str(tmp_path / "v")]) == 0
    assert "EXACT (0 of" in capsys.readouterr().out
    for fmt in ("qonnx", "qdq"):
        assert main(["export", "--from", str(q), "--format", fmt, "--check", "--images", "8",
                     "--out", str(tmp_path / fmt)]) == 0, fmt
    assert main(["estimate", "--from", str(q), "--out", str(tmp_path / "es")]) == 0
    est = json.loads((tmp_path / "es" / "estimate.json").read_text())
    convs = [layer for layer in est["layers"] if layer["kind"] in ("conv", "dwconv")]
    assert len(convs) == 3 and all(layer["macs"] > 0 for layer in convs)


@pytest.mark.skipif(not __import__("mixq.rtl.netsim", fromlist=["available"]).available("verilator"),
                    reason="verilator not installed")
def test_all_ops_network_from_onnx_as_one_accelerator_bit_exact(sources: dict[str, list[str]],
                                                                  tmp_path: Path) -> None:
    """The op-set network given as an ONNX file, quantized, then `rtl build --from` its artifact: one
    AXI4-Stream accelerator holding every op (padding on the input codes; strided, depthwise, grouped-dilated
    and transposed convs; unfolded BatchNorm; lookup-table activations; max / average / adaptive pools; a
    residual add; a spatial-attention product; concat; pixel shuffle; nearest and bilinear upsampling; Linear),
    simulated in Verilator with randomized backpressure, every output element equal to the integer engine's."""
    q = tmp_path / "q"
    assert main(["quantize", *sources["onnx"], "--calib", "photos", "--images", "32", "--out", str(q)]) == 0
    out = tmp_path / "rtl"
    assert main(["rtl", "build", "--from", str(q), "--images", "2", "--pe", "4", "--simd", "8", "--out",
                 str(out)]) == 0
    res = json.loads((out / "build.json").read_text())
    sim = res["simulation"]
    assert res["mismatches"] == 0 and res["ok"] and sim["elements"] == sim["received"] == 2 * 10
    assert sim["missing"] == sim["extra"] == sim["bad_tlast"] == 0
    assert abs(res["cycles_per_frame"] - res["design_cycles_per_frame"]) < 0.01 * res["design_cycles_per_frame"]
    top = (out / "allops_top.v").read_text()
    for unit in ("mixq_rowbuf", "mixq_window_stream", ".GC(4)", ".DH(2)"):  # rings, streamed / grouped / dilated
        assert unit in top, unit
