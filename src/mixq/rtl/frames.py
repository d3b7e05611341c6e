"""Frames in flight in the whole-network accelerator: when each stage works on a frame, and how many banks each
frame buffer needs so that no frame waits for a bank.

Every buffer that is not a ring of rows (:func:`~mixq.rtl.netgraph.ring_rows`) holds whole frames: its producer
takes a free bank when it starts a frame and commits it when the frame is written, its consumer starts once a bank
is full and releases it when it has read the frame. Along one path two banks are enough (a producer writes frame
``n + 1`` while its consumer reads ``n``). A skip is not: a U-Net's encoder writes the skip of frame ``n`` at the
start of the network and its decoder reads it after every deeper level has passed frame ``n`` through, so the
frames the encoder writes meanwhile need banks of their own. With two, the encoder waited for the decoder and a
MONAI BasicUNet ran at 1.9x its slowest stage's frame time (session 19).

:func:`schedule` times the first frame through the graph, each stage as its own design model prices it
(``cycles``): a stage behind a frame buffer starts when its producer has committed the frame; one behind a ring
starts with its producer and ends, at the latest, its share of the ring's rows after its producer ends (a bound:
the output rows that read the input's last row are fewer; with those alone the zoo U-Net's spans came out short
and it ran 1.7% slow); and a ring's
writer ends no earlier than its reader's last rows before the reader ends (it cannot run further ahead than the
ring's rows: a concat writing a ring to a slow layer ends with that layer, not after its own cycles). In steady state
frame ``n`` runs ``n`` intervals later, the interval ``T`` being the slowest stage's (or stream's) frame time. A
buffer holds frame ``n`` from its producer's start to its consumer's end, a span ``D``, so ``ceil(D / T)`` frames
at once: :func:`frame_banks` gives each frame buffer that many banks (of ``D`` taken 10% longer, ``SLACK``), at
least two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mixq.rtl.netgraph import Graph, ring_rows

#: cycles between a producer's commit and its consumer's start (the registered full flag, the start register)
HANDSHAKE = 2

#: a frame buffer's span is taken this much longer than scheduled before it is divided into intervals: the
#: schedule prices each stage alone and a ring-coupled chain only by its rows, so a span that fills its banks to
#: within a few percent ran 5.5% slow on the zoo U-Net (4 banks for a span of 3.97 intervals, before the writer
#: of a ring was held to its reader)
SLACK = 0.1

def input_cycles(g: Graph) -> int:
    """Cycles per frame of the input stream: one pixel word a beat."""
    b = next(b for b in g.buffers if b.producer == -1)
    return b.shape[1] * b.shape[2]


def output_cycles(g: Graph) -> int:
    """Cycles per frame of the output stream at full ``tready``: one code a beat (``mixq_axis_out`` reads the
    pixel words ahead)."""
    b = next(b for b in g.buffers if b.consumer == -1)
    c, h, w = b.shape
    return c * h * w


@dataclass(frozen=True)
class Schedule:
    """The first frame's start and end cycle of every node (-1: the input stream, ``len(nodes)``: the output
    stream) and the steady-state interval."""

    start: dict[int, float]
    end: dict[int, float]
    interval: int

    @property
    def latency(self) -> float:
        """Cycles from the first input beat to the last output beat of a frame."""
        return max(self.end.values())


def rings_of(g: Graph) -> dict[int, int]:
    """Rows of every ring buffer of ``g`` (buffer index -> rows; frame buffers left out)."""
    return {k: r for k in range(len(g.buffers)) if (r := ring_rows(g, k))}


def schedule(g: Graph, rings: Mapping[int, int] | None = None) -> Schedule:
    """Each node's start and end on the first frame (see the module docstring); ``rings``: the ring buffers'
    rows (default :func:`rings_of`)."""
    rings = rings_of(g) if rings is None else rings
    out = len(g.nodes)
    cyc = {-1: input_cycles(g), out: output_cycles(g)}
    cyc.update({i: int(n.cycles) for i, n in enumerate(g.nodes)})
    readers = {i: g.inputs_of(i) for i in range(len(g.nodes))}
    readers[out] = [k for k, b in enumerate(g.buffers) if b.consumer == -1]
    floor: dict[int, float] = {}  # the latest each writer of a ring ends, from its reader (the backward pass)
    while True:
        start: dict[int, float] = {-1: 0.0}
        end: dict[int, float] = {-1: float(cyc[-1])}
        for i in [*range(len(g.nodes)), out]:
            s, e = 0.0, floor.get(i, 0.0)
            for k in readers[i]:
                b, r = g.buffers[k], rings.get(k, 0)
                if r:  # rows: starts with its producer, its last rows wait for the producer's last rows
                    s = max(s, start[b.producer] + HANDSHAKE)
                    e = max(e, end[b.producer] + cyc[i] * min(1.0, r / b.shape[1]))
                else:
                    s = max(s, end[b.producer] + HANDSHAKE)
            start[i], end[i] = s, max(e, s + cyc[i])
        new = dict(floor)
        for k in sorted(rings, key=lambda k: -g.buffers[k].producer):  # a ring's writer cannot run more than
            b = g.buffers[k]                                           # its rows ahead of its reader
            if b.producer >= 0:
                c = out if b.consumer == -1 else b.consumer
                lo = max(end[c], new.get(c, 0.0)) - cyc[c] * min(1.0, rings[k] / b.shape[1])
                if lo > end[b.producer] + 1e-9:
                    new[b.producer] = max(new.get(b.producer, 0.0), lo)
        if new == floor:
            break
        floor = new
    return Schedule(start, end, max(cyc.values()))


def frame_banks(g: Graph, rings: Mapping[int, int] | None = None) -> dict[int, int]:
    """Banks of each frame buffer (ring buffers left out): the frames its span holds at the steady interval, at
    least two."""
    rings = rings_of(g) if rings is None else rings
    sched = schedule(g, rings)
    out = len(g.nodes)
    banks: dict[int, int] = {}
    for k, b in enumerate(g.buffers):
        if k in rings:
            continue
        consumer = out if b.consumer == -1 else b.consumer
        span = sched.end[consumer] - sched.start[b.producer]
        banks[k] = max(2, math.ceil(span * (1 + SLACK) / sched.interval))
    return banks


def buffer_bits(g: Graph, rings: Mapping[int, int], banks: Mapping[int, int]) -> list[int]:
    """Bits of memory per buffer: a ring's rows, a frame buffer's banks of whole frames."""
    return [b.shape[0] * b.bits * b.shape[2] * (rings[k] if k in rings else b.shape[1] * banks[k])
            for k, b in enumerate(g.buffers)]


__all__ = ["HANDSHAKE", "SLACK", "Schedule", "buffer_bits", "frame_banks", "input_cycles", "output_cycles",
           "rings_of", "schedule"]
