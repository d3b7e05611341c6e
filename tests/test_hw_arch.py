"""Architecture templates: hand-computed single layers and invariants of the estimates."""

from __future__ import annotations

import math

import pytest

from mixq.errors import HardwareError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph.spec import LayerSpec
from mixq.hw import ArchOptions, CostModel, apply_folding, estimate, get_part
from mixq.hw.memory import lutram_mux_bits, lutram_prims
from mixq.hw.pe import PeConfig
from mixq.hw.units import COLLECTOR_LUT, split_pe
from mixq.plan import HwMapping, LayerPlan, QuantPlan

W4, A4 = FixedPoint(4), FixedPoint(4, signed=False)


def conv(name: str, cin: int, cout: int, hw: int, k: int = 3, stride: int = 1, groups: int = 1,
         inputs: tuple[str, ...] = ()) -> LayerSpec:
    ho = (hw + 2 * (k // 2) - k) // stride + 1
    kind = "dwconv" if groups == cin == cout and groups > 1 else "conv"
    macs = cout * ho * ho * (cin // groups) * k * k
    return LayerSpec(name, kind, (cin, hw, hw), (cout, ho, ho), cin, cout, (k, k), (stride, stride),
                     (k // 2, k // 2), groups, params=cout * cin // groups * k * k, macs=macs, inputs=inputs)


def linear(name: str, fin: int, fout: int) -> LayerSpec:
    return LayerSpec(name, "linear", (fin,), (fout,), fin, fout, params=fin * fout, macs=fin * fout)


def plan_of(specs: list[LayerSpec], **kw: object) -> QuantPlan:
    return QuantPlan("t", {s.name: LayerPlan(**kw) for s in specs if s.is_compute})  # type: ignore[arg-type]


def test_single_linear_layer_by_hand() -> None:
    """64 -> 10 linear, W4A4 on DSPs (two rows per DSP), PE = 2, SIMD = 8, on XC7Z020."""
    fc = linear("fc", 64, 10)
    plan = plan_of([fc], weight=W4, act=A4, mapping=HwMapping(pe=2, simd=8))
    e = estimate([fc], plan, "xc7z020", fold="plan")
    ly = e.layers[0]
    assert ly.cycles == math.ceil(10 / 2) * math.ceil(64 / 8)  # 40 cycles per frame
    assert e.fps == pytest.approx(100e6 / 40)
    m = CostModel.default()
    unit = m.pe(PeConfig("fixed_dsp2", 4, 4, 8, acc_len=64))  # one packed unit = 2 rows x 8 lanes
    req = m.pe(PeConfig("requant", accw=unit_acc(4, 4, 64), out_bits=8))  # ceil(2 / 8) = 1 requantizer
    assert unit.dsp == 8 and req.dsp == 1
    assert ly.resources.dsp == 9
    # weights: one memory 2 x 8 x 4 = 64 bits wide, 5 x 8 = 40 deep -> LUTRAM (RAM64M x 22 + no mux)
    pc, mc = m.lutram_coefs()
    wmem = pc * lutram_prims(64, 40) + mc * lutram_mux_bits(64, 40)
    # the collector: 10 byte-aligned write groups (one 8-bit code each, one select LUT each) and its counters
    collector = 10 + COLLECTOR_LUT
    assert ly.resources.lut == pytest.approx(unit.lut + req.lut + wmem + 150.0 + collector)
    assert ly.resources.bram == 0
    assert e.fits and e.macs == 640


def unit_acc(w: int, a: int, n: int) -> int:
    return PeConfig("fixed_dsp2", w, a, 1, acc_len=n).acc_bits


def test_conv_cycles_include_pixels_and_mixed_rows() -> None:
    """3x3 conv 16 -> 64 on 8x8, half the rows SP2 on LUTs, half fixed on DSPs, PE 8, SIMD 16."""
    c = conv("c", 16, 64, 8)
    plan = plan_of([c], weight=W4, weight_alt=SumOfPowers(4), alt_ratio=0.5, act=A4,
                   mapping=HwMapping(pe=8, simd=16))
    e = estimate([c], plan, "xc7z045", fold="plan")
    # 32 rows per core, 4 PEs each -> 8 row passes x ceil(144 / 16) = 9 beats x 64 pixels
    assert e.layers[0].cycles == 8 * 9 * 64
    m = CostModel.default()
    sp2 = m.pe(PeConfig("sp2", 4, 4, 16, acc_len=144))
    dsp = m.pe(PeConfig("fixed_dsp2", 4, 4, 16, acc_len=144))
    assert e.layers[0].resources.dsp == 2 * dsp.dsp + 1  # two packed units + one requantizer
    assert e.layers[0].resources.lut > 4 * sp2.lut
    assert "sp2" in e.layers[0].formats and "fixed_dsp2" in e.layers[0].formats


def test_depthwise_rows_do_not_pack() -> None:
    d = conv("dw", 32, 32, 16, groups=32)
    e = estimate([d], plan_of([d], weight=W4, act=A4, mapping=HwMapping(pe=4, simd=9)), "xc7z020", fold="plan")
    assert "fixed_dsp@" not in e.layers[0].formats and "fixed_dsp" in e.layers[0].formats
    # 8 row passes x 1 beat a pixel; mixq's window sequencer copies the 32 channels 4 a cycle (8 cycles) and reads
    # a row's first window in 9 cycles (the others keep 2 of their 3 columns: 3 reads)
    assert e.layers[0].cycles == 16 * (9 + 15 * (32 // 4) * 1)


def test_more_pes_are_never_slower() -> None:
    layers = [conv("a", 32, 96, 14), conv("b", 96, 96, 14, groups=96), linear("c", 512, 100)]
    for ly in layers:
        for alt in (0.0, 0.3):
            kw = {"weight_alt": SumOfPowers(4), "alt_ratio": alt} if alt else {}
            prev = math.inf
            for pe in range(1, ly.out_channels + 1, 3):
                p = plan_of([ly], weight=W4, act=A4, mapping=HwMapping(pe=pe, simd=4), **kw)
                cyc = estimate([ly], p, "xcvu9p", fold="plan").layers[0].cycles
                assert cyc <= prev
                prev = cyc


def test_split_pe_is_monotone() -> None:
    for rows in ([32, 32], [10, 54], [1, 100], [7, 0]):
        worst = [max(math.ceil(r / p) for r, p in zip(rows, split_pe(pe, rows), strict=True) if r)
                 for pe in range(1, 80)]
        assert worst == sorted(worst, reverse=True)


def small_resnet() -> list[LayerSpec]:
    return [
        LayerSpec("input", "input", (3, 32, 32), (3, 32, 32), outputs=("c1",)),
        conv("c1", 3, 32, 32, inputs=("input",)),
        conv("b1", 32, 32, 32, inputs=("c1",)),
        conv("b2", 32, 32, 32, inputs=("b1",)),
        LayerSpec("add", "add", (32, 32, 32), (32, 32, 32), inputs=("b2", "c1")),
        conv("c2", 32, 64, 32, stride=2, inputs=("add",)),
        LayerSpec("gap", "gap", (64, 16, 16), (64,), inputs=("c2",)),
        linear("fc", 64, 10),
    ]


def test_plan_that_fits_one_part_fits_two() -> None:
    specs = small_resnet()
    plan = plan_of(specs, weight=W4, act=A4)
    one = estimate(specs, plan, "xc7z020")
    two = estimate(specs, plan, "xc7z020", parts=2)
    assert one.fits and two.fits
    assert two.fps >= one.fps * 0.999
    assert len(two.partition) <= 2


def test_optimizer_meets_a_target_with_fewer_resources() -> None:
    specs = small_resnet()
    plan = plan_of(specs, weight=W4, act=A4)
    best = estimate(specs, plan, "xc7z020")
    slow = estimate(specs, plan, "xc7z020", target_fps=best.fps / 8)
    assert slow.fps >= best.fps / 8
    assert slow.resources.lut + 50 * slow.resources.dsp < best.resources.lut + 50 * best.resources.dsp
    with pytest.raises(HardwareError, match="best that fits is"):
        estimate(specs, plan, "xc7z020", target_fps=best.fps * 100)


def test_folding_written_back_to_the_plan() -> None:
    specs = small_resnet()
    plan = plan_of(specs, weight=W4, act=A4)
    e = estimate(specs, plan, "xc7z020")
    folded = apply_folding(plan, e)
    assert folded["c1"].mapping.pe == e.folding()["c1"][0]
    again = estimate(specs, folded, "xc7z020", fold="plan")
    assert again.fps == pytest.approx(e.fps)


def test_design_that_does_not_fit_says_where_and_by_how_much() -> None:
    big = [linear("fc1", 2048, 2048), linear("fc2", 2048, 2048)]  # 67 Mb of 8-bit weights
    e = estimate(big, plan_of(big, weight=FixedPoint(8), act=FixedPoint(8, signed=False)), "xc7z020")
    assert not e.fits
    o = {x.resource: x for x in e.overflows}["bram"]
    assert o.excess > 0 and o.largest_layer in ("fc1", "fc2")
    with pytest.raises(HardwareError, match="bram .* available"):
        e.check()
    # a bigger part (UltraRAM) holds it
    assert estimate(big, plan_of(big, weight=FixedPoint(8), act=FixedPoint(8, signed=False)), "xcvu9p").fits


def test_multi_fpga_split_respects_the_link() -> None:
    specs = small_resnet()
    plan = plan_of(specs, weight=W4, act=A4)
    fast = estimate(specs, plan, "xc7z020", parts=2, options=ArchOptions(util_cap=0.05, link_gbps=100.0))
    slow = estimate(specs, plan, "xc7z020", parts=2, options=ArchOptions(util_cap=0.05, link_gbps=0.01))
    assert fast.fps >= slow.fps
    if len(slow.partition) == 2:  # every cut must carry its tensors at the frame rate
        assert all(b * slow.fps <= 0.01e9 * 1.0001 for b in slow.link_bits)


def test_overlay_single_layer_by_hand() -> None:
    fc = linear("fc", 256, 64)
    plan = plan_of([fc], weight=W4, weight_alt=SumOfPowers(4), alt_ratio=0.25, act=A4)
    e = estimate([fc], plan, "xc7z020", "overlay", core_units={"dsp": 4, "sp2": 2})
    # DSP core: 4 packed units = 8 rows x 16 lanes; 48 rows -> 6 passes x 16 beats
    # SP2 core: 2 units = 2 rows x 16 lanes; 16 rows -> 8 passes x 16 beats; + 1000 set-up cycles
    assert e.layers[0].cycles == max(6 * 16, 8 * 16) + 1000
    assert {c["core"]: c["macs_per_cycle"] for c in e.cores} == {"dsp": 128, "sp2": 32}


def test_overlay_msq_beats_all_dsp_on_a_lut_rich_part() -> None:
    specs = small_resnet()
    dsp_only = estimate(specs, plan_of(specs, weight=W4, act=A4), "xc7z045", "overlay")
    msq = estimate(specs, plan_of(specs, weight=W4, weight_alt=SumOfPowers(4), alt_ratio=0.6, act=A4),
                   "xc7z045", "overlay")
    assert msq.fps > dsp_only.fps and msq.fits and dsp_only.fits
    assert 0 < msq.peak_fraction < 1


def test_float_layers_are_modelled_as_8_bit() -> None:
    specs = small_resnet()
    plan = QuantPlan("t", {"c1": LayerPlan(weight=W4, act=A4)})
    e = estimate(specs, plan, "xc7z045")
    assert any("W8A8" in n for n in e.notes)


def test_unknown_part_and_bad_arguments() -> None:
    fc = linear("fc", 8, 8)
    with pytest.raises(HardwareError, match="known parts: .*xc7z020"):
        estimate([fc], plan_of([fc], weight=W4), "xc9999")
    with pytest.raises(HardwareError, match="arch"):
        estimate([fc], plan_of([fc], weight=W4), "xc7z020", "systolic")
    with pytest.raises(HardwareError, match="streaming"):
        estimate([fc], plan_of([fc], weight=W4), "xc7z020", "overlay", parts=2)
    assert get_part("XC7Z020-CLG400-1").name == "xc7z020"


def test_to_dict_is_json_ready() -> None:
    import json

    specs = small_resnet()
    e = estimate(specs, plan_of(specs, weight=W4, act=A4), "xc7z020")
    d = json.loads(json.dumps(e.to_dict()))
    for key in ("fps", "latency_ms", "gops", "bottleneck", "peak_macs_per_s", "utilization", "resources"):
        assert key in d
    assert d["peak_macs_per_s"] > d["gops"] * 1e9 / 2
    head = e.summary()
    assert "layers" not in head and head["fps"] == d["fps"] and head["part"] == "xc7z020"


def test_mobilenet_v2_estimate_at_the_plans_folding() -> None:
    """A whole MobileNetV2 estimate at a given folding (its wall time is in benchmarks/hw_fold_speed.py)."""
    from mixq import zoo
    from mixq.graph.capture import capture

    specs = capture(zoo.load("mobilenet_v2"), zoo.input_shape("mobilenet_v2"))
    names = [s.name for s in specs if s.is_compute]
    plan = QuantPlan("mobilenet_v2", {n: LayerPlan(weight=W4, act=A4, mapping=HwMapping(pe=2, simd=3))
                                      for n in names})
    e = estimate(specs, plan, "xc7z045", fold="plan")
    assert len(e.layers) >= 52 and e.macs > 290e6
    assert all((ly.pe, ly.simd) == (2, 3) or ly.kind not in ("conv", "dwconv", "linear") for ly in e.layers)


def test_weights_that_do_not_fit_can_stream_from_ddr() -> None:
    big = [linear("fc1", 2048, 2048), linear("fc2", 2048, 1000)]
    plan = plan_of(big, weight=FixedPoint(8), act=FixedPoint(8, signed=False))
    e = estimate(big, plan, "xc7z020", options=ArchOptions(ddr_weights="auto"))
    assert e.fits and e.ddr_weights
    ext_bits = sum(s.in_channels * s.out_channels * 8 for s in big if s.name in e.ddr_weights)
    assert e.fps <= 4.26e9 * 8 * 0.8 / ext_bits * 1.001  # bounded by the board's DDR
    assert not estimate(big, plan, "xc7z020").fits  # all on chip it does not fit


def test_transpose_buffers_the_whole_tensor_only_when_it_reorders() -> None:
    """A permute that reorders elements costs a double buffer of the tensor in the streaming design; one
    that only moves a unit dim costs nothing. The spec records the per-sample axis order."""
    import torch
    from torch import nn

    from mixq.graph.capture import capture

    class Net(nn.Module):
        def __init__(self, dims: tuple[int, ...]) -> None:
            super().__init__()
            self.dims = dims
            self.c = nn.Conv2d(1, 64, (8, 1), stride=(4, 1), padding=(2, 0))
            self.fc = nn.Linear(64 * 64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.c(x[:, None, :, None])).permute(*self.dims)
            return self.fc(y.flatten(1))  # type: ignore[no-any-return]

    a8 = FixedPoint(8, signed=False)
    cost = {}
    for dims in ((0, 2, 1, 3), (0, 1, 3, 2)):
        specs = capture(Net(dims), (256,))
        t = next(s for s in specs if s.kind == "transpose")
        assert t.extra["perm"] == [d - 1 for d in dims[1:]] and t.in_shape == (64, 64, 1)
        e = estimate(specs, plan_of(specs, weight=FixedPoint(8), act=a8), "xc7z020", fold="auto")
        cost[dims] = next(x for x in e.layers if x.name == t.name).resources
    moved, relabelled = cost[(0, 2, 1, 3)], cost[(0, 1, 3, 2)]
    assert relabelled.bram == 0 and moved.bram >= 2 * 64 * 64 * 8 / 36864  # a double buffer of 4,096 codes
    assert moved.lut >= relabelled.lut  # the same control, plus any LUTRAM / mux of the buffer


def test_channel_shuffle_buffers_one_pixel() -> None:
    """ShuffleNet's channel shuffle permutes channels within a pixel of the pixel-major stream: its transpose holds
    one pixel's channels (double buffered), not the whole map; the reshapes around it are free."""
    import torch
    from torch import nn

    from mixq.graph.capture import capture

    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.c1(x))
            y = y.view(-1, 2, 32, 32, 32).transpose(1, 2).reshape(-1, 64, 32, 32)
            return self.c2(y)  # type: ignore[no-any-return]

    specs = capture(Shuffle(), (3, 32, 32))
    (t,) = [s for s in specs if s.kind == "transpose"]
    assert t.in_shape == (2, 32, 32, 32) and t.extra["perm"] == [1, 0, 2, 3]
    e = estimate(specs, plan_of(specs, weight=FixedPoint(8), act=FixedPoint(8, signed=False)), "xc7z020")
    ly = next(x for x in e.layers if x.name == t.name)
    assert ly.resources.bram == 0 and ly.resources.lut < 1000  # 2 x 64 codes of 8 bits in LUTRAM, not 2 x 64 k
    assert {x.name for x in e.layers} >= {t.name, "c1", "c2"}


def test_streaming_is_bounded_by_its_stream_ports() -> None:
    """mixq's RTL takes one input pixel and gives one output code a beat: a 1 x 1 conv 3 -> 64 on 32 x 32 whose
    engine could run a pixel in 2 cycles (2,048 a frame) still needs 64 x 1,024 = 65,536 beats to send a frame out.
    The optimizer stops there (no faster, dearer folding), a faster target is refused, FINN's dataflow is left as
    FINN prices it."""
    c = conv("c", 3, 64, 32, k=1)
    plan = plan_of([c], weight=W4, act=A4)
    e = estimate([c], plan, "xczu9eg")
    assert e.layers[0].cycles <= 65_536 and e.fps == pytest.approx(250e6 / 65_536)
    assert (e.layers[0].pe, e.layers[0].simd) == (4, 1)  # the cheapest folding within 65,536 cycles (49,152)
    assert e.bottleneck == "the stream ports (65,536 cycles/frame: one input pixel, one output code a beat)"
    fast = estimate([c], plan_of([c], weight=W4, act=A4, mapping=HwMapping(pe=64, simd=3)), "xczu9eg", fold="plan")
    assert fast.layers[0].cycles == 1024 * 2 and fast.fps == pytest.approx(250e6 / 65_536)
    assert fast.bottleneck.startswith("the stream ports (65,536 cycles/frame")
    with pytest.raises(HardwareError, match="not reachable"):
        estimate([c], plan, "xczu9eg", target_fps=250e6 / 60_000)
    finn = estimate([c], plan_of([c], weight=W4, act=A4, mapping=HwMapping(pe=64, simd=3)), "xczu9eg", fold="plan",
                    options=ArchOptions(dataflow="finn"))
    assert finn.fps > 250e6 / 65_536
