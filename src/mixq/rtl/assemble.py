"""Verilog of a layer stage's collector: the engine's requantizer outputs, max-pooled, written into the next buffer.

Each requantizer output lane of a layer engine (:mod:`mixq.rtl.layer`) delivers a fixed
sequence of rows per input vector (:attr:`~mixq.rtl.layer.LayerRtl.lane_rows`), and the
outputs of one (tile, step) leave every lane in the same cycle
(:attr:`~mixq.rtl.layer.LayerRtl.lane_events`). So the arrival order of a pixel's codes is
fixed, and the collector stores them in **arrival order**: the buffer word's field ``f`` holds
the ``f``-th code to arrive (:func:`plan_collector`; ``pos[c]`` is channel ``c``'s field, and the
buffer's reader undoes the order by wiring, :mod:`mixq.rtl.network`). The codes of a pixel are
cut into *write groups* of consecutive (tile, step)s, each closed as soon as its bits end on a
byte boundary; a group is written with the buffer's byte enables the cycle after its last code.
A lane keeps only the codes of the group in progress (its shift register holds the most codes the
lane gives one group, usually one), so the collector no longer holds a whole pixel in registers
(before: every output code of a pixel, ``rows x OB`` flip-flops, 136k over MobileNetV2).

A ``PK x PK`` / stride ``PK`` max-pool runs **per lane, one code at a time**: a code is
compared with the running maximum of its pooled pixel and channel, kept in a line memory of
the lane (``PWO`` pooled pixels x the lane's codes; the pool of the codes equals the engine's
pool of the accumulators, since requantization and clamps are monotone). A pooled pixel's
groups are written at its last window position; positions past the pooled map (the floor of
an odd size) are dropped.

Ports: ``we`` is the pixel's end (the ring buffer's row counters), ``wbe`` the byte enables and
``waddr`` / ``wdata`` the write (registered by the buffer); ``done`` follows the frame's last
write decision by one cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixq.errors import ModelError


def _bits(n: int) -> int:
    return max(1, (max(n, 1) - 1).bit_length())


@dataclass(frozen=True)
class CollectorPlan:
    """Where a pixel's codes go: ``pos[c]`` is channel ``c``'s field of the buffer word (arrival order);
    ``groups[g]`` = (end field, exclusive) of write group ``g``; ``take[r][g]`` = codes lane ``r`` gives group ``g``."""

    pos: tuple[int, ...]
    groups: tuple[int, ...]
    closing: tuple[int, ...]  # per group: the index of the (tile, step) that closes it, in arrival order
    events: int  # distinct (tile, step)s of a pixel
    take: tuple[tuple[int, ...], ...]
    lane_of: tuple[tuple[int, int], ...]  # per field: (lane, its index among the lane's codes in its group)


def plan_collector(lane_rows: list[list[int]], lane_events: list[list[tuple[int, int]]], rows: int,
                   ob: int) -> CollectorPlan:
    """Arrival order of a pixel's codes and its byte-aligned write groups (see the module docstring)."""
    seen = sorted(r for lane in lane_rows for r in lane)
    if seen != list(range(rows)):
        raise ModelError(f"the engine's output lanes deliver rows {seen[:8]}... not each of 0..{rows - 1} once")
    if [len(e) for e in lane_events] != [len(r) for r in lane_rows]:
        raise ModelError("the engine's output lanes: one (tile, step) per delivered row is needed")
    arrivals = sorted((ev, lane, k) for lane, evs in enumerate(lane_events) for k, ev in enumerate(evs))
    pos = [0] * rows
    groups: list[int] = []
    closing: list[int] = []
    events = 0
    nl = len(lane_rows)
    take: list[list[int]] = [[] for _ in range(nl)]
    lane_of: list[tuple[int, int]] = []
    count = [0] * nl
    for f, (ev, lane, k) in enumerate(arrivals):
        pos[lane_rows[lane][k]] = f
        lane_of.append((lane, count[lane]))
        count[lane] += 1
        nxt = arrivals[f + 1][0] if f + 1 < len(arrivals) else None
        if nxt == ev:
            continue
        events += 1
        if (f + 1) * ob % 8 == 0 or nxt is None:  # the (tile, step) ends a byte-aligned group
            groups.append(f + 1)
            closing.append(events - 1)
            for r in range(nl):
                take[r].append(count[r])
            count = [0] * nl
    return CollectorPlan(tuple(pos), tuple(groups), tuple(closing), events, tuple(tuple(t) for t in take),
                         tuple(lane_of))


def generate_collector(top: str, plan: CollectorPlan, ob: int, qw: int, *, signed: bool,
                       out_hw: tuple[int, int], pool: int, pooled_hw: tuple[int, int]) -> str:
    """Module ``top`` (ports ``clk, rst, ov[NR], oq[NR*QW], we, wbe, waddr, wdata, done``) for an engine whose
    ``NR`` output lanes deliver their codes as ``plan`` says (``ob`` of each ``qw``-bit code are kept), an
    ``out_hw`` map pooled ``pool x pool`` into ``pooled_hw``; the buffer word holds the codes in ``plan``'s field
    order."""
    rows, nr = len(plan.pos), len(plan.take)
    (oh, ow), (pho, pwo), pk = out_hw, pooled_hw, pool
    aw = _bits(pho * pwo)
    pb = _bits(max(pwo, 1) + 1) + 1
    pw = rows * ob
    nbe = -(-pw // 8)
    ng = len(plan.groups)
    lines = [f"// {top}: collector generated by mixq.rtl.assemble ({nr} lanes, {rows} codes of {ob} bits in arrival "
             f"order, {ng} write groups, pool {pk})",
             f"module {top} (",
             f"  input clk, input rst, input [{nr - 1}:0] ov, input [{nr * qw - 1}:0] oq,",
             f"  output we, output [{nbe - 1}:0] wbe, output [{aw - 1}:0] waddr, output [{pw - 1}:0] wdata, "
             "output reg done",
             ");"]
    v = lines.append
    gb = _bits(max(oh, ow) + 1) + 1
    v(f"  reg [{gb - 1}:0] oy, ox, oyk, oxk, py; reg [{pb - 1}:0] px;")
    v(f"  wire first = (oyk == 0) && (oxk == 0); wire last = (oyk == {pk - 1}) && (oxk == {pk - 1});")
    v(f"  wire in_map = (py < {pho}) && (px < {pwo});")
    cmp = "$signed(a{r}) > $signed(b{r})" if signed else "a{r} > b{r}"
    depth = [max(t, default=0) for t in plan.take]  # a lane's register: the most codes it gives one group
    for r, t in enumerate(plan.take):
        n, keep = sum(t), depth[r]
        if not n:
            continue
        v(f"  wire [{ob - 1}:0] a{r} = oq[{r * qw + ob - 1}:{r * qw}]; wire [{ob - 1}:0] m{r};")
        if pk > 1:
            kb = _bits(n) + 1
            v(f"  reg [{kb - 1}:0] k{r};")
            v(f"  always @(posedge clk) if (rst) k{r} <= 0; "
              f"else if (ov[{r}]) k{r} <= (k{r} == {n - 1}) ? 0 : k{r} + 1'b1;")
            ld = pwo * n
            v(f"  reg [{ob - 1}:0] ln{r} [0:{ld - 1}];")
            v(f"  wire [{_bits(ld) + 1}:0] la{r} = px * {n} + k{r};")
            v(f"  wire [{ob - 1}:0] b{r} = ln{r}[la{r}];")
            v(f"  assign m{r} = (first || {cmp.format(r=r)}) ? a{r} : b{r};")
            v(f"  always @(posedge clk) if (ov[{r}] && in_map) ln{r}[la{r}] <= m{r};")
        else:
            v(f"  assign m{r} = a{r};")
        w = keep * ob
        shift = f"m{r}" if keep == 1 else f"{{m{r}, sr{r}[{w - 1}:{ob}]}}"
        v(f"  reg [{w - 1}:0] sr{r}; always @(posedge clk) if (ov[{r}]) sr{r} <= {shift};")
    # field f of group g from lane r, its i-th code of the group: at sr_r field keep_r - take_r[g] + i
    g = 0
    for f, (lane, i) in enumerate(plan.lane_of):
        while f >= plan.groups[g]:
            g += 1
        src = depth[lane] - plan.take[lane][g] + i
        v(f"  assign wdata[{f * ob + ob - 1}:{f * ob}] = sr{lane}[{src * ob + ob - 1}:{src * ob}];")
    # the (tile, step)s of a pixel as a one-hot ring: each cycle with an output is the next one
    ne = plan.events
    v(f"  wire any = |ov; wire keep = in_map && last; reg [{ne - 1}:0] ev; wire pix_end = any && ev[{ne - 1}];")
    v(f"  wire [{ng - 1}:0] close = {{" + ", ".join(f"ev[{e}]" for e in reversed(plan.closing)) + "} & {"
      f"{ng}{{any}}}};")
    v(f"  reg [{ng - 1}:0] gsel; reg pv, wr, fin, endf; reg [{aw - 1}:0] wa;")
    starts = (0, *plan.groups[:-1])
    for j in range(nbe):  # byte j belongs to the group holding its first bit (groups end on byte boundaries)
        gj = next(gi for gi, (a, e) in enumerate(zip(starts, plan.groups, strict=True)) if a * ob <= 8 * j < e * ob)
        v(f"  assign wbe[{j}] = gsel[{gj}];")
    v("  assign we = pv && wr; assign waddr = wa;  // the buffer registers the write")
    v("  always @(posedge clk) begin")
    v("    done <= fin; fin <= 1'b0; pv <= 1'b0;")
    v("    gsel <= keep ? close : 0;")
    v(f"    if (any) wa <= py * {pwo} + px;")
    v("    if (rst) begin")
    v("      ev <= 1; oy <= 0; ox <= 0; oyk <= 0; oxk <= 0; py <= 0; px <= 0; done <= 0; wr <= 0; endf <= 0;")
    v("      gsel <= 0;")
    v("    end else begin")
    rot = "ev" if ne == 1 else f"{{ev[{ne - 2}:0], ev[{ne - 1}]}}"
    v(f"      if (any) ev <= {rot};")
    v("      if (pix_end) begin")
    v(f"        pv <= 1'b1; wr <= keep; endf <= (oy == {oh - 1}) && (ox == {ow - 1});")
    v(f"        if (ox == {ow - 1}) begin")
    v("          ox <= 0; oxk <= 0; px <= 0;")
    v(f"          if (oy == {oh - 1}) begin oy <= 0; oyk <= 0; py <= 0; end")
    v("          else begin")
    v("            oy <= oy + 1'b1;")
    v(f"            if (oyk == {pk - 1}) begin oyk <= 0; py <= py + 1'b1; end else oyk <= oyk + 1'b1;")
    v("          end")
    v("        end else begin")
    v("          ox <= ox + 1'b1;")
    v(f"          if (oxk == {pk - 1}) begin oxk <= 0; px <= px + 1'b1; end else oxk <= oxk + 1'b1;")
    v("        end")
    v("      end")
    v("      if (pv) fin <= endf;")
    v("    end")
    v("  end")
    v("endmodule")
    return "\n".join(lines) + "\n"
