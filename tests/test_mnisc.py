"""The single-engine ("mnisc") accelerator: the zoo U-Net, the lowering of an integer model to a program of
convolutions only (:mod:`mixq.engine.program`), run with integer arithmetic.

Claims: the lowered program of the quantized U-Net (both upsampling variants, W8A8 and W4A4 PTQ) and of
ResNet-20 gives the integer engine's output codes with 0 mismatching elements on random, saturating and
all-zero batches; every step is a conv (max-pool as a conv step's pooling, add / deconv / average pool as
weight presets and zero insertion) or a pixel-shuffle / concat move; ops with no conv form are refused
by name.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixq import api, zoo
from mixq.engine import IntEngine, IntModel, to_integer, verify
from mixq.engine.program import ConvStep, MoveStep, Program, lower, prog_input, run_program
from mixq.errors import HardwareError, ModelError
from mixq.formats import FixedPoint
from mixq.graph import capture
from mixq.hw.cost import CostModel
from mixq.hw.mnisc import (
    EuConfig,
    EuStep,
    at_resolution,
    estimate_mnisc,
    line_buffer_bits,
    step_cycles,
    step_passes,
    step_time,
)
from mixq.hw.parts import get_part
from mixq.hw.pe import PeConfig
from mixq.rtl.cosim import iverilog_available
from mixq.rtl.mnisc import cosimulate_eu, eu_image, eu_steps, eu_verilog, lower_for, range_bits, tensor_ranges
from mixq.rtl.synth import synthesize_verilog, yosys_available
from mixq.zoo.unet import UNet, unet

pytestmark = pytest.mark.usefixtures("one_thread")

W4 = FixedPoint(bits=4, signed=True, narrow=True)
A4 = FixedPoint(bits=4, signed=False, narrow=False)


def _quantized(model: nn.Module, calib: torch.Tensor, bits: int = 8, **options: object) -> tuple[nn.Module, IntModel]:
    plan = (api.default_plan("m", model, calib) if bits == 8 else
            api.default_plan("m", model, calib, weight=W4, act=A4))
    q = api.quantize(model.eval(), plan, calib)
    return q, to_integer(q, calib, **options)  # type: ignore[arg-type]


def _batches(shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, *shape, generator=g), 8 * torch.randn(2, *shape, generator=g), torch.zeros(1, *shape)]


def _mismatches(im: IntModel, prog: Program, shape: tuple[int, ...]) -> int:
    engine, bad = IntEngine(im), 0
    for x in _batches(shape):
        ref, got = engine(x).codes, run_program(prog, prog_input(prog, x))
        assert isinstance(got, torch.Tensor) and got.shape == ref.shape
        bad += int((got != ref).sum())
    return bad


def _kinds(prog: Program) -> set[str]:
    return {s.kind for s in prog.steps}


# ----------------------------------------------------------------------------- the U-Net


@pytest.mark.parametrize("up", ["pixelshuffle", "convtranspose"])
@pytest.mark.parametrize("bits", [8, 4])
def test_unet_program_is_bit_exact_against_the_integer_engine(up: str, bits: int) -> None:
    torch.manual_seed(0)
    model, x = unet(up=up), torch.rand(8, 3, 32, 32)
    q, im = _quantized(model, x, bits)
    rep = verify(q, x)  # the front end and the engine as they stand: engine == hardware-faithful fake quant
    assert rep["exact"] and rep["mismatching_outputs"] == 0
    prog = lower(im)
    assert _mismatches(im, prog, (3, 32, 32)) == 0
    assert all(isinstance(s, ConvStep) or s.kind in ("pixel_shuffle", "concat") for s in prog.steps)
    convs = prog.conv_steps()
    pools = [o for s in convs for o in s.outputs if any(op.kind == "maxpool" for op in o.ops)]
    assert len(pools) == 2  # conv + pooling in one pass: both encoder levels
    # the conv before each pool also writes the unpooled skip: one accumulator, two outputs
    assert sum(len(s.outputs) == 2 for s in convs) == 2
    # the residual add is one conv over [input codes, head input]: M-scaled weights of skip and head
    add = next(s for s in convs if s.kind == "add")
    assert add.inputs[0].tensor == prog.input.tensor and add.weight.shape == (3, 3 + 16, 1, 1)
    assert set(add.source) == {"skip", "head", "add"}
    if up == "convtranspose":
        assert _kinds(prog) == {"conv", "add"}
        assert [s.zero_insert for s in convs if s.zero_insert != (1, 1)] == [(2, 2), (2, 2)]
    else:
        assert _kinds(prog) == {"conv", "add", "pixel_shuffle"}
    # a concat skip is read by the decoder conv as two inputs: no concat step, no 32-bit tensor in between
    dec = next(s for s in convs if s.name == "dec.0.0")
    assert len(dec.inputs) == 2 and dec.in_shape == (32, 32, 32)


def test_unet_runs_at_any_size_divisible_by_its_downsampling() -> None:
    model = unet(width=4, depth=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 24, 40)).shape == (1, 3, 24, 40)
    with pytest.raises(ModelError, match=r"unet: input \(30, 40\) is not divisible by 2\*\*depth = 8"):
        model(torch.rand(1, 3, 30, 40))
    with pytest.raises(ModelError, match="up='bilinear' is not an upsampler"):
        unet(up="bilinear")
    assert zoo.input_shape("unet") == (3, 64, 64)
    kinds = {s.kind for s in capture(zoo.load("unet", num_classes=3), (3, 64, 64))}
    assert {"conv", "maxpool", "concat", "pixel_shuffle", "add"} <= kinds


def test_unet_identity_skip_makes_the_output_x_plus_f_x() -> None:
    model = unet().eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.skip(x), x)  # 1 * x + 0 * the other channels: exact
        assert torch.equal(model(x), x + model.head(_decoder_features(model, x)))
    assert not model.skip.weight.requires_grad


def _decoder_features(model: UNet, x: torch.Tensor) -> torch.Tensor:
    feats: list[torch.Tensor] = []
    hook = model.head.register_forward_hook(lambda _m, inp, _o: feats.append(inp[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    return feats[0]


# ----------------------------------------------------------------------------- ResNet-20


def test_resnet20_program_is_bit_exact_and_fuses_each_residual_add_into_a_conv() -> None:
    torch.manual_seed(0)
    _, im = _quantized(zoo.load("resnet20"), torch.rand(8, 3, 32, 32), mult_bits=12)
    prog = lower(im)
    assert _mismatches(im, prog, (3, 32, 32)) == 0
    # the widths the hardware gets are proven: every tensor on saturating data stays in its range
    rng = tensor_ranges(prog)
    env = run_program(prog, prog_input(prog, 8 * torch.randn(4, 3, 32, 32)), keep=True)
    assert isinstance(env, dict) and set(env) == set(rng)
    assert all(rng[k][0] <= int(v.min()) and int(v.max()) <= rng[k][1] for k, v in env.items())
    assert range_bits(*rng["add:in1"]) > 16  # the shortcut operand is a raw accumulator (read at the centre tap)
    convs = prog.conv_steps()
    adds = [s for s in convs if s.kind == "add"]
    assert len(adds) == 9 and all(s.weight.shape[2:] == (3, 3) for s in adds)  # conv2 + shortcut as one conv
    assert {s.kind for s in convs} == {"conv", "add", "sumpool", "linear"}
    pool = next(s for s in convs if s.kind == "sumpool")  # global average pooling: an all-ones depthwise conv
    assert pool.groups == 64 and pool.weight.shape == (64, 1, 8, 8) and (pool.weight == 1).all()
    # the shortcut operand is read at the centre tap of the 3x3 kernel with its multiplier M on the diagonal
    m = im.node("add").arrays["M"]
    w = adds[0].weight
    c = w.shape[0]
    centre = w[:, c:, 1, 1]
    assert np.array_equal(np.diag(centre), np.asarray(m[1]).reshape(-1))
    assert not (centre - np.diag(np.diag(centre))).any()
    assert not w[:, c:, [0, 2], :].any() and not w[:, c:, :, [0, 2]].any()


@pytest.mark.parametrize("model", ["resnet20", "unet"])
def test_lowering_for_an_eu_folds_an_add_only_where_that_is_no_slower(model: str) -> None:
    """Measured (p = s = 16, 4-bit lanes, W4A4, exact streams): ResNet-20 folded 12.8 frames/s (fused conv + add
    steps with 26-31-bit weights), apart 147.0, ``lower_for`` 147.0 (every add apart); the U-Net's input + head add
    folded 683.8, apart 647.0, ``lower_for`` keeps the fold."""
    torch.manual_seed(0)
    net, x = (zoo.load("resnet20"), torch.rand(8, 3, 32, 32)) if model == "resnet20" else (unet(), torch.rand(8, 3, 32,
                                                                                                           32))
    _, im = _quantized(net, x, bits=4)
    cfg = EuConfig(p=16, s=16, wbits=4, abits=4)
    progs = {"fused": lower(im), "apart": lower(im, fuse=lambda _: False), "for": lower_for(im, cfg)}
    fps = {k: estimate_mnisc(eu_steps(p), cfg).fps for k, p in progs.items()}
    assert fps["for"] >= max(fps["fused"], fps["apart"])
    folded = [s for s in progs["for"].conv_steps() if s.kind == "add" and len(s.source) > 1]
    if model == "resnet20":
        assert fps["for"] > 5 * fps["fused"] and not folded
        assert _mismatches(im, progs["for"], (3, 32, 32)) == 0
        adds = [s for s in progs["for"].conv_steps() if s.kind == "add"]  # each its own 1x1 step over two operands
        assert len(adds) == 9 and all(s.weight.shape[2:] == (1, 1) and len(s.inputs) == 2 for s in adds)
    else:
        assert fps["fused"] > fps["apart"] and [s.source for s in folded] == [("skip", "head", "add")]


# ----------------------------------------------------------------------------- each mapping on its own


class MixedSimple(nn.Module):
    """Average pooling with padding, a pad node, max-pool of a concat, an add of two clamped tensors, a pixel
    shuffle and a concat as the output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(16, 8, 3)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.e = nn.Conv2d(8, 8, 1)
        self.f = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = F.relu(self.a(x)), F.relu(self.b(x))
        y = F.max_pool2d(torch.cat([a, b], 1), 2)
        y = F.relu(self.c(F.pad(y, [1, 1, 1, 1])))
        z = F.avg_pool2d(F.relu(self.d(y)), 3, stride=1, padding=1)
        s = F.relu(y + F.relu(self.e(z)))
        return torch.cat([F.pixel_shuffle(s, 2), F.relu(self.f(F.interpolate(s, scale_factor=2)))], 1)


def test_each_op_maps_to_convs_and_moves_exactly() -> None:
    torch.manual_seed(1)
    _, im = _quantized(MixedSimple(), torch.randn(8, 3, 16, 16))
    prog = lower(im)
    assert _mismatches(im, prog, (3, 16, 16)) == 0
    out = next(s for s in prog.steps if s.name == prog.output.tensor)
    assert isinstance(out, MoveStep) and out.kind == "concat"
    steps = {s.name: s for s in prog.conv_steps()}
    pool = next(s for s in prog.conv_steps() if any(op.kind == "maxpool" for o in s.outputs for op in o.ops))
    assert pool.kind == "identity" and pool.groups == 16 and len(pool.inputs) == 2  # the concat read in place
    assert isinstance(pool, ConvStep) and (pool.weight == 1).all() and pool.weight.shape == (16, 1, 1, 1)
    assert steps["c"].padding == (1, 1, 1, 1)  # F.pad folded into the unpadded conv
    avg = steps["avg_pool2d"]
    assert avg.kind == "sumpool" and avg.padding == (1, 1, 1, 1) and avg.weight.shape == (8, 1, 3, 3)
    up = steps["interpolate"]  # nearest x2: zero insertion with one extra zero, an all-ones 2x2 conv
    assert up.zero_insert == (2, 2) and up.zero_extra == (1, 1) and up.padding == (1, 0, 1, 0)
    add = steps["add"]  # two clamped operands, no conv to fuse into: a 1x1 conv with M on the diagonals
    m = np.asarray(im.node("add").arrays["M"]).reshape(2, -1)
    assert np.array_equal(add.weight[:, :, 0, 0], np.concatenate([np.diag(m[0]), np.diag(m[1])], 1))
    assert [op.kind for op in add.outputs[0].ops] == ["requant", "clamp"]  # the add's rounding, the ReLU


def test_an_op_without_a_conv_form_is_refused_by_name() -> None:
    class Lut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.hardswish(self.a(x)))

    _, im = _quantized(Lut(), torch.randn(4, 3, 8, 8))
    with pytest.raises(ModelError, match=r"int model node '.*' \(op 'lut'\): no conv form on the single engine"):
        lower(im)


# ----------------------------------------------------------------------------- the hardware template


CFG = EuConfig(p=16, s=16, wbits=8, abits=8, clock_mhz=100.0, ddr_gbps=4.26, ddr_efficiency=0.8, step_cycles=64)
BW = 4.26e9 * 0.8  # bytes / s


def test_step_timing_by_hand() -> None:
    conv = EuStep("c", "conv", (16, 32, 32), (32, 32, 32), (3, 3), padded_width=34, read_bits=16 * 32 * 32 * 8,
                  write_bits=32 * 32 * 32 * 8, weight_bits=32 * 16 * 9 * 8 + 32 * 56)
    # L = 16 * 9 = 144: ceil(32 / 16) = 2 row groups x ceil(144 / 16) = 9 lane groups per pixel, 1024 pixels
    t = step_time(conv, CFG, 100e6, BW)
    assert t.cycles == 1024 * 2 * 9 + 64 == 18496 and t.passes == 1 and t.macs == 32 * 1024 * 144
    assert t.ddr_bytes == (131072 + 262144 + 38656) / 8 == 53984
    assert t.compute_s == pytest.approx(184.96e-6) and t.ddr_s == pytest.approx(53984 / BW) and t.bound == "compute"
    assert line_buffer_bits(conv, 8) == ((3 - 1) * 34 + 3) * 16 * 8 == 9088
    # wider codes than the lanes: 8-bit inputs on 4-bit lanes (2 slices) x 31-bit weights on 4-bit lanes (8)
    add = EuStep("a", "add", (19, 32, 32), (3, 32, 32), in_bits=8, wbits=31)
    cfg4 = replace(CFG, wbits=4, abits=4)
    assert step_passes(add, cfg4) == 16 and step_cycles(add, cfg4) == 16 * 1024 * 1 * 2 + 64
    # depthwise: the 16 groups of one row each run one after the other, ceil(9 / 16) = 1 lane group
    dw = EuStep("d", "sumpool", (16, 8, 8), (16, 8, 8), (3, 3), groups=16)
    assert step_cycles(dw, CFG) == 64 * 16 * 1 * 1 + 64 == 1088
    # a 1x1 32 -> 32 conv on a 64 x 64 EU: one cycle per pixel, 64 bytes per pixel moved: DDR-bound
    wide = replace(CFG, p=64, s=64)
    pw = EuStep("p", "conv", (32, 64, 64), (32, 64, 64), read_bits=32 * 4096 * 8, write_bits=32 * 4096 * 8,
                weight_bits=32 * 32 * 8 + 32 * 56)
    t = step_time(pw, wide, 100e6, BW)
    assert t.cycles == 4096 + 64 and t.ddr_bytes == 263392 and t.bound == "ddr"
    assert t.seconds == pytest.approx(263392 / BW)
    # a pixel shuffle: written in place by its producer, or one DDR read + write
    ps = EuStep("s", "pixel_shuffle", (4, 8, 8), (4, 8, 8), read_bits=2048, write_bits=2048)
    assert step_time(ps, CFG, 100e6, BW).seconds == 0.0
    assert step_time(ps, replace(CFG, fuse_moves=False), 100e6, BW).ddr_s == pytest.approx(512 / BW)
    est = estimate_mnisc([conv, add, dw, pw, ps], CFG)
    assert est.frame_s == pytest.approx(sum(step_time(s, CFG, 100e6, BW).seconds for s in (conv, add, dw, pw, ps)))
    assert est.fps == pytest.approx(1 / est.frame_s)


def test_unet_on_the_eu_at_1080p() -> None:
    torch.manual_seed(0)
    q, im = _quantized(unet(), torch.rand(8, 3, 32, 32), 4)
    base = eu_steps(lower(im))
    # the template's scaling is the lowering at that size, step for step
    assert at_resolution(base, (32, 32), (48, 80)) == eu_steps(lower(to_integer(q, (3, 48, 80))))
    # every conv's MACs are the front end's (the fused add: skip 3x3 + head 16x3 = one 19x3 conv)
    specs = capture(unet(), (3, 64, 64))
    hd = at_resolution(base, (32, 32), (64, 64))
    assert sum(s.macs for s in hd) == sum(s.macs for s in specs if s.kind == "conv")
    hd = at_resolution(base, (32, 32), (1080, 1920))
    assert sum(s.macs for s in hd) == sum(s.macs for s in base) * 1080 * 1920 // 1024
    est = estimate_mnisc(hd, EuConfig(p=32, s=16, wbits=4, abits=4))
    d = est.to_dict()
    assert d["part"] == "xc7z020" and est.clock_mhz == 100.0 and est.ddr_gbps == 4.26 and est.fits
    assert 0 < est.fps < 30 and est.bound == "compute"  # 67.9 GMAC per frame: far from real time at this width
    lanes = CostModel.default().pe(PeConfig("fixed_lut", 4, 4, 16, acc_len=max(s.row_length for s in hd)))
    assert est.detail["lanes"] == lanes * 32
    assert est.detail["line_buffer"].bram > 0  # two 1922-pixel rows of 32 channels (dec.0.0) at 4 bits
    with pytest.raises(HardwareError, match=r"enc\.1\.0: 16 \* 1081 / 32 is not an integer"):
        at_resolution(base, (32, 32), (1081, 1920))
    _, im20 = _quantized(zoo.load("resnet20"), torch.rand(8, 3, 32, 32), mult_bits=12)
    with pytest.raises(HardwareError, match="step 'avgpool' .* not fully convolutional"):
        at_resolution(eu_steps(lower(im20)), (32, 32), (64, 64))


# ----------------------------------------------------------------------------- the EU in Verilog

needs_iverilog = pytest.mark.skipif(not iverilog_available(), reason="iverilog not installed")


class MixedRtl(nn.Module):
    """Max-pool of a concat (an identity conv carries it), a pad, average pooling (a depthwise all-ones conv),
    an add of two clamped tensors (a 1x1 conv with M on the diagonals, two requantizations in one output),
    a pixel shuffle, nearest upsampling (zero insertion + an all-ones conv) and an add fused into two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.c, self.d, self.e = nn.Conv2d(16, 8, 3), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.f, self.g = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = F.relu(self.a(x)), F.relu(self.b(x))
        y = F.max_pool2d(torch.cat([a, b], 1), 2)
        y = F.relu(self.c(F.pad(y, [1, 1, 1, 1])))
        z = F.avg_pool2d(F.relu(self.d(y)), 3, stride=1, padding=1)
        s = F.relu(y + F.relu(self.e(z)))
        return self.g(F.pixel_shuffle(s, 2)) + self.f(F.interpolate(s, scale_factor=2))  # type: ignore[no-any-return]


@needs_iverilog
@pytest.mark.parametrize(("name", "up"), [("unet", "pixelshuffle"), ("unet", "convtranspose"), ("mixed", "")])
def test_rtl_eu_runs_the_whole_program_bit_exactly(name: str, up: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = unet(width=4, up=up) if name == "unet" else MixedRtl()
    _, im = _quantized(model, torch.randn(8, 3, 16, 16))
    prog = lower(im)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    p = 8 if name == "unet" else 4  # 8 rows at once: half the MAC cycles; 4 <= the 8 rows of the mixed convs
    res = cosimulate_eu(prog, prog_input(prog, x).numpy(), tmp_path, p=p)
    stored = eu_image(prog, p, dw=40).tensors.values()
    assert res.done and res.ok and res.elements == sum(math.prod(s) for _, s in stored)
    assert set(res.mismatches) >= {prog.output.tensor, prog.input.tensor}
    if name == "unet":  # every layer type of the U-Net went through the EU
        kinds = {s.kind for s in prog.steps} | {"maxpool" for s in prog.conv_steps() for o in s.outputs
                                                if any(op.kind == "maxpool" for op in o.ops)}
        assert kinds >= {"conv", "add", "maxpool", "pixel_shuffle" if up == "pixelshuffle" else "conv"}
        assert up == "pixelshuffle" or any(s.zero_insert == (2, 2) for s in prog.conv_steps())
    else:
        assert {s.kind for s in prog.steps} == {"conv", "identity", "sumpool", "add", "pixel_shuffle", "upsample"}


@pytest.mark.slow
@needs_iverilog
def test_rtl_eu_runs_resnet20_bit_exactly(tmp_path: Path) -> None:
    """Measured: 8,599,706 cycles at p = 16, 277,578 elements, 0 mismatches (~100 s in Icarus)."""
    torch.manual_seed(0)
    _, im = _quantized(zoo.load("resnet20"), torch.rand(8, 3, 32, 32), mult_bits=12)
    prog = lower(im)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    res = cosimulate_eu(prog, prog_input(prog, x).numpy(), tmp_path, p=16, dw=48)
    assert res.ok and res.mismatches[prog.output.tensor] == 0


@needs_iverilog
def test_rtl_eu_refuses_what_it_does_not_build() -> None:
    torch.manual_seed(1)
    _, im = _quantized(MixedSimple(), torch.randn(8, 3, 16, 16))  # its output is a concat move
    with pytest.raises(HardwareError, match=r"step 'cat_1': a concat move is not in the RTL"):
        eu_image(lower(im), 4, dw=40)
    _, im = _quantized(unet(width=4), torch.randn(8, 3, 16, 16))
    with pytest.raises(HardwareError, match=r"tensor 'add' needs \d+ signed bits, the data memory 16"):
        eu_image(lower(im), 4, dw=16)


@pytest.mark.slow
@pytest.mark.skipif(not yosys_available(), reason="yosys not installed")
def test_rtl_eu_synthesizes_for_the_xc7z020() -> None:
    # measured (yosys synth_xilinx): 5390 LUT, 1474 FF, 51 DSP48E1 — the sequencer's address arithmetic and the
    # two-stage requantizer dominate; the template's EU terms (fixed_dsp lanes) are 198 LUT, 6 DSP
    res = synthesize_verilog(eu_verilog(p=4, dw=16, ww=8, accw=32, rw=40, mw=18), "mnisc_core", timeout_s=1200)
    part = get_part("xc7z020")
    assert 0 < res.lut <= part.lut and res.ff <= part.ff and res.dsp <= part.dsp


# ----------------------------------------------------------------------------- the template prices the RTL EU's core


def test_template_sizes_the_core_exactly_as_the_rtl_does() -> None:
    """The template's core widths from the plain steps (:func:`eu_widths`) are the ones the RTL compiler sizes
    from the program's proven ranges and memories (:func:`eu_image`), parameter for parameter."""
    from mixq.hw.mnisc import eu_widths

    torch.manual_seed(1)
    for model in (MixedRtl(), unet(width=4)):
        _, im = _quantized(model, torch.randn(8, 3, 16, 16))
        prog = lower(im)
        img = eu_image(prog, 4, ww=32, dw=40)
        w = eu_widths(eu_steps(prog), EuConfig(p=4, s=1, wbits=8, abits=8, lane="fixed_dsp", data_bits=40))
        assert {k: v for k, v in img.widths.items() if k != "WW"} == {
            k: getattr(w, k.lower()) for k in img.widths if k != "WW"}
        assert img.widths["ACCW"] < 48 and img.widths["AW"] < 20  # sized to the program, not to 32-bit words
    est = estimate_mnisc(eu_steps(prog), EuConfig(p=4, s=1, wbits=8, abits=8, lane="fixed_dsp", data_bits=40))
    assert {"lanes", "rows", "requant", "sequencer"} <= set(est.detail) and est.detail["sequencer"].lut > 0


@pytest.mark.skipif(not yosys_available(), reason="yosys not installed")
def test_template_prices_a_small_eu_core_within_20_percent_of_yosys() -> None:
    """A 2-row EU core at small widths (none of the fit's configurations): yosys synth_xilinx of the generated
    Verilog against the template's core terms — LUT within 20%, DSP exact (mul2dsp rule)."""
    from mixq.hw.mnisc import EuWidths, core_resources

    w = {"P": 2, "DW": 10, "WW": 4, "ACCW": 18, "VW": 18, "M1W": 9, "QW": 12, "M2W": 4, "EW": 10, "P1W": 26,
         "P2W": 15, "NW": 4, "ASW": 1, "AW": 12, "IAW": 8, "WAW": 10, "PAW": 10, "CW": 8, "IW": 12}
    res = synthesize_verilog(eu_verilog(**w), "mnisc_core", timeout_s=300)
    est = core_resources(EuWidths.from_params(w))["total"]
    assert res.dsp == est.dsp
    assert abs(est.lut / res.lut - 1) <= 0.2, (res.lut, est.lut)
