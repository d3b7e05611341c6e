"""The window sequencer's timing rule (:mod:`mixq.hw.window`), shared by the RTL's cycle model and the estimator."""

from __future__ import annotations

import numpy as np
import pytest

from mixq.hw.window import frame_cycles, kept_columns, later_reads, pixel_cycles, reuse_columns


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
    assert pixel_cycles(1, 9, 1, 1, True) == 4  # streamed: fold + 3, the reads are its words
    assert later_reads((3, 3), 0) == 9 and later_reads((3, 3), 2) == 6


def test_kept_columns_only_where_they_make_the_layer_faster() -> None:
    run = np.array([1, 5, 9, 20])
    got = kept_columns((3, 3), (1, 1), (1, 1), 16, run, run, run, np.zeros(4, dtype=bool))
    assert got.tolist() == [1, 1, 0, 0]  # at 9 cycles of computing the reads no longer bind
    assert kept_columns((3, 3), (1, 1), (1, 1), 16, 1, 1, 1, True) == 0  # a streamed window holds no window


def test_a_frame_of_kept_columns() -> None:
    # 16 x 16 outputs, 1 cycle of computing: each row's first window reads 9 pixels, the other 15 read 3
    assert frame_cycles((16, 16), (3, 3), 1, 1, 1, 1, False) == 16 * (9 + 15 * 3)
    assert frame_cycles((16, 16), (3, 3), 0, 1, 1, 1, False) == 16 * 16 * 9
    runs = np.arange(1, 30)
    with_keep = frame_cycles((8, 8), (3, 3), 1, runs, runs, runs, False)
    without = frame_cycles((8, 8), (3, 3), 0, runs, runs, runs, False)
    assert (with_keep <= without).all() and (with_keep >= 64 * runs).all()
