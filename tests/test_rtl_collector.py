"""The collector's write plan (mixq.rtl.assemble.plan_collector): arrival order, byte-aligned write groups, and the
registers a lane needs; the whole-network simulations (tests/test_rtl_network.py) check the Verilog bit for bit."""

from __future__ import annotations

import random

import pytest

from mixq.errors import ModelError
from mixq.rtl.assemble import generate_collector, plan_collector


def _engine(rng: random.Random) -> tuple[list[list[int]], list[list[tuple[int, int]]], int]:
    """Random lanes as mixq.rtl.layer makes them: cores of r lanes x s steps per tile, some slots empty."""
    lane_rows: list[list[int]] = []
    lane_events: list[list[tuple[int, int]]] = []
    row = 0
    tiles = rng.randint(1, 3)
    for _ in range(rng.randint(1, 3)):  # cores
        r_n, s_n = rng.randint(1, 4), rng.randint(1, 5)
        lanes: list[tuple[list[int], list[tuple[int, int]]]] = [([], []) for _ in range(r_n)]
        for t in range(tiles):
            for s in range(s_n):
                for r in range(r_n):
                    if rng.random() < 0.85:
                        lanes[r][0].append(row)
                        lanes[r][1].append((t, s))
                        row += 1
        for rows, evs in lanes:
            lane_rows.append(rows)
            lane_events.append(evs)
    perm = list(range(row))
    rng.shuffle(perm)  # rows are any channels
    return [[perm[x] for x in rows] for rows in lane_rows], lane_events, row


@pytest.mark.parametrize("seed", range(40))
def test_plan_is_arrival_order_in_byte_aligned_groups(seed: int) -> None:
    rng = random.Random(seed)
    lane_rows, lane_events, rows = _engine(rng)
    if rows == 0:
        return
    ob = rng.choice([1, 2, 3, 4, 6, 8, 30])
    plan = plan_collector(lane_rows, lane_events, rows, ob)
    assert sorted(plan.pos) == list(range(rows))  # every channel has one field
    # field f holds the f-th code to arrive: (tile, step) order, lanes in order within one cycle
    arrivals = sorted((ev, lane, k) for lane, evs in enumerate(lane_events) for k, ev in enumerate(evs))
    assert [plan.pos[lane_rows[lane][k]] for _, lane, k in arrivals] == list(range(rows))
    # groups end at the end of a (tile, step), on a byte boundary (except the pixel's last)
    ends = {i + 1 for i in range(rows - 1) if arrivals[i][0] != arrivals[i + 1][0]} | {rows}
    assert plan.groups[-1] == rows and all(e in ends for e in plan.groups)
    assert all(e * ob % 8 == 0 for e in plan.groups[:-1])
    assert list(plan.groups) == sorted(set(plan.groups))
    # each group: the codes each lane gives it, and every field's (lane, index in the group)
    start = 0
    for g, end in enumerate(plan.groups):
        fields = plan.lane_of[start:end]
        for lane in range(len(lane_rows)):
            mine = [i for ln, i in fields if ln == lane]
            assert mine == list(range(plan.take[lane][g]))
        start = end
    # a group is closed by its last (tile, step): the one-hot ring's index
    distinct = sorted({ev for ev, _, _ in arrivals})
    assert plan.events == len(distinct)
    assert [distinct[e] for e in plan.closing] == [arrivals[end - 1][0] for end in plan.groups]


def test_one_lane_of_bytes_writes_each_code_alone_and_keeps_one() -> None:
    lane_rows = [[3, 0, 2, 1]]
    plan = plan_collector(lane_rows, [[(0, 0), (0, 1), (0, 2), (0, 3)]], 4, 8)
    assert plan.pos == (1, 3, 2, 0) and plan.groups == (1, 2, 3, 4) and plan.take == ((1, 1, 1, 1),)
    text = generate_collector("c", plan, 8, 10, signed=False, out_hw=(2, 2), pool=1, pooled_hw=(2, 2))
    assert "reg [7:0] sr0;" in text  # one code of registers, not the pixel's 32 bits
    assert text.count("assign wbe[") == 4


def test_nibbles_pair_up_into_bytes() -> None:
    plan = plan_collector([[0, 1, 2, 3]], [[(0, 0), (0, 1), (1, 0), (1, 1)]], 4, 4)
    assert plan.groups == (2, 4) and plan.take == ((2, 2),) and plan.closing == (1, 3)


def test_lanes_must_deliver_each_row_once() -> None:
    with pytest.raises(ModelError, match="not each of"):
        plan_collector([[0, 0]], [[(0, 0), (0, 1)]], 2, 8)
    with pytest.raises(ModelError, match="one \\(tile, step\\)"):
        plan_collector([[0, 1]], [[(0, 0)]], 2, 8)
