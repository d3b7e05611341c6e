"""The timing rule of mixq's window sequencer (:mod:`mixq.rtl.glue`), one piece for the RTL's own cycle model
(:class:`mixq.rtl.netgraph.Stage`) and the streaming estimator (:mod:`mixq.hw.units`); and of its stream ports
(:func:`input_beats`, :func:`output_beats`: :mod:`mixq.rtl.frames` and :func:`mixq.hw.streaming.io_cycles`).

A layer engine computes ``run = tiles * fold`` cycles per input vector. Its window sequencer reads the window's
pixels from the frame buffer, one pixel word a cycle, and copies the vector into the engine's other input bank
while the engine computes, so an output pixel costs the slowest of the three:

* a **streamed** window (a dense layer whose pixel word is a whole number of engine words, ``simd`` divides the
  channels; ``mixq_window_stream``): its ``fold`` words go straight into the engine, which takes the window with
  its last write; the next window's reads start in that cycle, so their data land two cycles on in the other
  bank: ``max(run, fold + 1)``;
* a **gathered** window (``mixq_window``): ``max(run, reads, copy, 3)`` with ``reads`` the pixels read for this
  window and ``copy`` the words copied (``fold``; a depthwise / grouped layer one chunk per group, ``copy_lanes``
  a cycle). Where the stride is a whole number ``S`` of dilations and ``S < kw``, the window keeps its columns
  (:func:`reuse_columns`): the window after the first of an output row reads only its ``kh * S`` new pixels.
  Where the reads still bind, the window reads its ``kh`` rows in parallel (``RP = kh``: the buffer it reads has
  ``kh`` read ports, a copy of its memory each), one window column a cycle: ``kw`` reads for a row's first window,
  ``S`` (kept columns) or ``kw`` for the others (:func:`window_plan`).

Works on Python ints and on numpy arrays alike (the estimator prices every folding at once).
"""

from __future__ import annotations

from typing import Any

import numpy as np

READ_LATENCY = 3  # a window's data come two cycles after its last read, and one cycle of handshake
STREAM_GAP = 1  # a streamed window: the engine takes it with its last write, the next one's reads start then


def input_beats(shape: tuple[int, ...]) -> int:
    """Beats of a frame on the accelerator's input stream (``mixq_axis_in``): one pixel word a beat; a ``(C, H, W)``
    map is ``H * W`` beats, a vector one."""
    return int(np.prod(shape[1:])) if len(shape) == 3 else 1


def output_beats(shape: tuple[int, ...]) -> int:
    """Beats of a frame on the output stream (``mixq_axis_out``) at full ``tready``: one code a beat."""
    return int(np.prod(shape))


def line_pixels(kernel: tuple[int, int], width: int) -> int:
    """Pixels a sliding window's line buffer holds on a map ``width`` pixels wide: ``kh - 1`` rows and ``kw``
    pixels (none for a 1 x 1 window). The cheapest buffer of a streamed k x k operator, and the rows a stream
    waits behind one.

    >>> line_pixels((3, 3), 32), line_pixels((1, 1), 32), line_pixels((1, 5), 100)
    (67, 0, 5)
    """
    kh, kw = kernel
    return 0 if kh <= 1 and kw <= 1 else (kh - 1) * width + kw


def reuse_columns(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], out_w: int) -> int:
    """Columns a gathered window keeps from the one to its left (0: none): ``S = stride / dilation`` where that
    is a whole number below ``kw``, the window has more than one tap and the output row more than one pixel."""
    kh, kw = kernel
    sw, dw = stride[1], max(dilation[1], 1)
    if kh * kw <= 1 or out_w <= 1 or sw % dw:
        return 0
    s = sw // dw
    return s if 0 < s < kw else 0


def streams(channels: Any, simd: Any, grouped: bool) -> Any:
    """Whether the window goes straight into the engine (``mixq_window_stream``): a dense layer whose pixel is a
    whole number of ``simd``-code engine words (arrays broadcast)."""
    return np.logical_not(grouped) & (np.asarray(channels) % np.maximum(simd, 1) == 0)


def copy_cycles(groups: int, fold: Any, lanes: Any) -> Any:
    """Cycles the sequencer copies a window into the engine: ``fold`` words, or for a depthwise / grouped layer a
    chunk of ``fold`` words per group, ``lanes`` (its dot units) a cycle (arrays broadcast)."""
    return -(-(groups * np.asarray(fold)) // np.maximum(lanes, 1)) if groups > 1 else fold


def first_reads(kernel: tuple[int, int], rows: Any = 1) -> Any:
    """Reads of an output row's first window: ``kh * kw`` pixels one a cycle, or ``kw`` columns with its ``kh``
    rows read in parallel (``rows`` = ``kh``); arrays broadcast."""
    return (kernel[0] // np.asarray(rows)) * kernel[1]


def later_reads(kernel: tuple[int, int], reuse: Any, rows: Any = 1) -> Any:
    """Reads of a window after the first of its output row: ``kh * reuse`` where it keeps columns, else all
    ``kh * kw``; ``rows`` (1 or ``kh``) rows a read (arrays broadcast)."""
    r = np.asarray(reuse)
    n = kernel[0] // np.asarray(rows)
    return np.where(r > 0, n * r, n * kernel[1])


def pixel_cycles(run: Any, reads: Any, copy: Any, fold: Any, streamed: Any) -> Any:
    """Cycles of one output pixel (see the module docstring); arrays broadcast."""
    gathered = np.maximum(np.maximum(run, reads), np.maximum(copy, READ_LATENCY))
    return np.where(streamed, np.maximum(run, np.asarray(fold) + STREAM_GAP), gathered)


def window_plan(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], out_w: int, run: Any,
                copy: Any, fold: Any, streamed: Any) -> tuple[Any, Any]:
    """``(RS, RP)`` of a gathered window, arrays broadcast: the columns it keeps (:func:`reuse_columns` where reading
    fewer pixels makes a pixel faster; they cost a multiplexer per window bit, see :mod:`mixq.hw.units`), and the
    rows it reads a cycle: ``kh`` where that makes a pixel after a row's first faster still (it costs ``kh - 1``
    copies of the buffer it reads), else 1. With parallel rows, columns are kept only where that still helps.
    A streamed window neither keeps nor reads in parallel (0, 1)."""
    s = reuse_columns(kernel, stride, dilation, out_w)
    gathered = np.logical_not(streamed)

    def later(reuse: int, rows: int) -> Any:
        return pixel_cycles(run, later_reads(kernel, reuse, rows), copy, fold, False)

    serial, keep = later(0, 1), later(s, 1)
    reuse = np.where(gathered & (s > 0) & (keep < serial), s, 0)
    kh = kernel[0]
    if kh <= 1:
        return reuse, np.ones_like(reuse)
    plain, both = later(0, kh), later(s, kh)
    par = gathered & (np.minimum(plain, both) < np.minimum(serial, keep))
    rows = np.where(par, kh, 1)
    reuse = np.where(par, np.where((s > 0) & (both < plain), s, 0), reuse)
    return reuse, rows


def frame_cycles(out_hw: tuple[int, int], kernel: tuple[int, int], reuse: Any, run: Any, copy: Any, fold: Any,
                 streamed: Any, rows: Any = 1) -> Any:
    """Cycles of a frame's output pixels, without the frame's fill and drain: every row's first window reads
    :func:`first_reads`, the others :func:`later_reads` (``reuse`` > 0: the window keeps columns; ``rows``: rows
    read a cycle)."""
    oh, ow = out_hw
    first = pixel_cycles(run, first_reads(kernel, rows), copy, fold, streamed)
    rest = pixel_cycles(run, later_reads(kernel, reuse, rows), copy, fold, streamed)
    return oh * (first + (ow - 1) * rest)
