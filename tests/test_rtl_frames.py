"""Frames in flight in the whole-network accelerator (:mod:`mixq.rtl.frames`): a U-Net's skip buffers get the banks
their frames need, pointwise stages stream through rings of rows, and the simulated U-Net runs at its slowest
stage's frame time with its latency as scheduled.

Before (session 19) every skip held two frames and every pointwise stage read and wrote whole frames: a MONAI
BasicUNet at 32 x 32 ran at 10,044 cycles a frame against its slowest stage's 5,295, because the encoder waited
for the decoder to free a skip bank.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mixq.rtl.frames import SLACK, buffer_bits, frame_banks, gather_rows, rings_of, schedule
from mixq.rtl.netgraph import GatherStage, Graph, PointStage, Stage, lower_graph
from test_rtl_network import needs_verilator, w8a8_int


def _unet(n: int) -> tuple[Any, dict[str, Any]]:
    """The zoo's U-Net (transposed-conv upsampling, concat skips, a residual output) at W8A8, 16 x 16, with the
    engine's integers of ``n`` images."""
    import torch

    from mixq.engine.runner import IntEngine
    from mixq.zoo.unet import unet

    torch.manual_seed(0)
    m = unet(width=8, depth=2, up="convtranspose").eval()
    x = torch.rand(max(n, 4), 3, 16, 16)
    im = w8a8_int(m, x)
    return im, IntEngine(im)(x[:n], keep=True).values


def _graph() -> Graph:
    im, values = _unet(1)
    return lower_graph(im, values)


def test_each_frame_buffer_holds_the_frames_its_span_needs() -> None:
    g = _graph()
    rings = rings_of(g)
    sched = schedule(g, rings)
    banks = frame_banks(g, rings)
    assert set(banks) | set(rings) == set(range(len(g.buffers))) and not set(banks) & set(rings)
    t = sched.interval
    assert t == max([int(n.cycles) for n in g.nodes] + [16 * 16, 3 * 16 * 16])  # stages, input and output streams
    out = len(g.nodes)
    for k, nb in banks.items():
        b = g.buffers[k]
        span = sched.end[out if b.consumer == -1 else b.consumer] - sched.steady_start(b.producer)
        assert span == sched.span(g, k)
        assert sched.start[b.producer] <= sched.steady_start(b.producer) <= sched.end[b.producer]
        assert nb == max(2, math.ceil(span * (1 + SLACK) / t)), (b.value, nb, span, t)
    # a skip waits at its join (the first level's concat, the residual output's add) while the other input passes
    # through every deeper level: more than two banks; a buffer along one path has two
    deep = {g.buffers[k].value for k in banks if banks[k] > 2}
    assert deep == {"enc.0.3", "skip"}, deep
    for k in banks:
        if banks[k] > 2:
            st = g.nodes[g.buffers[k].consumer]
            assert isinstance(st, PointStage) and len(st.sources) == 2
    # memory: a ring's rows, a frame buffer's banks of frames
    bits = buffer_bits(g, rings, banks)
    for k, b in enumerate(g.buffers):
        c, h, w = b.shape
        assert bits[k] == c * b.bits * w * (rings[k] if k in rings else h * banks[k])


def test_pointwise_and_gather_stages_stream_through_rings() -> None:
    g = _graph()
    rings = rings_of(g)
    seen = 0
    for i, st in enumerate(g.nodes):
        if not isinstance(st, PointStage):
            continue
        (k, *more) = g.inputs_of(i)
        b = g.buffers[k]
        sole = b.producer == -1 or g.outputs_of(b.producer) == [k]
        if more:  # a join: a concat's upsampled input streams, its skip (written beside the main path) waits whole
            ring = [x for x in (k, *more) if x in rings]
            if st.value.startswith("cat"):
                (r,) = ring
                (other,) = {k, *more} - {r}
                assert len(g.outputs_of(g.buffers[other].producer)) == 2, st.value
            else:  # the residual output's add: the skip conv writes only it, nothing settles it first: frames
                assert ring == [], st.value
        elif sole:
            assert rings.get(k) == 3, (st.name, rings.get(k))
            seen += 1
    assert seen >= 3
    zeros = [i for i, st in enumerate(g.nodes) if isinstance(st, GatherStage) and st.value.endswith("_zeros")]
    assert len(zeros) == 2 and all(g.inputs_of(i)[0] in rings for i in zeros)


def test_a_gathers_row_table_keeps_every_row_it_reads() -> None:
    """Every tap of output row ``y`` lies in the rows kept for it, and the rows released add up to the map."""
    g = _graph()
    for st in g.nodes:
        if not isinstance(st, GatherStage):
            continue
        keep, need, rel = gather_rows(st)
        ih, iw = st.in_shape[1:]
        ow = st.shape[2]
        assert sum(rel) == ih and need[-1] == ih - keep[-1]
        for y in range(st.shape[1]):
            for p in range(y * ow, (y + 1) * ow):
                assert all(keep[y] <= a // iw < keep[y] + need[y] for a in st.addr[p] if a >= 0), (st.name, y)


def test_the_schedule_is_a_frame_pipeline() -> None:
    """A stage behind a frame buffer starts after its producer's end, one behind a ring with its producer."""
    g = _graph()
    rings = rings_of(g)
    sched = schedule(g, rings)
    for i in range(len(g.nodes)):
        for k in g.inputs_of(i):
            p = g.buffers[k].producer
            if k in rings:
                assert sched.start[i] >= sched.start[p] and sched.end[i] >= sched.end[p]
            else:
                assert sched.start[i] >= sched.end[p]
        assert sched.end[i] - sched.start[i] >= g.nodes[i].cycles
    assert sched.latency == max(sched.end.values())


@needs_verilator
def test_a_unet_runs_at_its_slowest_stage(tmp_path: Path) -> None:
    """Five frames at full tvalid / tready: bit-exact, the interval within 2% of the design's slowest stage and
    the latency at most the schedule's (a bound) and not far under it."""
    from mixq.rtl.build import SimOptions, build_and_check

    im, values = _unet(5)
    res = build_and_check(im, values, "unet", tmp_path, 5, pe=8, simd=8, sim=SimOptions(valid=1.0, ready=1.0))
    s = res.summary
    assert res.ok and s["mismatches"] == 0 and s["simulation"]["received"] == 5 * 3 * 16 * 16, s["simulation"]
    t = s["design_cycles_per_frame"]
    assert 0.95 * t <= s["cycles_per_frame"] <= 1.02 * t, (s["cycles_per_frame"], t)
    assert 0.8 * s["design_latency_cycles"] <= s["latency_cycles"] <= s["design_latency_cycles"], s
    assert any(b.get("banks", 2) > 2 for b in s["buffers"]) and s["buffer_memory_bits"] == sum(
        b["memory_bits"] for b in s["buffers"])


@needs_verilator
def test_the_output_stream_sends_a_code_every_beat(tmp_path: Path) -> None:
    """A segmentation-like output (16 codes a pixel, 8 x 8 pixels) sets the pace: 1,024 beats a frame at full
    tready, as the design model says (the stream read each pixel word after the previous pixel's codes: 19 beats
    a pixel, 1,216 a frame)."""
    import torch
    from torch import nn

    from mixq.engine.runner import IntEngine
    from mixq.rtl.build import SimOptions, build_and_check

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1)).eval()
    x = torch.rand(4, 3, 8, 8)
    im = w8a8_int(m, x)
    res = build_and_check(im, IntEngine(im)(x, keep=True).values, "seg", tmp_path, 4, pe=16, simd=32,
                          sim=SimOptions(valid=1.0, ready=1.0))
    s = res.summary
    assert res.ok and s["mismatches"] == 0, s["simulation"]
    assert s["design_cycles_per_frame"] == 16 * 8 * 8 > max(ly["design_cycles"] for ly in s["layers"])
    assert 16 * 8 * 8 <= s["cycles_per_frame"] <= 1.02 * 16 * 8 * 8, s["cycles_per_frame"]


def _residual_net(down: bool) -> Any:
    """A stem, two identity blocks (conv-ReLU-conv + skip, ReLU), and with ``down`` a stride-2 block with a 1 x 1
    projection; a 1 x 1 head."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(4))
            if down:
                self.d1 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
                self.d2 = nn.Conv2d(8, 8, 3, padding=1)
                self.proj = nn.Conv2d(8, 8, 1, stride=2)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: Any) -> Any:
            x = torch.relu(self.stem(x))
            for i in (0, 2):
                x = torch.relu(x + self.c[i + 1](torch.relu(self.c[i](x))))
            if down:
                x = torch.relu(self.proj(x) + self.d2(torch.relu(self.d1(x))))
            return self.head(x)

    torch.manual_seed(0)
    return Net().eval()


def _residual_graph(down: bool, n: int = 1, size: int = 16) -> tuple[Any, dict[str, Any], Graph]:
    import dataclasses

    import torch

    from mixq import api
    from mixq.engine.convert import to_integer
    from mixq.engine.runner import IntEngine
    from mixq.formats import parse_format

    m = _residual_net(down)
    x = torch.rand(max(n, 4), 3, size, size)
    plan = api.default_plan("net", m, x, weight=parse_format("fixed8"), act=parse_format("ufixed8"))
    im = to_integer(api.quantize(m, dataclasses.replace(plan, residual_bits=8), x), x[:1])
    values = IntEngine(im)(x[:n], keep=True).values
    return im, values, lower_graph(im, values)


def test_a_residual_stream_writes_rings_to_its_layer_and_its_add() -> None:
    """A stage read by a layer and by an add writes a ring to each (all or none); the skip ring holds the rows the
    add is behind the stream in steady state (each stage's lag on the branch, two of slack), more than the
    branch's look-ahead (a smaller one deadlocks); the add reads the branch's last ring in step. Before, a stream
    read twice was two frame buffers of two or three banks each (the ResNet-20 stream copies: 3.9 of 4.6 Mbit)."""
    from mixq.rtl.frames import _chain, _lag

    _, _, g = _residual_graph(down=True)
    rings = rings_of(g)
    forks = [p for p in range(len(g.nodes)) if len(g.outputs_of(p)) > 1]
    assert len(forks) == 3  # the stem's stream and the two identity blocks' outputs
    skips = 0
    for p in forks:
        outs = g.outputs_of(p)
        assert all(k in rings for k in outs) or not any(k in rings for k in outs), p  # all or none
        for k in outs:
            st = g.nodes[g.buffers[k].consumer]
            if isinstance(st, PointStage) and len(st.sources) == 2 and k in rings:
                chain = _chain(g, p, k)
                assert chain is not None and all(c in rings for c in chain)
                h = g.buffers[k].shape[1]
                assert rings[k] == math.ceil(sum(h / g.buffers[c].shape[1] * _lag(g, c) for c in chain)) + 2
                look_ahead = sum(s.span[0] - 1 - s.padding[0] for c in chain
                                 if isinstance(s := g.nodes[g.buffers[c].consumer], Stage))
                assert rings[k] > look_ahead + 2
                skips += 1
    assert skips == 2
    # the last block's stream feeds a stride-2 3 x 3 layer and a 1 x 1 stride-2 projection (a window that reads no
    # odd row: its row gate waits for the rows it releases, else it released rows not yet written and 224 of 256
    # codes came out wrong): rings to both; their add reads the two chains' frames
    last = forks[-1]
    assert all(k in rings for k in g.outputs_of(last))
    proj = next(i for i, st in enumerate(g.nodes) if isinstance(st, Stage) and st.span[0] < st.stride[0])
    assert g.inputs_of(proj)[0] in rings


@needs_verilator
def test_a_residual_network_on_rings_is_bit_exact_at_its_slowest_stage(tmp_path: Path) -> None:
    """The residual net (8-bit streams) at 4 frames, full tvalid / tready: bit-exact, its interval within 2% of
    the design's slowest stage, its latency at most the schedule's."""
    from mixq.rtl.build import SimOptions, build_and_check

    im, values, g = _residual_graph(down=True, n=4)
    res = build_and_check(im, values, "resnet", tmp_path, 4, pe=4, simd=8, sim=SimOptions(valid=1.0, ready=1.0))
    s = res.summary
    assert res.ok and s["mismatches"] == 0 and s["simulation"]["received"] == 4 * 4 * 8 * 8, s["simulation"]
    t = s["design_cycles_per_frame"]
    assert 0.95 * t <= s["cycles_per_frame"] <= 1.02 * t, (s["cycles_per_frame"], t)
    assert s["latency_cycles"] <= s["design_latency_cycles"], s


def _projection_join(g: Graph) -> int:
    proj = next(i for i, st in enumerate(g.nodes) if isinstance(st, Stage) and st.span[0] < st.stride[0])
    return g.buffers[g.outputs_of(proj)[0]].consumer


def test_a_projection_blocks_add_reads_rings() -> None:
    """A projection block (session 22): its add's two inputs run back through chains to one fork written as rings,
    so both are rings — the projection's side, which lags less, holds the branch's lag (each stage's lag, in rows
    of the add's map, and two of slack), the branch's side a pointwise ring. Where the skip side would hold the
    whole map (16 x 16 input: 9 rows of 8) both stay frames: a ring beside a frame committed later deadlocks."""
    from mixq.rtl.frames import _back, _lag

    for size, rung in ((32, True), (16, False)):
        _, _, g = _residual_graph(down=True, size=size)
        rings = rings_of(g)
        join = _projection_join(g)
        ins = g.inputs_of(join)
        assert all((k in rings) == rung for k in ins), (size, ins, rings)
        if not rung:
            continue
        proj_side = next(k for k in ins if isinstance(g.nodes[g.buffers[k].producer], Stage)
                         and g.nodes[g.buffers[k].producer].span[0] < g.nodes[g.buffers[k].producer].stride[0])
        branch = next(k for k in ins if k != proj_side)
        back = _back(g, branch)
        assert back is not None
        h = g.buffers[proj_side].shape[1]
        want = math.ceil(sum(h / g.buffers[c].shape[1] * _lag(g, c) for c in back[1])) + 2
        assert rings[proj_side] == want == 9 and rings[branch] == 3


@needs_verilator
def test_a_projection_block_on_rings_is_bit_exact(tmp_path: Path) -> None:
    """The residual net at 32 x 32 (its projection block's add on rings), 4 frames, full tvalid / tready:
    bit-exact, its interval within 2% of the design's slowest stage."""
    from mixq.rtl.build import SimOptions, build_and_check

    im, values, g = _residual_graph(down=True, n=4, size=32)
    assert all(k in rings_of(g) for k in g.inputs_of(_projection_join(g)))
    res = build_and_check(im, values, "resnet32", tmp_path, 4, pe=4, simd=8, sim=SimOptions(valid=1.0, ready=1.0))
    s = res.summary
    assert res.ok and s["mismatches"] == 0 and s["simulation"]["received"] == 4 * 4 * 16 * 16, s["simulation"]
    t = s["design_cycles_per_frame"]
    assert 0.95 * t <= s["cycles_per_frame"] <= 1.02 * t, (s["cycles_per_frame"], t)

