"""The folding optimizer's bulk paths give the same numbers as the one-folding paths they replace.

``engine_grid`` costs every candidate folding of a layer at once; it must equal ``compute_engine``
at each folding bit for bit (the optimizer's choices then cannot move). ``_Pool.at`` / ``_Pool.repair``
pick over all layers in one pass; they must pick what a per-layer loop picks, ties included.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixq import zoo
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph import capture
from mixq.hw.cost import CostModel
from mixq.hw.lower import lower
from mixq.hw.parts import get_part
from mixq.hw.streaming import _Pool
from mixq.hw.units import ArchOptions, compute_engine, divisors, engine_grid
from mixq.plan import uniform_plan


def _plans(model: str) -> list[object]:
    names = [s.name for s in capture(zoo.load(model), zoo.input_shape(model)) if s.is_compute]
    a8, a4 = FixedPoint(8, signed=False), FixedPoint(4, signed=False)
    return [uniform_plan(model, names, FixedPoint(8), a8, signed_inputs=names[:1]),
            uniform_plan(model, names, FixedPoint(4), a4, signed_inputs=names[:1], weight_alt=SumOfPowers(4),
                         alt_ratio=0.5)]


@pytest.mark.parametrize("model", ["cnv", "resnet18", "mobilenet_v2"])
def test_engine_grid_equals_compute_engine_at_every_folding(model: str) -> None:
    specs = capture(zoo.load(model), zoo.input_shape(model))
    cm = CostModel.default()
    checked = 0
    for plan in _plans(model):
        for pname, opts, ext in (("xc7z020", ArchOptions(), False), ("xczu9eg", ArchOptions(requant="thresh"), True),
                                 ("xc7z045", ArchOptions(dataflow="finn"), False)):
            part = get_part(pname)
            for ly in (x for x in lower(specs, plan, part) if x.is_compute):  # type: ignore[arg-type]
                pairs = [(p, d) for p in divisors(ly.spec.weight_rows)[::3] for d in divisors(ly.spec.row_length)[::3]]
                cyc, res, split = engine_grid(ly, [p for p, _ in pairs], [d for _, d in pairs], part, cm, opts, ext)
                for i, (p, d) in enumerate(pairs):
                    e = compute_engine(ly, p, d, part, cm, opts, ext)
                    assert (e.cycles, tuple(e.resources), e.pe_split) == (cyc[i], tuple(res[i]), tuple(split[i]))
                    checked += 1
    assert checked > 200


class _Front:
    def __init__(self, cycles: np.ndarray, res: np.ndarray) -> None:
        self.cycles, self.res = cycles, res


def _fronts(draw_sizes: list[int], seed: int) -> dict[str, _Front]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, n in enumerate(draw_sizes):
        # coarse values, so ties between foldings and between layers happen
        out[f"l{k}"] = _Front(rng.integers(1, 6, n).astype(np.int64) * 100, rng.integers(0, 4, (n, 5)).astype(float))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=6), st.integers(0, 10**6), st.integers(100, 600))
def test_pool_picks_what_a_per_layer_loop_picks(sizes: list[int], seed: int, t: int) -> None:
    fronts = _fronts(sizes, seed)
    pool = _Pool(fronts)  # type: ignore[arg-type]
    w = np.random.default_rng(seed + 1).integers(0, 3, 5).astype(float)
    want: dict[str, int] | None = {}
    for n, fr in fronts.items():
        ok = fr.cycles <= t
        if not ok.any():
            want = None
            break
        assert want is not None
        want[n] = int(np.argmin(np.where(ok, fr.res @ w + 1e-9 * fr.cycles, np.inf)))
    assert pool.at(t, w) == want
    if want is None:
        return
    cap = np.full(5, float(len(sizes)) * 1.5)
    assert pool.repair(want, t, np.zeros(5), cap) == _loop_repair(fronts, want, t, np.zeros(5), cap)


def _loop_repair(fronts: dict[str, _Front], pick: dict[str, int], t: float, fixed: np.ndarray,
                 cap: np.ndarray) -> dict[str, int] | None:
    """The per-layer greedy descent the pool replaces."""
    pick = dict(pick)
    used = fixed + sum(fronts[n].res[i] for n, i in pick.items())

    def over(u: np.ndarray) -> np.ndarray:
        return np.maximum(u - cap, 0.0) / cap

    cur = float(over(used).sum())
    for _ in range(200):
        if cur <= 1e-12:
            return pick
        best: tuple[float, str | None, int] = (cur - 1e-9, None, -1)
        for n, fr in fronts.items():
            new = used[None, :] + fr.res - fr.res[pick[n]][None, :]
            score = np.where(fr.cycles <= t, over(new).sum(axis=1), np.inf)
            j = int(np.argmin(score))
            if score[j] < best[0]:
                best = (float(score[j]), n, j)
        if best[1] is None:
            return None
        n, j = best[1], best[2]
        used = used + fronts[n].res[j] - fronts[n].res[pick[n]]
        pick[n], cur = j, best[0]
    return pick if cur <= 1e-12 else None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40000), st.integers(0, 6)), min_size=1, max_size=40),
       st.sampled_from(["xc7z020", "xczu9eg", "xcvu9p", "1sg280"]), st.sampled_from(["auto", "lutram", "bram"]))
def test_memory_grid_equals_choose_memory(mems: list[tuple[int, int, int]], part_name: str, style: str) -> None:
    from mixq.hw.memory import choose_memory, memory_grid

    part = get_part(part_name)
    w, d, k = (np.array(c) for c in zip(*mems, strict=True))
    got = memory_grid(w, d, k, part, style, 4.0, 1.25)
    for i, (wi, di, ki) in enumerate(mems):
        m = choose_memory(wi, di, part, style, 4.0, 1.25, ki)
        assert tuple(got[i]) == (m.lut, 0.0, 0.0, float(m.bram), float(m.uram))
