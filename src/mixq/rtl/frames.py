"""The buffers of the whole-network accelerator: which are rings of rows, when each stage works on a frame, and how
many banks each frame buffer needs so that no frame waits for a bank.

:func:`ring_rows` says which buffers are rings of rows (a reader that reads rows in order, one writer that writes
them in order). Every other buffer holds whole frames: its producer takes a free bank when it starts a frame and
commits it when the frame is written, its consumer starts once a bank is full and releases it when it has read the
frame. Along one path two banks are enough (a producer writes frame ``n + 1`` while its consumer reads ``n``). A
skip is not: a U-Net's encoder writes the skip of frame ``n`` at the start of the network and its decoder reads it
after every deeper level has passed frame ``n`` through, so the frames the encoder writes meanwhile need banks of
their own. With two, the encoder waited for the decoder and a MONAI BasicUNet ran at 1.9x its slowest stage's
frame time (session 19).

:func:`schedule` times the first frame through the graph, each stage as its own design model prices it
(``cycles``): a stage behind a frame buffer starts when its producer has committed the frame; one behind a ring
starts with its producer and ends, at the latest, its share of the ring's rows after its producer ends (a bound:
the output rows that read the input's last row are fewer; with those alone the zoo U-Net's spans came out short
and it ran 1.7% slow); and a ring's writer ends no earlier than its reader's last rows before the reader ends (it
cannot run further ahead than the ring's rows: a concat writing a ring to a slow layer ends with that layer, not
after its own cycles). In steady state frame ``n`` runs ``n`` intervals later, the interval ``T`` being the
slowest stage's (or stream's) frame time, except that a stage held to a slower one by its rings, whose first
frame runs longer than ``T``, starts each later frame only when the one before ends (:meth:`Schedule.steady_start`).
A buffer holds frame ``n`` from its producer's steady start to its consumer's end, a span ``D``, so ``ceil(D / T)``
frames at once: :func:`frame_banks` gives each frame buffer that many banks
(of ``D`` taken 10% longer, ``SLACK``), at least two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mixq.hw.window import input_beats, output_beats
from mixq.rtl.netgraph import GatherStage, Graph, PointStage, Stage

#: cycles between a producer's commit and its consumer's start (the registered full flag, the start register)
HANDSHAKE = 2

#: a frame buffer's span is taken this much longer than scheduled before it is divided into intervals: the
#: schedule prices each stage alone and a ring-coupled chain only by its rows, so a span that fills its banks to
#: within a few percent ran 5.5% slow on the zoo U-Net (4 banks for a span of 3.97 intervals, before the writer
#: of a ring was held to its reader)
SLACK = 0.1


def input_cycles(g: Graph) -> int:
    """Cycles per frame of the input stream: one pixel word a beat (:func:`mixq.hw.window.input_beats`)."""
    return input_beats(next(b for b in g.buffers if b.producer == -1).shape)


def output_cycles(g: Graph) -> int:
    """Cycles per frame of the output stream at full ``tready``: one code a beat (``mixq_axis_out`` reads the
    pixel words ahead; :func:`mixq.hw.window.output_beats`)."""
    return output_beats(next(b for b in g.buffers if b.consumer == -1).shape)


@dataclass(frozen=True)
class Schedule:
    """The first frame's start and end cycle of every node (-1: the input stream, ``len(nodes)``: the output
    stream) and the steady-state interval."""

    start: dict[int, float]
    end: dict[int, float]
    interval: int

    def steady_start(self, i: int) -> float:
        """When stage ``i`` takes its output banks for a frame in steady state, relative to the first frame's
        schedule: its start, or later where the frame before still runs (a stage held to a slower one by its rings
        spans more than an interval from start to end, and starts the next frame only at this one's end)."""
        return max(self.start[i], self.end[i] - self.interval)

    def span(self, g: Graph, k: int) -> float:
        """Cycles buffer ``k`` holds a frame in steady state: from its writer's steady start to its reader's end."""
        b = g.buffers[k]
        return self.end[_reader(g, k)] - self.steady_start(b.producer)

    @property
    def latency(self) -> float:
        """Cycles from the first input beat to the last output beat of a frame."""
        return max(self.end.values())


def _reader(g: Graph, k: int) -> int:
    """The node that reads buffer ``k`` in a :class:`Schedule` (``len(g.nodes)``: the output stream)."""
    c = g.buffers[k].consumer
    return len(g.nodes) if c == -1 else c


def gather_rows(st: GatherStage) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """How a gather stage reads a ring of its input rows, per output row ``y``: ``keep[y]`` (the input rows
    released before it starts), ``need[y]`` (the rows past those it waits for: every row it or an earlier row
    reads; the last row waits for every row) and ``rel[y]`` (the rows it releases when done: those no later row
    reads)."""
    ih, iw = st.in_shape[1], st.in_shape[2]
    oh, ow = st.shape[1], st.shape[2]
    rows = [{a // iw for p in range(y * ow, (y + 1) * ow) for a in st.addr[p] if a >= 0} for y in range(oh)]
    hi, top = [], -1
    for y in range(oh):
        top = ih - 1 if y == oh - 1 else max([top, *rows[y]])
        hi.append(top)
    later, low = [ih] * oh, ih  # the lowest row a later output row reads
    for y in range(oh - 1, -1, -1):
        later[y] = low
        low = min([low, *rows[y]])
    keep = [0]
    for y in range(oh):
        keep.append(max(keep[-1], min(later[y], hi[y] + 1)))
    need = tuple(max(0, hi[y] - keep[y] + 1) for y in range(oh))
    return tuple(keep[:-1]), need, tuple(keep[y + 1] - keep[y] for y in range(oh))


def _settled(g: Graph, p: int, q: int) -> bool:
    """Whether stage ``p``'s frame is committed before stage ``q`` can start the same frame: ``p`` writes frame
    buffers (more than one buffer, not rings: a skip and the main path) and ``q`` is downstream of it."""
    if p < 0 or len(g.outputs_of(p)) < 2 or _fanout_rings(g, p):
        return False
    seen, todo = {p}, [p]
    while todo:
        for k in g.outputs_of(todo.pop()):
            c = g.buffers[k].consumer
            if c == q:
                return True
            if c >= 0 and c not in seen:
                seen.add(c)
                todo.append(c)
    return False


def _reader_rows(g: Graph, j: int) -> int:
    """Rows of a ring for buffer ``j``'s reader alone (0: it cannot read a ring): a layer stage's window
    ``kh + stride + 1``, a pointwise stage 3, a gather stage the rows of its row table, and one of slack."""
    b = g.buffers[j]
    st = g.nodes[b.consumer] if b.consumer >= 0 else None
    if st is None:
        return 0
    if isinstance(st, Stage):
        r = st.span[0] + st.stride[0] + 1
    elif isinstance(st, PointStage):
        r = 3
    else:  # the most rows an output row holds, the most the writer moves on meanwhile, and one of slack
        keep, need, _ = gather_rows(st)
        ends = [k + n for k, n in zip(keep, need, strict=True)]
        r = max(need) + max(b - a for a, b in zip([0, *ends], ends, strict=False)) + 1
    return r if 0 < r < b.shape[1] else 0


def _is_join(g: Graph, i: int) -> bool:
    st = g.nodes[i] if i >= 0 else None
    return isinstance(st, PointStage) and len(st.sources) > 1


def _is_skip(g: Graph, k: int) -> bool:
    """Buffer ``k`` is a fork's skip into a join (its writer writes more than one buffer), or the side of a
    projection block's join that lags less (:func:`_paired`)."""
    b = g.buffers[k]
    if b.producer < 0 or b.consumer < 0 or not _is_join(g, b.consumer):
        return False
    if len(g.outputs_of(b.producer)) > 1:
        return True
    pair = _paired(g, k)
    return pair is not None and pair[0]


def _chain(g: Graph, p: int, j: int) -> list[int] | None:
    """The buffers of the one path from producer ``p`` to the join reading buffer ``j`` other than ``j``, where
    that path is a chain (every stage on it reads one buffer and writes one, the first buffer is written by
    ``p``): in order; ``None`` where it is not."""
    join = g.buffers[j].consumer
    others = [k for k in g.inputs_of(join) if k != j]
    back = _back(g, others[0]) if len(others) == 1 else None  # p writes several buffers: the walk stops there
    return back[1] if back is not None and back[0] == p else None


def _lag(g: Graph, k: int) -> int:
    """Rows of buffer ``k`` its reader is behind its writer in steady state: a window's rows below its centre
    row and the ``stride`` being filled, a pointwise stage one, each and one row being computed."""
    st = g.nodes[g.buffers[k].consumer]
    if isinstance(st, Stage):
        return st.span[0] - st.padding[0] + st.stride[0]
    return 2


def _fanout_rings(g: Graph, p: int) -> dict[int, int]:
    """Rings for every buffer stage ``p`` writes, where it writes more than one (a residual stream read by a
    layer and by an add), or none. Each reader must read a ring (:func:`_reader_rows`); a join's skip must be the
    short side of a fork whose other side is a chain of rings from ``p`` (:func:`_chain`), and then holds the rows
    the join is behind ``p`` in steady state: each stage's lag on the chain (:func:`_lag`), in ``p``'s rows (a
    stride-2 layer's output row is two of its input rows), and two of slack (FINN's skip FIFO, in rows). A join
    reads the skip ring and the chain's last ring in step, so a skip under the chain's look-ahead (the rows below
    each window's centre, and a row being written) deadlocks: the chain waits for rows ``p`` cannot write. All or
    none: a writer waits for the room of every ring it writes, and a frame buffer beside a ring would commit its
    frame only after the ring's reader has taken all but its last rows."""
    outs = g.outputs_of(p)
    if p < 0 or len(outs) < 2 or isinstance(g.nodes[p], GatherStage):
        return {}
    rows: dict[int, int] = {}
    for j in outs:
        c = g.buffers[j].consumer
        if c < 0 or isinstance(g.nodes[c], GatherStage) or not (r := _reader_rows(g, j)):
            return {}
        if _is_join(g, c):
            chain = _chain(g, p, j)
            if chain is None or not all(_reader_rows(g, k) for k in chain):
                return {}
            h = g.buffers[j].shape[1]  # p's rows per frame
            r = math.ceil(sum(h / g.buffers[k].shape[1] * _lag(g, k) for k in chain)) + 2
            if r >= h:
                return {}
        rows[j] = r
    return rows


def _back(g: Graph, j: int) -> tuple[int, list[int]] | None:
    """From buffer ``j`` back through stages of one input and one output to the first stage writing more than one
    buffer: (that fork, the buffers from it to ``j`` in order); ``None`` where the path is not such a chain."""
    path = [j]
    while len(path) <= len(g.buffers):
        p = g.buffers[path[-1]].producer
        if p < 0:
            return None
        if len(g.outputs_of(p)) > 1:
            return p, path[::-1]
        ins = g.inputs_of(p)
        if len(ins) != 1:
            return None
        path.append(ins[0])
    return None


def _paired(g: Graph, j: int) -> tuple[bool, int] | None:
    """A join whose two inputs both run back through chains to one fork written as rings (a projection block: a
    1 x 1 projection beside the branch, both from the block's input): ``(j is the side that lags less, rows)`` —
    that side holds the other chain's lag in rows of its map and two of slack, as a fork's skip ring does
    (:func:`_fanout_rings`), the other reads a pointwise ring; ``None`` where not so (or the skip side would hold
    a whole frame)."""
    join = g.buffers[j].consumer
    ins = g.inputs_of(join) if join >= 0 and _is_join(g, join) else []
    if len(ins) != 2 or g.outputs_of(g.buffers[j].producer) != [j]:
        return None
    mine, theirs = _back(g, j), _back(g, ins[0] if ins[1] == j else ins[1])
    if mine is None or theirs is None or mine[0] != theirs[0] or len(theirs[1]) < 2:
        return None
    fork = _fanout_rings(g, mine[0])
    if mine[1][0] not in fork or theirs[1][0] not in fork or not all(
            _reader_rows(g, k) for k in (*mine[1][1:], *theirs[1][1:])):
        return None
    h = g.buffers[j].shape[1]

    def lag(path: list[int]) -> float:
        return sum(h / g.buffers[k].shape[1] * _lag(g, k) for k in path)

    skip = (lag(mine[1]), j) < (lag(theirs[1]), theirs[1][-1])
    r = math.ceil(lag(theirs[1] if skip else mine[1])) + 2  # the skip side's rows: the other chain's lag
    if r >= h:
        return None  # both sides frames: a ring beside a frame its writer commits later would deadlock
    return (True, r) if skip else (False, _reader_rows(g, j))


def ring_rows(g: Graph, j: int) -> int:
    """Rows of the ring (line) buffer buffer ``j`` can be, or 0 for a frame buffer. A ring holds, for a layer
    stage's window, ``kh + stride + 1`` rows (the window's rows, the next ``stride`` the writer fills meanwhile,
    and one of slack: with ``kh + stride`` a writer and a reader of the same speed waited for each other, a chain
    of such layers ran 16-19% below its slowest layer), for a pointwise stage three (the row it reads, the row
    being written, one of slack), for a gather stage the most rows an output row holds, the most the writer moves
    on meanwhile, and one. It is a ring where its reader reads rows in raster order (a layer stage's
    window or a pointwise stage) and one writer fills it in raster order (the input stream, or a layer or
    pointwise or gather stage that writes no other buffer, or every buffer a stage writes as rings:
    :func:`_fanout_rings`). A gather stage reads a ring where its output rows
    read input rows in order (:func:`gather_rows`; a transpose does not). Skips are read a frame later, and a
    window as tall as the map (a linear layer after a flatten) needs the whole frame. A pointwise stage of two
    inputs (an add, a concat) waits on both: one input is a ring only where every other is a frame its producer
    has committed before this one's writer can start (a skip written beside the main path, :func:`_settled`) or a
    skip ring of the fork this input's chain starts at; else a ring would stall its writer, and through a shared
    producer the other input, until that input comes (a deadlock where it is a frame later)."""
    b = g.buffers[j]
    if b.producer >= 0 and g.outputs_of(b.producer) != [j]:
        return _fanout_rings(g, b.producer).get(j, 0)
    if b.consumer < 0:
        return 0
    if _is_join(g, b.consumer):
        if (pair := _paired(g, j)) is not None:
            return pair[1]
        for k in g.inputs_of(b.consumer):
            if k == j:
                continue
            fork = g.buffers[k].producer
            skip = _fanout_rings(g, fork).get(k, 0) if fork >= 0 else 0
            if not (skip and (chain := _chain(g, fork, k)) is not None and chain[-1] == j) and \
                    not _settled(g, fork, b.producer):
                return 0
    return _reader_rows(g, j)


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
    share = {k: min(1.0, r / g.buffers[k].shape[1]) for k, r in rings.items()}  # a ring's rows, of the frame's
    floor: dict[int, float] = {}  # the latest each writer of a ring ends, from its reader (the backward pass)
    while True:
        start: dict[int, float] = {-1: 0.0}
        end: dict[int, float] = {-1: float(cyc[-1])}
        for i in [*range(len(g.nodes)), out]:
            s, e = 0.0, floor.get(i, 0.0)
            for k in readers[i]:
                b = g.buffers[k]
                if k in share:  # rows: starts with its producer, its last rows wait for the producer's last rows
                    s = max(s, start[b.producer] + HANDSHAKE)
                    e = max(e, end[b.producer] + cyc[i] * share[k])
                else:
                    s = max(s, end[b.producer] + HANDSHAKE)
            start[i], end[i] = s, max(e, s + cyc[i])
        new = dict(floor)
        for k in sorted(rings, key=lambda k: -g.buffers[k].producer):  # a ring's writer cannot run more than
            b = g.buffers[k]                                           # its rows ahead of its reader
            if b.producer >= 0 and not _is_skip(g, k):  # a skip ring holds the writer's lead: its chain holds it
                c = _reader(g, k)
                lo = max(end[c], new.get(c, 0.0)) - cyc[c] * share[k]
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
    return {k: max(2, math.ceil(sched.span(g, k) * (1 + SLACK) / sched.interval))
            for k in range(len(g.buffers)) if k not in rings}


def buffer_bits(g: Graph, rings: Mapping[int, int], banks: Mapping[int, int]) -> list[int]:
    """Bits of memory per buffer: a ring's rows, a frame buffer's banks of whole frames."""
    return [b.shape[0] * b.bits * b.shape[2] * (rings[k] if k in rings else b.shape[1] * banks[k])
            for k, b in enumerate(g.buffers)]


__all__ = ["HANDSHAKE", "SLACK", "Schedule", "buffer_bits", "frame_banks", "gather_rows", "input_cycles",
           "output_cycles", "ring_rows", "rings_of", "schedule"]
