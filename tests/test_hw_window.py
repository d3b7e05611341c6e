"""The window sequencer's timing rule (:mod:`mixq.hw.window`), shared by the RTL's cycle model and the estimator."""

from __future__ import annotations

import numpy as np
import pytest

from mixq.hw.window import first_reads, frame_cycles, later_reads, pixel_cycles, reuse_columns, window_plan


@pytest.mark.parametrize(("kernel", "stride", "dilation", "out_w", "want"), [
    ((3, 3), (1, 1), (1, 1), 32, 1), ((3, 3), (2, 2), (1, 1), 16, 2), ((3, 3), (2, 2), (2, 2), 16, 1),
    ((3, 3), (1, 1), (2, 2), 32, 0),  # stride 1, taps 2 apart: the next window's taps are no window's
    ((3, 3), (3, 3), (1, 1), 8, 0),  # nothing shared
    ((1, 1), (1, 1), (1, 1), 32, 0), ((3, 3), (1, 1), (1, 1), 1, 0), ((5, 5), (2, 2), (1, 1), 8, 2)])
def test_columns_a_window_can_keep(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                                   out_w: int, want: int) -> None:
    assert reuse_columns(kernel, stride, dilation, out_w) == want


def test_reads_copy_and_engine_set_the_pixel() -> None:
    assert pixel_cycles(1, 9, 1, 1, False) == 9  # read-bound
    assert pixel_cycles(12, 9, 1, 1, False) == 12  # engine-bound
    assert pixel_cycles(1, 1, 1, 1, False) == 3  # a window's data come two cycles after its last read
    assert pixel_cycles(1, 9, 1, 1, True) == 2  # streamed: fold + 1, the reads are its words
    assert pixel_cycles(3, 9, 1, 1, True) == 3 and pixel_cycles(1, 9, 1, 4, True) == 5
    assert later_reads((3, 3), 0) == 9 and later_reads((3, 3), 2) == 6
    assert later_reads((3, 3), 0, 3) == 3 and later_reads((3, 3), 2, 3) == 2  # a column of 3 rows a read
    assert first_reads((3, 3)) == 9 and first_reads((3, 3), 3) == 3 and first_reads((5, 5), 5) == 5


def test_kept_columns_only_where_they_make_the_layer_faster() -> None:
    run = np.array([1, 5, 9, 20])
    rs, rp = window_plan((3, 3), (1, 1), (1, 1), 16, run, run, run, np.zeros(4, dtype=bool))
    assert rs.tolist() == [1, 1, 0, 0]  # at 9 cycles of computing the reads no longer bind
    assert rp.tolist() == [1, 1, 1, 1]  # 3 reads are the 3 cycles a window's data take: no row in parallel pays
    assert window_plan((3, 3), (1, 1), (1, 1), 16, 1, 1, 1, True) == (0, 1)  # a streamed window holds no window


@pytest.mark.parametrize(("kernel", "stride", "dilation", "run", "want"), [
    ((3, 3), (2, 2), (1, 1), 1, (0, 3)),  # Tomato's first layer: RS 2 reads 6, 3 columns of 3 rows take 3
    ((3, 3), (2, 2), (1, 1), 4, (0, 3)),  # 6 reads -> 3 columns: the engine's 4 cycles bind
    ((3, 3), (2, 2), (1, 1), 6, (2, 1)),  # RS 2's 6 reads match the engine: no copies of the buffer
    ((3, 3), (1, 1), (2, 2), 1, (0, 3)),  # a dilated stride-1 window keeps nothing: 9 reads -> 3
    ((5, 5), (2, 2), (1, 1), 1, (2, 5)),  # both: 10 reads (RS 2) -> 5 columns -> 2 kept-column reads (3 cycles)
    ((1, 3), (1, 1), (1, 1), 1, (0, 1)),  # one row: nothing to read in parallel
    ((3, 3), (1, 1), (1, 1), 20, (0, 1))])  # engine-bound
def test_rows_in_parallel_only_where_the_reads_still_bind(kernel: tuple[int, int], stride: tuple[int, int],
                                                          dilation: tuple[int, int], run: int,
                                                          want: tuple[int, int]) -> None:
    rs, rp = window_plan(kernel, stride, dilation, 16, run, 1, 1, False)
    assert (int(rs), int(rp)) == want
    pixel = {(a, b): int(pixel_cycles(run, later_reads(kernel, a, b), 1, 1, False))
             for a in (0, reuse_columns(kernel, stride, dilation, 16)) for b in {1, kernel[0]}}
    assert pixel[want] == min(pixel.values())  # no other plan computes a row's later pixels faster


def test_a_frame_of_kept_columns() -> None:
    # 16 x 16 outputs, 1 cycle of computing: each row's first window reads 9 pixels, the other 15 read 3
    assert frame_cycles((16, 16), (3, 3), 1, 1, 1, 1, False) == 16 * (9 + 15 * 3)
    assert frame_cycles((16, 16), (3, 3), 0, 1, 1, 1, False) == 16 * 16 * 9
    runs = np.arange(1, 30)
    with_keep = frame_cycles((8, 8), (3, 3), 1, runs, runs, runs, False)
    without = frame_cycles((8, 8), (3, 3), 0, runs, runs, runs, False)
    assert (with_keep <= without).all() and (with_keep >= 64 * runs).all()
    # rows in parallel: a row's first window reads 3 columns, the others 3 (or 1 kept-column read; data take 3)
    assert frame_cycles((16, 16), (3, 3), 0, 1, 1, 1, False, 3) == 16 * 16 * 3
    assert frame_cycles((16, 16), (5, 5), 2, 1, 1, 1, False, 5) == 16 * (5 + 15 * 3)


def test_the_estimator_prices_a_copy_of_the_line_buffer_per_row_read_in_parallel() -> None:
    """Tomato's first layer (MobileNet-V1, 3 channels, 3 x 3, stride 2, 224 x 224) at 1 cycle of computing a pixel:
    kept columns alone read 6 pixels a window, its 3 rows in parallel 3 columns (RS 0, RP 3): the frame at the
    3 cycles a window's data take, 3 copies of the line buffer, and the column writes' LUTs."""
    from mixq import zoo
    from mixq.formats import FixedPoint
    from mixq.graph import capture
    from mixq.hw.cost import CostModel
    from mixq.hw.lower import lower
    from mixq.hw.memory import choose_memory
    from mixq.hw.parts import get_part
    from mixq.hw.units import (
        PARALLEL_LUT,
        PARALLEL_LUT_PER_BIT,
        ArchOptions,
        compute_engine,
        line_buffer_bits,
        window_cycles,
        window_registers,
    )
    from mixq.plan import uniform_plan

    specs = capture(zoo.load("mobilenet_v1"), zoo.input_shape("mobilenet_v1"))
    names = [s.name for s in specs if s.is_compute]
    plan = uniform_plan("mobilenet_v1", names, FixedPoint(8), FixedPoint(8, signed=False), signed_inputs=names[:1])
    part = get_part("xcvu9p")
    first = next(x for x in lower(specs, plan, part) if x.is_compute)  # type: ignore[arg-type]
    assert first.spec.in_shape == (3, 224, 224) and first.spec.stride == (2, 2)
    cyc, rs, rp = window_cycles(first, np.array([27, 9]), np.array([1, 3]), np.array([1, 3]), np.array([32, 32]))
    assert (rs.tolist(), rp.tolist()) == ([0, 0], [3, 3])
    assert cyc.tolist() == [112 * 112 * 3, 112 * 112 * 3]  # was 112 * (9 + 111 * 6) with one pixel a read
    e = compute_engine(first, 32, 27, part, CostModel.default(), ArchOptions())
    assert e.cycles == 112 * 112 * 3
    bits = 9 * 3 * 8  # the gathered window: 9 pixels of 3 8-bit codes (27 does not divide 3: gathered)
    lb = e.detail["linebuf"]
    width = 27 * 8  # the buffer's word: simd codes
    depth = -(-line_buffer_bits(first) // width)
    cm = CostModel.default()
    one = choose_memory(width, depth, part, "auto", *cm.lutram_coefs(), 1)
    three = choose_memory(width, depth, part, "auto", *cm.lutram_coefs(), 3)
    assert (lb.bram, lb.uram) == (float(three.bram), float(three.uram)) and three.bram + three.lut > one.bram + one.lut
    regs = window_registers(first, np.array([27]), np.array([0]), np.array([3]))[0]
    assert lb.lut == pytest.approx(three.lut + regs[0]) and regs[0] > PARALLEL_LUT_PER_BIT * bits + PARALLEL_LUT
