"""What an exact residual stream costs, and the search trading stream width against accuracy (session 22).

The estimator prices an exact stream (plan ``residual_bits`` unset) at the integer engine's width of the sum
(`mixq.hw.bits.exact_sum_bits`), a bound checked here against the widths the engine and the RTL give real
networks; `mixq search` sweeps each residual-stream width of its space (`SearchSpace.residual_bits`) with the adds
and skip FIFOs priced at it, and every plan it evaluates is quantized with those streams.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn

from mixq import api, zoo
from mixq.formats import parse_format


def test_hw_mirrors_the_engine_widths() -> None:
    """hw may not import the engine: its copy of the engine's width rules is checked against the engine here."""
    from mixq.engine.convert import MAX_AUTO_FRAC_BITS, EngineConfig
    from mixq.hw import bits

    cfg = EngineConfig()
    engine = (cfg.acc_bits, MAX_AUTO_FRAC_BITS, cfg.add_guard_bits, cfg.sum_bits)
    assert engine == (bits.ENGINE_ACC_BITS, bits.ENGINE_FRAC_BITS, bits.ENGINE_GUARD_BITS, bits.ENGINE_SUM_BITS)


@pytest.mark.parametrize(("w", "a"), [("fixed8", "ufixed8"), ("fixed4", "ufixed4")])
def test_exact_stream_width_bounds_the_engine(w: str, a: str) -> None:
    """ResNet-20 (zoo, seeded weights): every residual sum the RTL keeps exact is at most as wide as the
    estimator prices it, and at most 4 bits narrower (W8A8: 38-40 bits against 40; W4A4: 30-34 against 33-37)."""
    from mixq.engine.convert import to_integer
    from mixq.engine.runner import IntEngine
    from mixq.graph.bnfold import fold_bn
    from mixq.graph.capture import capture
    from mixq.hw.lower import lower
    from mixq.hw.parts import get_part
    from mixq.rtl.netgraph import lower_graph

    torch.manual_seed(0)
    m = zoo.load("resnet20", pretrained=False).eval()
    x = torch.rand(8, 3, 32, 32)
    plan = api.default_plan("resnet20", m, x, weight=parse_format(w), act=parse_format(a))
    im = to_integer(api.quantize(m, plan, x), x[:1])
    g = lower_graph(im, IntEngine(im)(x[:1], keep=True).values)
    abits = int(a[-1])
    rtl = {st.name: st.out_bits for st in g.nodes if st.name.startswith("add") and st.out_bits > abits}
    priced = {ly.name: ly.abits for ly in lower(capture(fold_bn(m), (3, 32, 32)), plan, get_part("xc7z020"))
              if ly.spec.kind == "add"}
    assert len(rtl) == 7 and set(rtl) <= set(priced)  # two of nine sums are requantized where they are made
    for name, bits in rtl.items():
        assert bits <= priced[name] <= bits + 4, (name, bits, priced[name])


class Res(nn.Module):
    """A stem and two residual blocks (the second with a 1x1 projection) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.proj = nn.Conv2d(8, 16, 1, stride=2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        x = torch.relu(self.proj(x) + self.b(x))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def res_search():  # type: ignore[no-untyped-def]
    from mixq.algorithms.search import AccuracyEval, SearchConfig, SearchSpace, SensitivityConfig, search_plan

    torch.manual_seed(0)
    m = Res().eval()
    x = torch.randn(160, 1, 8, 8)
    with torch.no_grad():
        y = m(x).argmax(1)
    space = SearchSpace(wbits=(4, 8), abits=(4, 8), rhos=(0.0,), residual_bits=(None, 8))
    cfg = SearchConfig(space=space, sensitivity=SensitivityConfig(images=32, hutchinson_samples=2), points=1,
                       executor="serial", default_max_drop=100.0)
    ev = AccuracyEval(x[32:], y[32:])
    return m, x[:32], ev, search_plan("res", m, x[:32], ev, "xc7z020", cfg=cfg)


def test_search_sweeps_each_stream_width(res_search) -> None:  # type: ignore[no-untyped-def]
    """Both widths of the space give searched points, each plan carrying its width and estimated at it; at one
    cycle budget the 8-bit streams take a smaller share of the part than exact ones."""
    from mixq.algorithms.search import HwTable, SearchSpace
    from mixq.graph.bnfold import fold_bn
    from mixq.graph.capture import capture
    from mixq.hw import estimate
    from mixq.hw.cost import RESOURCE_NAMES

    m, calib, ev, r = res_search
    searched = [p for p in r.points if p.kind == "searched"]
    assert {p.plan.residual_bits for p in searched} == {None, 8}
    assert all(p.label.endswith(" r8") == (p.plan.residual_bits == 8) for p in searched)
    specs = capture(fold_bn(m), (1, 8, 8))
    for p in searched:
        assert estimate(specs, p.plan, "xc7z020", "streaming", fold="plan").fps == pytest.approx(p.fps)
    assert all(b.plan.residual_bits is None for b in r.baselines.values())  # the default plans: exact
    table = HwTable(specs, SearchSpace(wbits=(8,), abits=(8,), rhos=(0.0,)).options(), "xc7z020")
    t = table.cycles_for(1000)
    exact, narrow = table.fixed(t), table.with_residual_bits(8).fixed(t)
    # the 40-bit skip FIFOs take BRAM, the 8-bit ones LUT RAM: less of the part in all
    bram = RESOURCE_NAMES.index("bram")
    assert table.share(narrow) < table.share(exact) and narrow[bram] < exact[bram]
    assert table.with_residual_bits(8)._grid is table._grid  # the engine caches (the foldings costed) are shared


def test_a_searched_plan_with_streams_evaluates_as_quantized(res_search) -> None:  # type: ignore[no-untyped-def]
    """A point's accuracy is its plan quantized with 8-bit streams (the quantizers on every add), read back
    through the plan's JSON."""
    from mixq.algorithms.search.evaluate import quantize_and_eval
    from mixq.graph.bnfold import fold_bn
    from mixq.plan.jsonio import plan_from_dict, plan_to_dict

    m, calib, ev, r = res_search
    p = next(p for p in r.points if p.plan.residual_bits == 8)
    again = plan_from_dict(plan_to_dict(p.plan))
    assert again.residual_bits == 8
    assert quantize_and_eval(fold_bn(m).eval(), calib, ev, again) == pytest.approx(p.accuracy)
    q = api.quantize(fold_bn(m).eval(), again, calib, fold=False)
    assert len(q.mixq_residuals) > 0


def test_cli_residual_bits_values() -> None:
    """`mixq search --residual-bits` takes 'exact' and 2..16, comma-separated; anything else is one line, exit 2,
    before any model is loaded."""
    from mixq.cli.search import _widths

    assert _widths("exact,12,8") == (None, 12, 8) and _widths(" 8 , exact,8") == (8, None)
    for bad in ("20", "exact,x", "", "1"):
        r = subprocess.run([sys.executable, "-m", "mixq", "search", "cnv", "--residual-bits", bad],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "--residual-bits" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_space_validates_widths() -> None:
    from mixq.algorithms.search import SearchSpace
    from mixq.errors import MixqError

    for bad in ((), (1,), (17,), (True,), (8.0,)):
        with pytest.raises(MixqError, match="residual_bits"):
            SearchSpace(residual_bits=bad)  # type: ignore[arg-type]
    assert dataclasses.replace(SearchSpace(), residual_bits=(None,)).residual_bits == (None,)


def test_cli_estimate_residual_bits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`mixq estimate MODEL --residual-bits 8` prices 8-bit streams (cheaper than the exact default, whose note it
    prints); out of range is one line, exit 2; with --from it is refused in one line, exit 1."""
    import json

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mixq", "estimate", *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    est = {}
    for bits in (None, 8):
        out = tmp_path / f"e{bits}"
        r = run("resnet20", "--out", str(out), *(["--residual-bits", str(bits)] if bits else []))
        assert r.returncode == 0, r.stderr
        assert ("exact residual stream" in r.stdout) == (bits is None), r.stdout
        est[bits] = json.loads((out / "estimate.json").read_text())
    adds = {b: [ly for ly in e["layers"] if ly["name"].startswith("add")] for b, e in est.items()}
    assert len(adds[8]) == len(adds[None]) == 9
    for a8, ax in zip(adds[8], adds[None], strict=True):  # the 40-bit skip FIFO 5x the 8-bit one
        assert a8["resources"]["bram"] < ax["resources"]["bram"] and "note" not in a8 and ax["note"]
        assert a8["formats"] == "add 8-bit" and ax["formats"] == "add 40-bit"  # W8A8: every exact sum at the cap
    assert est[8]["resources"]["bram"] < est[None]["resources"]["bram"]
    bad = run("resnet20", "--residual-bits", "17")
    assert bad.returncode == 2 and "--residual-bits" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    art = tmp_path / "q"
    q = subprocess.run([sys.executable, "-m", "mixq", "quantize", "resnet20", "--random", "--images", "8", "--out",
                        str(art)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    refused = run("--from", str(art), "--residual-bits", "8")
    assert refused.returncode == 1 and "drop --residual-bits" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_skip_fifo_waits_for_the_branch_from_the_fork() -> None:
    """A join's skip FIFO holds the skip's codes for as long as the branch from the fork keeps them waiting: the
    branch's line buffers in pixels of the skip's map, less the skip's own, and one row (the cheapest buffer).
    ResNet-20's projection block: conv1 (3x3 stride 2 on 32x32: 67 pixels, 16.75 of the 16x16 map) and conv2 (35)
    against the 1x1 projection (none): (52 + 16) x 32 channels x 8 bits. MobileNetV2's first add: the depthwise
    3x3 on 56x56 (115 pixels) and a row, x 24 skip channels (the expanded 144 channels wait in the depthwise's own
    line buffer, priced with it)."""
    from mixq.graph.capture import capture
    from mixq.hw.lower import lower
    from mixq.hw.parts import get_part
    from mixq.plan import uniform_plan

    part = get_part("xczu9eg")
    for name, add, want in (("resnet20", "add_3", (52 + 16) * 32 * 8), ("mobilenet_v2", "add", (115 + 56) * 24 * 8)):
        specs = capture(zoo.load(name).eval(), zoo.input_shape(name))
        names = [s.name for s in specs if s.is_compute]
        plan = dataclasses.replace(uniform_plan(name, names, parse_format("fixed8"), parse_format("fixed8")),
                                   residual_bits=8)
        fifo = {ly.name: ly.fifo_bits for ly in lower(specs, plan, part) if ly.spec.kind == "add"}
        assert fifo[add] == want, (name, fifo[add], want)
