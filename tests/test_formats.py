"""Number formats: property tests for every format, golden level tables, registry and CSD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixq.errors import FormatError, MixqError
from mixq.formats import (
    FORMATS,
    Binary,
    FixedPoint,
    Focused,
    MiniFloat,
    NumberFormat,
    Posit,
    PowerOfTwo,
    SumOfPowers,
    Ternary,
    csd,
    csd_digits,
    fit_focused,
    format_from_dict,
    parse_format,
)
from mixq.formats._common import bucketize_index, nearest_index
from mixq.formats.posit import decode_posit

ALL: list[NumberFormat] = [
    FixedPoint(2), FixedPoint(4, narrow=True), FixedPoint(8), FixedPoint(3, signed=False), FixedPoint(1, False),
    PowerOfTwo(2), PowerOfTwo(3), PowerOfTwo(4), PowerOfTwo(7),
    SumOfPowers(3), SumOfPowers(4), SumOfPowers(5), SumOfPowers(8), SumOfPowers(6, terms=3),
    Binary(), Ternary(),
    MiniFloat(4, 3, 7, "fn"), MiniFloat(5, 2, 15, "ieee"), MiniFloat(2, 1), MiniFloat(3, 0, bias=-2),
    Posit(8, 1), Posit(6, 0), Posit(8, 2), Posit(16, 1),
    Focused(4, (-0.25, 0.5), (0.125, 0.25)), Focused(3, (-0.5, 0.5), (0.25, 0.25)),
]
IDS = [str(f) for f in ALL]

fmt_st = st.sampled_from(ALL)
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
values = st.lists(finite, min_size=1, max_size=40)
pow2_scale = st.integers(-6, 6).map(lambda k: 2.0**k)


def _nearest_dist(fmt: NumberFormat, y: np.ndarray) -> np.ndarray:
    lv = fmt.levels()
    return np.abs(y[:, None] - lv[None, :]).min(axis=1)


@settings(max_examples=150, deadline=None)
@given(fmt_st, values, pow2_scale)
def test_codes_in_range_and_nearest_level(fmt: NumberFormat, xs: list[float], scale: float) -> None:
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor(xs, dtype=dtype)
        q = fmt.quantize(x, scale)
        assert q.dtype == torch.int64
        assert set(q.tolist()) <= set(fmt.int_levels().tolist())
        y = (x.double() / scale).numpy()
        got = fmt.dequantize(q, torch.tensor(scale, dtype=torch.float64)).numpy() / scale
        best = _nearest_dist(fmt, y)
        tol = 0.0 if dtype == torch.float64 else 1e-6 * np.maximum(np.abs(y), 1e-30)
        assert np.all(np.abs(y - got) <= best + tol)


@settings(max_examples=100, deadline=None)
@given(fmt_st, values, pow2_scale, st.integers(-8, 8))
def test_idempotent_monotone_scale_equivariant(fmt: NumberFormat, xs: list[float], scale: float, k: int) -> None:
    x = torch.tensor(sorted(xs), dtype=torch.float32)
    q = fmt.quantize(x, scale)
    # idempotent: re-quantizing the dequantized value gives the same code
    assert torch.equal(fmt.quantize(fmt.dequantize(q, scale), scale), q)
    # monotone: sorted inputs give sorted level values
    lv = q.double() * 2.0 ** -fmt.frac_bits
    assert bool((lv[1:] >= lv[:-1]).all())
    # scale-equivariant (power-of-two factors keep x / scale exact)
    c = 2.0**k
    assert torch.equal(fmt.quantize(x.double() * c, scale * c), fmt.quantize(x.double(), scale))


@pytest.mark.parametrize("fmt", ALL, ids=IDS)
def test_decompose_sums_back_exactly(fmt: NumberFormat) -> None:
    ints = fmt.int_levels()
    assert np.array_equal(fmt.levels(), ints * 2.0 ** -fmt.frac_bits)
    assert np.all(np.diff(ints) > 0)
    sample = ints if ints.size <= 4096 else np.concatenate([ints[:2000], ints[-2000:]])
    for q in sample.tolist():
        terms = fmt.decompose(q)
        assert sum(s * (1 << k) for s, k in terms) == q
        assert all(s in (-1, 1) and k >= 0 for s, k in terms)
        if q == 0:
            assert terms == ()


@pytest.mark.parametrize("fmt", ALL, ids=IDS)
def test_fast_lookup_matches_bucketize_and_ties(fmt: NumberFormat) -> None:
    lv = torch.tensor(fmt.levels(), dtype=torch.float32)
    mids = (lv[1:] + lv[:-1]) / 2
    y = torch.cat([torch.randn(5000) * float(lv.abs().max()) / 2, lv, mids, torch.tensor([0.0, -0.0, 1e30, -1e30])])
    assert torch.equal(nearest_index(fmt, y), bucketize_index(fmt, y))
    # ties go to the smaller magnitude (fixed point: to even)
    qm = fmt.dequantize(fmt.quantize(mids.double(), 1.0), 1.0)
    lo, hi = lv[:-1].double(), lv[1:].double()
    if isinstance(fmt, FixedPoint):
        assert bool(((qm / 2).round() == qm / 2).all())
    else:
        assert torch.equal(qm.double(), torch.where(lo.abs() < hi.abs(), lo, hi))  # exact tie at 0: positive


@pytest.mark.parametrize("fmt", [f for f in ALL if np.array_equal(f.levels(), -f.levels()[::-1])], ids=str)
def test_sign_symmetric(fmt: NumberFormat) -> None:
    x = torch.randn(2000, dtype=torch.float64) * 2
    x = x[x != 0]
    assert torch.equal(fmt.quantize(-x, 0.5), -fmt.quantize(x, 0.5))


# ---------------------------------------------------------------- golden level tables


def _pos(fmt: NumberFormat) -> list[float]:
    return [float(v) for v in fmt.levels() if v >= 0]


def test_sp2_golden_levels() -> None:
    assert _pos(SumOfPowers(3)) == [0, 0.5, 1]
    assert _pos(SumOfPowers(4)) == [0, 1 / 8, 1 / 4, 1 / 2, 5 / 8, 3 / 4, 1]
    assert _pos(SumOfPowers(5)) == [0, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1]
    assert SumOfPowers(4).term_bits == (2, 1) and SumOfPowers(5).term_bits == (2, 2)
    assert SumOfPowers(4).frac_bits == 3
    assert SumOfPowers(4).int_levels().tolist() == [-8, -6, -5, -4, -2, -1, 0, 1, 2, 4, 5, 6, 8]
    assert SumOfPowers(4).storage_bits == 4
    assert SumOfPowers(4).decompose(-6) == ((-1, 1), (-1, 2))  # -(1/4 + 1/2)
    assert SumOfPowers(4).decompose(8) == ((1, 2), (1, 2))  # 1/2 + 1/2: two equal shifts
    assert all(len(SumOfPowers(4).decompose(q)) <= 2 for q in SumOfPowers(4).int_levels().tolist())


def test_pot_golden_levels() -> None:
    assert _pos(PowerOfTwo(3)) == [0, 0.25, 0.5, 1]
    assert _pos(PowerOfTwo(4)) == [0] + [2.0**-k for k in range(6, -1, -1)]
    assert PowerOfTwo(4).frac_bits == 6 and len(PowerOfTwo(4).levels()) == 15
    assert PowerOfTwo(3).decompose(4) == ((1, 2),)


def test_minifloat_and_posit_tables() -> None:
    e4m3, e5m2 = parse_format("fp8_e4m3"), parse_format("fp8_e5m2")
    assert e4m3.levels().max() == 448 and e4m3.levels()[e4m3.levels() > 0].min() == 2.0**-9
    assert len(e4m3.levels()) == 253 and e4m3.storage_bits == 8
    assert e5m2.levels().max() == 57344 and e5m2.levels()[e5m2.levels() > 0].min() == 2.0**-16
    assert len(e5m2.levels()) == 247
    assert _pos(parse_format("minifloat_e2m1")) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    # saturation: beyond max maps to max; subnormals kept
    assert float(e4m3.dequantize(e4m3.quantize(torch.tensor([1e6, -500.0]), 1.0), 1.0)[0]) == 448
    assert float(e4m3.dequantize(e4m3.quantize(torch.tensor([2.0**-9]), 1.0), 1.0)) == 2.0**-9
    p = Posit(8, 0)
    assert decode_posit(0x40, 8, 0) == 1 and decode_posit(0x60, 8, 0) == 2 and decode_posit(0x50, 8, 0) == 1.5
    assert decode_posit(0x01, 8, 0) == 2.0**-6 and decode_posit(0x7F, 8, 0) == 64 and decode_posit(0xC0, 8, 0) == -1
    assert len(p.levels()) == 255 and p.levels().max() == 64
    assert Posit(8, 1).levels().max() == 4096 and Posit(16, 1).levels().max() == 2.0**28
    with pytest.raises(FormatError):
        Posit(16, 2)


def test_binary_ternary() -> None:
    assert Binary().quantize(torch.tensor([0.0, -0.0, -1e-9, 3.0]), 1.0).tolist() == [1, 1, -1, 1]
    assert Ternary().quantize(torch.tensor([0.5, -0.5, 0.51, -0.7]), 1.0).tolist() == [0, 0, 1, -1]
    assert Binary().storage_bits == 1 and Ternary().storage_bits == 2
    assert format_from_dict(Ternary(0.5).to_dict()) == Ternary(0.5)


def test_focused_fit() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(3000, generator=g) * 0.05 - 0.3, torch.randn(3000, generator=g) * 0.05 + 0.3])
    w = torch.cat([w, torch.zeros(4000)])  # pruned
    fmt = fit_focused(w, 4)
    assert fmt.means[0] < 0 < fmt.means[1]
    assert all(abs(math.log2(abs(m))) % 1 == 0 for m in fmt.means + fmt.spreads)
    s = float(w.abs().max())
    wq = fmt.dequantize(fmt.quantize(w, s), s)
    assert bool((wq[w == 0] == 0).all())
    nz = w != 0
    rel = float(((wq - w)[nz] ** 2).mean() / (w[nz] ** 2).mean())
    # beats a 4-bit power-of-two format on the same bimodal weights
    pot = PowerOfTwo(4)
    pq = pot.dequantize(pot.quantize(w, s), s)
    assert rel < float(((pq - w)[nz] ** 2).mean() / (w[nz] ** 2).mean())
    assert format_from_dict(fmt.to_dict()) == fmt
    with pytest.raises(FormatError):
        Focused(4, (-0.3, 0.25), (0.125, 0.125))
    with pytest.raises(FormatError):
        fit_focused(torch.zeros(10), 4)


# ---------------------------------------------------------------- registry, parsing, errors


@pytest.mark.parametrize("fmt", ALL, ids=IDS)
def test_dict_round_trip(fmt: NumberFormat) -> None:
    d = fmt.to_dict()
    assert d["kind"] == fmt.kind and FORMATS[fmt.kind] is type(fmt)
    assert format_from_dict(d) == fmt
    assert isinstance(fmt, NumberFormat)


@pytest.mark.parametrize(("text", "want"), [
    ("fixed8", FixedPoint(8)), ("int4", FixedPoint(4)), ("fixed4n", FixedPoint(4, narrow=True)),
    ("ufixed4", FixedPoint(4, signed=False)), ("uint8", FixedPoint(8, signed=False)),
    ("sp2_4", SumOfPowers(4)), ("sp3_6", SumOfPowers(6, 3)), ("apot6_3", SumOfPowers(6, 3)),
    ("pot4", PowerOfTwo(4)), ("binary", Binary()), (" Ternary ", Ternary()),
    ("fp8_e4m3", MiniFloat(4, 3, 7, "fn")), ("fp8_e5m2", MiniFloat(5, 2, 15, "ieee")),
    ("minifloat_e2m1", MiniFloat(2, 1)), ("minifloat_e3m2_b5", MiniFloat(3, 2, 5)), ("fp6_e3m2", MiniFloat(3, 2)),
    ("posit8_1", Posit(8, 1)),
])
def test_parse_format(text: str, want: NumberFormat) -> None:
    assert parse_format(text) == want


@pytest.mark.parametrize(("bad", "field"), [
    ({"kind": "nope"}, "format.kind"), ({"bits": 4}, "format.kind"), ("fixed8", "format"),
    ({"kind": "fixed", "bits": 1}, "fixed.bits"), ({"kind": "fixed", "bits": "8"}, "fixed.bits"),
    ({"kind": "fixed", "bits": 8, "wat": 1}, "fixed.wat"),
    ({"kind": "fixed", "bits": 4, "signed": False, "narrow": True}, "fixed.narrow"),
    ({"kind": "sp2", "bits": 2}, "sp2.bits"), ({"kind": "pot", "bits": 9}, "pot.bits"),
    ({"kind": "minifloat", "exp_bits": 4, "man_bits": 3, "special": "x"}, "minifloat.special"),
    ({"kind": "posit", "bits": 16, "es": 2}, "posit.es"), ({"kind": "ternary", "threshold": -1}, "ternary.threshold"),
])
def test_format_errors_name_the_field(bad: object, field: str) -> None:
    with pytest.raises(FormatError, match=field.replace(".", r"\.")) as e:
        format_from_dict(bad)  # type: ignore[arg-type]
    assert isinstance(e.value, MixqError)


@pytest.mark.parametrize("text", ["fixed", "sp2_2", "fp8_e4m2", "focused4", "float32", ""])
def test_parse_errors(text: str) -> None:
    with pytest.raises(FormatError):
        parse_format(text)


def test_csd() -> None:
    ns = list(range(-1100, 1100))
    for n in ns:
        d = csd(n)
        assert sum(s * (1 << k) for s, k in d) == n
        ks = [k for _, k in d]
        assert all(b - a >= 2 for a, b in zip(ks, ks[1:], strict=False))  # non-adjacent
        assert len(d) <= bin(abs(n)).count("1")  # never worse than plain binary
    assert csd_digits(torch.tensor(ns)).tolist() == [len(csd(n)) for n in ns]
    assert FixedPoint(8).decompose(7) == ((-1, 0), (1, 3))
    with pytest.raises(FormatError):
        csd(1.5)  # type: ignore[arg-type]


def test_fixed_range_and_rounding() -> None:
    f = FixedPoint(4)
    assert (f.qmin, f.qmax) == (-8, 7)
    assert (FixedPoint(4, narrow=True).qmin, FixedPoint(4, signed=False).qmax) == (-7, 15)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 100.0, -100.0])
    assert f.quantize(x, 1.0).tolist() == [0, 2, 2, 0, 7, -8]
    assert torch.equal(f.snap(x, 0.25), f.dequantize(f.quantize(x, 0.25), 0.25))
    s = torch.tensor([[0.5], [2.0]])
    assert f.quantize(torch.ones(2, 3), s).tolist() == [[2, 2, 2], [0, 0, 0]]
