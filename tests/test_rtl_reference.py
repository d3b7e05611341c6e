"""The reference circuits (mixq.rtl.reference) compute the PE functions (Icarus) and cost what is stored (yosys)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from mixq.hw.bits import REQUANT_MULT_BITS, requant_shift, tree_levels
from mixq.hw.cost import CostModel
from mixq.hw.kinds import PE_KINDS
from mixq.hw.pe import PeConfig
from mixq.rtl.pe import decode_weight, generate, uses_nodsp
from mixq.rtl.reference import (
    SIGN_STYLES,
    decode_reference,
    decode_sp2,
    reference,
    sp2_config,
    sp2_reference,
)
from mixq.rtl.reference_sweep import clock_budget, compare, load_reference_records
from mixq.rtl.synth import synthesize_verilog, yosys_available

RECORDS = Path(__file__).parents[1] / "src" / "mixq" / "hw" / "data" / "reference_records.json"
needs_iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")
needs_yosys = pytest.mark.skipif(not yosys_available(), reason="yosys not installed")
SPLITS = [(1, 1), (2, 1), (2, 2), (3, 1)]


def _run(source: str, tb: str, tmp: Path) -> list[str]:
    (tmp / "dut.v").write_text(source)
    (tmp / "tb.v").write_text(tb)
    subprocess.run(["iverilog", "-o", str(tmp / "sim"), str(tmp / "dut.v"), str(tmp / "tb.v")], check=True)
    out = subprocess.run(["vvp", "-n", str(tmp / "sim")], check=True, capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.startswith("@")]


def _signed(v: int, w: int) -> int:
    v &= (1 << w) - 1
    return v - (1 << w) if v >> (w - 1) else v


def simulate_dot(cfg: PeConfig, source: str, tmp: Path, outputs: int = 4, beats: int = 3,
                 seed: int = 0) -> tuple[list[int], list[int]]:
    """Random beats through a dot unit of ``source``; (simulated sums, Python sums), rows flattened.

    The finished sum of an output is ``acc`` on the cycle before ``acc_first`` (any latency)."""
    rng = random.Random(seed)
    rows = PE_KINDS[cfg.kind].rows
    s, a, w, accw = cfg.simd, cfg.abits, cfg.wbits, cfg.acc_bits
    stim, ref = [], []
    for _ in range(outputs):
        sums = [0] * rows
        for b in range(beats):
            acts = [rng.randrange(2**a) for _ in range(s)]
            codes = [[rng.randrange(2**w) for _ in range(s)] for _ in range(rows)]
            wgt = sum(codes[r][i] << ((i * rows + r) * w) for i in range(s) for r in range(rows))
            for r in range(rows):
                if cfg.kind == "xnor":
                    sums[r] += sum(1 for i in range(s) if codes[r][i] == acts[i])
                else:
                    x = [_signed(v, a) if cfg.signed_act else v for v in acts]
                    sums[r] += sum(decode_reference(cfg, codes[r][i]) * x[i] for i in range(s))
            stim.append((int(b == 0), sum(x << (i * a) for i, x in enumerate(acts)), wgt))
        ref.extend(sums)
    stim.append((1, 0, 0))  # a last `first` flushes the final output
    tb = ["module tb;", "  reg clk = 0; reg first = 0;",
          f"  reg [{s * a - 1}:0] act = 0; reg [{rows * s * w - 1}:0] wgt = 0;",
          f"  wire [{rows * accw - 1}:0] acc; wire acc_first;",
          f"  {cfg.name} dut(.clk(clk), .first(first), .act(act), .wgt(wgt), .acc(acc), .acc_first(acc_first));",
          "  initial begin"]
    tb += [f"    first = {f}; act = {s * a}'h{x:x}; wgt = {rows * s * w}'h{g:x}; #1 clk = 1; #1 clk = 0;"
           for f, x, g in stim]
    tb += ["    first = 0; repeat (40) begin #1 clk = 1; #1 clk = 0; end", "  end",
           '  always @(posedge clk) #0.5 $display("@ %0d %h", acc_first, acc);', "endmodule", ""]
    lines = _run(source, "\n".join(tb), tmp)
    trace = [(int(f), int(h, 16)) for _, f, h in (ln.split() for ln in lines) if "x" not in h]
    got: list[int] = []
    for (_, prev), (f, _) in zip(trace, trace[1:], strict=False):
        if f == 1:
            for r in range(rows):
                v = (prev >> (r * accw)) & ((1 << accw) - 1)
                got.append(v if cfg.kind == "xnor" else _signed(v, accw))
    return got[len(got) - len(ref):], ref


def _lagged(got: list[int], want: list[int]) -> bool:
    """``want`` appears in ``got`` at one fixed latency (0..8 cycles)."""
    return any(got[lag:lag + len(want)] == want for lag in range(9))


def simulate_stream(source: str, top: str, ports: list[tuple[str, int]], out: tuple[str, int, bool],
                    vectors: list[list[int]], tmp: Path) -> list[int]:
    """Apply one vector of input values per cycle; the output ``(name, width, signed)`` of every cycle."""
    name, ow, sg = out
    tb = ["module tb;", "  reg clk = 0;", *[f"  reg [{w - 1}:0] {p} = 0;" for p, w in ports],
          f"  wire [{ow - 1}:0] {name};",
          f"  {top} dut(.clk(clk), {', '.join(f'.{p}({p})' for p, _ in ports)}, .{name}({name}));",
          "  initial begin"]
    for vec in vectors:
        tb.append("    " + " ".join(f"{p} = {w}'h{v & ((1 << w) - 1):x};" for (p, w), v in zip(ports, vec, strict=True))
                  + " #1 clk = 1; #1 clk = 0;")
    tb += ["    repeat (8) begin #1 clk = 1; #1 clk = 0; end", "  end",
           f'  always @(posedge clk) #0.5 $display("@ %h", {name});', "endmodule", ""]
    lines = [ln.split()[1] for ln in _run(source, "\n".join(tb), tmp)]
    vals = [int(h, 16) if "x" not in h else -(1 << 60) for h in lines]
    return [_signed(v, ow) if sg and v >= 0 else v for v in vals]


# ---- weight codes ----


@pytest.mark.parametrize("split", SPLITS)
def test_sp2_split_decode_matches_the_kind_table(split: tuple[int, int]) -> None:
    cfg = sp2_config(4, 1, split)
    got = [decode_sp2(c, split) for c in range(2**cfg.wbits)]
    assert got == [decode_weight("sp2", cfg.wbits, c, cfg.sp2_m1) for c in range(2**cfg.wbits)]


@pytest.mark.parametrize("kind,wbits", [("fixed_lut", 3), ("pot", 2), ("pot", 4), ("ternary", 2), ("xnor", 1)])
def test_reference_decode_matches_the_kind_table(kind: str, wbits: int) -> None:
    cfg = PeConfig(kind, wbits, 1 if kind == "xnor" else 4, 1)
    assert [decode_reference(cfg, c) for c in range(2**wbits)] == [decode_weight(kind, wbits, c)
                                                                    for c in range(2**wbits)]


# ---- dot units: the reference (and, for the harness, the generator) simulates exactly ----

DOTS = [PeConfig(k, w, a, s, acc_len=64, signed_act=sa) for k, w, a, s, sa in (
    ("fixed_lut", 2, 2, 1, False), ("fixed_lut", 3, 4, 3, False), ("fixed_lut", 4, 3, 4, True),
    ("fixed_dsp", 4, 4, 1, False), ("fixed_dsp", 3, 2, 4, False), ("fixed_dsp", 2, 4, 2, True),
    ("fixed_dsp2", 2, 2, 1, False), ("fixed_dsp2", 3, 4, 3, False), ("fixed_dsp2", 4, 3, 2, True),
    ("pot", 2, 4, 1, False), ("pot", 3, 3, 4, False), ("pot", 4, 2, 2, True),
    ("sp2", 3, 4, 1, False), ("sp2", 4, 2, 3, False), ("sp2", 4, 3, 2, True),
    ("ternary", 2, 2, 1, False), ("ternary", 2, 4, 4, False), ("ternary", 2, 3, 3, True),
    ("xnor", 1, 1, 1, False), ("xnor", 1, 1, 4, False), ("xnor", 1, 1, 16, False),
)]


@needs_iverilog
@pytest.mark.parametrize("cfg", DOTS, ids=lambda c: c.name)
def test_reference_dot_simulates_exactly(cfg: PeConfig, tmp_path: Path) -> None:
    got, ref = simulate_dot(cfg, reference(cfg), tmp_path)
    assert len(ref) == 4 * PE_KINDS[cfg.kind].rows and got == ref


@needs_iverilog
@pytest.mark.parametrize("sign", SIGN_STYLES)
@pytest.mark.parametrize("split", SPLITS)
def test_sp2_splits_simulate_exactly(split: tuple[int, int], sign: str, tmp_path: Path) -> None:
    cfg = sp2_config(3, 3, split)
    got, ref = simulate_dot(cfg, sp2_reference(cfg.wbits, 3, 3, split, sign=sign), tmp_path, outputs=6)
    assert got == ref


@needs_iverilog
@pytest.mark.parametrize("cfg", [DOTS[10], DOTS[13]], ids=lambda c: c.name)
def test_sign_styles_simulate_exactly(cfg: PeConfig, tmp_path: Path) -> None:
    got, ref = simulate_dot(cfg, reference(cfg, sign="xor"), tmp_path)
    assert got == ref


@needs_iverilog
@pytest.mark.parametrize("cfg", [DOTS[1], DOTS[13], DOTS[16], DOTS[7]],
                         ids=lambda c: c.name)
def test_one_harness_checks_the_generator_too(cfg: PeConfig, tmp_path: Path) -> None:
    got, ref = simulate_dot(cfg, generate(cfg), tmp_path)
    assert got == ref


# ---- components ----


@needs_iverilog
@pytest.mark.parametrize("gen", [reference, generate], ids=["reference", "generator"])
@pytest.mark.parametrize("n,b", [(3, 4), (4, 3)])
def test_tree_simulates_exactly(n: int, b: int, gen: object, tmp_path: Path) -> None:
    cfg = PeConfig("tree", abits=b, simd=n)
    rng = random.Random(n)
    vecs = [[rng.randrange(2**b) for _ in range(n)] for _ in range(12)]
    got = simulate_stream(gen(cfg), cfg.name, [("x", n * b)], ("y", b + len(tree_levels(n)), True),  # type: ignore[operator]
                          [[sum(v << (i * b) for i, v in enumerate(vec))] for vec in vecs], tmp_path)
    assert _lagged(got, [sum(_signed(v, b) for v in vec) for vec in vecs])


@needs_iverilog
def test_acc_simulates_exactly(tmp_path: Path) -> None:
    cfg = PeConfig("acc", abits=4, accw=9)
    rng = random.Random(1)
    vecs = [[int(t % 4 == 0), rng.randrange(16)] for t in range(16)]
    want, run = [], 0
    for f, x in vecs:
        run = _signed(x, 4) if f else run + _signed(x, 4)
        want.append(run)
    got = simulate_stream(reference(cfg), cfg.name, [("first", 1), ("x", 4)], ("acc", 9, True), vecs, tmp_path)
    assert _lagged(got, want)


@needs_iverilog
@pytest.mark.parametrize("accw,ob", [(10, 2), (12, 4)])
def test_requant_simulates_exactly(accw: int, ob: int, tmp_path: Path) -> None:
    cfg = PeConfig("requant", accw=accw, out_bits=ob)
    rng = random.Random(accw)
    sh, mb = requant_shift(accw, ob), REQUANT_MULT_BITS
    vecs = [[rng.randrange(2**accw), rng.randrange(2**mb)] for _ in range(24)]
    want = [min(max((_signed(a, accw) * m + 2 ** (sh - 1)) >> sh, 0), 2**ob - 1) for a, m in vecs]
    assert len(set(want)) > 2  # the vectors reach the clamps and the range between
    got = simulate_stream(reference(cfg), cfg.name, [("acc", accw), ("m", mb)], ("q", ob, False), vecs, tmp_path)
    assert _lagged(got, want)


@needs_iverilog
@pytest.mark.parametrize("gen", [reference, generate], ids=["reference", "generator"])
@pytest.mark.parametrize("accw,ob", [(6, 2), (8, 3)])
def test_thresh_simulates_exactly(accw: int, ob: int, gen: object, tmp_path: Path) -> None:
    cfg = PeConfig("thresh", accw=accw, out_bits=ob)
    nt = 2**ob - 1
    th = sorted(random.Random(ob).sample(range(-(2 ** (accw - 1)), 2 ** (accw - 1)), nt))
    th_word = sum((t & (2**accw - 1)) << (k * accw) for k, t in enumerate(th))
    accs = list(range(-(2 ** (accw - 1)), 2 ** (accw - 1), max(1, 2**accw // 40)))
    want = [sum(a >= t for t in th) for a in accs]
    got = simulate_stream(gen(cfg), cfg.name, [("acc", accw), ("th", nt * accw)], ("q", ob, False),  # type: ignore[operator]
                          [[a, th_word] for a in accs], tmp_path)
    assert _lagged(got, want)


@needs_iverilog
@pytest.mark.parametrize("abits", [0, 1], ids=["lutram", "bram"])
def test_ram_simulates_exactly(abits: int, tmp_path: Path) -> None:
    cfg = PeConfig("ram", wbits=5, simd=8, abits=abits)
    rng = random.Random(abits)
    data = [rng.randrange(32) for _ in range(8)]
    writes = [[1, i, 0, d] for i, d in enumerate(data)]
    reads = [[0, 0, i, 0] for i in (3, 0, 7, 5, 1, 6, 2, 4)]
    got = simulate_stream(reference(cfg), cfg.name, [("we", 1), ("wa", 3), ("ra", 3), ("wd", 5)], ("q", 5, False),
                          writes + reads, tmp_path)
    assert _lagged(got[len(writes):], [data[r[2]] for r in reads])


# ---- synthesis: a few small reference circuits reproduce the stored records ----


def _stored(name: str) -> dict:
    return next(r for r in json.loads(RECORDS.read_text())["records"] if r["name"] == name)


@needs_yosys
@pytest.mark.parametrize("cfg", [PeConfig("fixed_lut", 2, 4, 1, acc_len=1024), sp2_config(4, 1, (1, 1), 1024),
                                 PeConfig("xnor", 1, 1, 8, acc_len=1024)], ids=lambda c: c.name)
def test_a_real_synthesis_reproduces_the_reference_record(cfg: PeConfig) -> None:
    stored = _stored(cfg.name)
    assert PeConfig.from_dict(stored["pe"]) == cfg
    r = synthesize_verilog(reference(cfg), cfg.name, nodsp=uses_nodsp(cfg), timing=True)
    assert (r.lut, r.ff, r.dsp, r.carry, r.arrival_ps) == (stored["lut"], stored["ff"], stored["dsp"],
                                                           stored["carry"], stored["arrival_ps"])


def _smallest_per_kind() -> list[dict]:
    """The stored record with the fewest LUTs (generator side) of every PE kind."""
    best: dict[str, dict] = {}
    for r in json.loads(RECORDS.read_text())["records"]:
        k = r["pe"]["kind"]
        if k not in best or r["generator"]["lut"] < best[k]["generator"]["lut"]:
            best[k] = r
    return [best[k] for k in sorted(best)]


@needs_yosys
@pytest.mark.parametrize("rec", _smallest_per_kind(), ids=lambda r: r["name"])
def test_every_kind_synthesizes_as_stored_on_both_sides(rec: dict) -> None:
    """One small PE of every kind, the reference and the generator's circuit, synthesized again."""
    cfg = PeConfig.from_dict(rec["pe"])
    for verilog, want in ((reference(cfg), rec), (generate(cfg), rec["generator"])):
        r = synthesize_verilog(verilog, cfg.name, nodsp=uses_nodsp(cfg))
        assert (r.lut, r.ff, r.dsp, r.carry) == (want["lut"], want["ff"], want["dsp"], want["carry"]), cfg.name


def test_records_cover_every_kind_with_both_sides() -> None:
    recs = json.loads(RECORDS.read_text())["records"]
    assert {PeConfig.from_dict(r["pe"]).kind for r in recs} == set(PE_KINDS)
    for r in recs:
        assert {"lut", "ff", "dsp", "carry"} <= set(r) and {"lut", "ff", "dsp", "carry"} <= set(r["generator"])
    splits = {(r["pe"]["wbits"], r["pe"].get("sp2_m1", 0)) for r in recs if r["pe"]["kind"] == "sp2"}
    assert {(3, 0), (4, 0), (5, 0), (5, 3)} <= splits  # (1,1), (2,1), (2,2), (3,1)


# ---- the judgement: the model against the cheaper circuit that keeps the clock ----


def _side(lut: int, dsp: int, ps: int) -> dict:
    return {"lut": lut, "ff": 10, "dsp": dsp, "carry": 1, "arrival_ps": ps}


def test_a_smaller_reference_counts_only_where_it_keeps_the_clock() -> None:
    """Three 16-lane DSP units: the reference smaller and as fast (it is the cheaper circuit), smaller but
    slower than the slowest generated unit (the generator is), and on another DSP count (the generator is)."""
    pe = {"kind": "fixed_dsp", "wbits": 8, "abits": 8, "simd": 16, "acc_len": 1024}
    recs = [{"name": "fast", "pe": pe, **_side(50, 16, 4000), "generator": _side(100, 16, 4000)},
            {"name": "slow", "pe": pe, **_side(50, 16, 24000), "generator": _side(100, 16, 5000)},
            {"name": "other", "pe": pe, **_side(50, 0, 3000), "generator": _side(100, 16, 3000)}]
    rows = {r["name"]: r for r in compare({"records": recs}, CostModel.default())}
    assert clock_budget({"records": recs}) == 5000
    assert [rows[n]["cheaper"] for n in ("fast", "slow", "other")] == ["reference", "generator", "generator"]
    assert rows["slow"]["ref_smaller_but_slower"] and not rows["fast"]["ref_smaller_but_slower"]
    lut = CostModel.default().pe(PeConfig.from_dict(pe)).lut
    assert rows["slow"]["lut_err"] == pytest.approx(abs(lut - 100) / 100)
    assert rows["slow"]["lut_err_lut_only"] == pytest.approx(abs(lut - 50) / 50)


# the PEs where a reference has fewer LUTs only by an unpipelined flat sum: the 16-lane DSP cascades (23.8-25.4 ns
# against the generator's 4.2-5.2) and the flat 16-lane 8x8 LUT multiply-add (8.5 ns against 3.4)
SLOW_ONLY = {"fixed_dsp_w4a8_s16_acc22", "fixed_dsp_w8a4_s16_acc22", "fixed_dsp_w8a8_s16_acc26",
             "fixed_dsp2_w2a4_s16_acc16", "fixed_dsp2_w2a8_s16_acc20", "fixed_dsp2_w4a4_s16_acc18",
             "fixed_lut_w8a8_s16_acc26"}


def test_the_shipped_model_meets_the_bar_on_the_stored_sweep() -> None:
    """Issue 19 item 1 (benchmarks/results/hw_reference.md): against the cheaper circuit that keeps the clock,
    every PE within 15% LUT (so every 4-16-lane unit within 20%) and DSP exact; by LUTs alone the misses are
    the references that are smaller only as a long unpipelined sum."""
    doc = load_reference_records()
    rows = {r["name"]: r for r in compare(doc, CostModel.default())}
    assert len(rows) == 128 and clock_budget(doc) == 5378  # fixed_dsp2_w2a4_s4's 5.38 ns
    assert max(r["lut_err"] for r in rows.values()) <= 0.15
    assert all(r["dsp_ok"] for r in rows.values())
    assert {n for n, r in rows.items() if r["lut_err_lut_only"] > 0.15} == SLOW_ONLY
    for n in SLOW_ONLY:
        r = rows[n]
        assert r["ref_smaller_but_slower"] and r["reference"]["arrival_ps"] > 2 * r["generator"]["arrival_ps"]
    # the generator took the cheaper structures: XNOR popcount groups and flat threshold counts at or below the
    # flat references, 8-lane DSP chains within 3 LUTs of the flat cascade
    for n, r in rows.items():
        if r["kind"] in ("xnor", "thresh"):
            assert r["generator"]["lut"] <= r["reference"]["lut"], n
        if r["kind"] == "fixed_dsp" and r["simd"] == 8 and not r["other_mapping"]:
            assert r["generator"]["lut"] <= r["reference"]["lut"] + 3, n
