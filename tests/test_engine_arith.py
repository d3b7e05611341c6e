"""The integer arithmetic: dyadic multipliers, round-half-up requantization, exact dtypes,
SP2 / power-of-two term planes, and the dot products (every path against exact int64)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mixq.engine.arith import (
    dyadic,
    dyadic_common,
    exact_dtype,
    requantize,
    requantize_sum,
    round_half_up,
    signed_bits,
)
from mixq.engine.kernels import DotProgram, conv2d_int64, grouped_conv2d, term_planes
from mixq.engine.model import IntNode
from mixq.engine.runner import KERNELS
from mixq.formats import parse_format


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e6), st.integers(min_value=4, max_value=31))
def test_dyadic_is_the_nearest_with_mult_bits(r: float, bits: int) -> None:
    m, n = dyadic(r, bits)
    assert n >= 0 and m < 2**bits or n == 0
    if n > 0:
        assert m >= 2 ** (bits - 1)
    assert abs(Fraction(m, 2**n) - Fraction(r)) <= Fraction(1, 2 ** (n + 1))


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**40), 2**40), st.integers(0, 2**16), st.integers(0, 40))
def test_requantize_is_round_half_up(x: int, m: int, n: int) -> None:
    got = int(requantize(torch.tensor([x]), torch.tensor(m), torch.tensor(n))[0])
    assert got == math.floor(Fraction(x * m, 2**n) + Fraction(1, 2))


def test_requantize_ties_go_up() -> None:
    # 5/2, -5/2, 7/2, -7/2 -> 3, -2, 4, -3
    out = requantize(torch.tensor([5, -5, 7, -7]), torch.tensor(1), torch.tensor(1))
    assert out.tolist() == [3, -2, 4, -3]
    assert round_half_up(np.array([2.5, -2.5, 0.49])).tolist() == [3, -2, 0]


def test_dyadic_common_keeps_the_finer_operand_exact() -> None:
    (ma, mb), n = dyadic_common([np.array([1.0, 1.0]), np.array([3.7, 1.0])], 16)
    assert ma.tolist()[0] == 2 ** int(n[0]) and mb.tolist()[1] == 2 ** int(n[1])
    s = requantize_sum([torch.tensor([2, 2]), torch.tensor([10, 10])], [torch.from_numpy(ma), torch.from_numpy(mb)],
                       torch.from_numpy(n))
    assert s.tolist() == [39, 12]


def test_bits_and_dtypes() -> None:
    assert [signed_bits(b) for b in (0, 1, 127, 128, 2**31 - 1)] == [1, 2, 8, 9, 32]
    assert exact_dtype(2**24 - 1) == torch.float32 and exact_dtype(2**24) == torch.float64
    assert exact_dtype(2**53) == torch.int64 and exact_dtype(10, allow_float32=False) == torch.float64


@pytest.mark.parametrize("name", ["sp2_4", "sp2_5", "sp3_6", "pot4", "binary", "ternary"])
def test_term_planes_rebuild_every_level(name: str) -> None:
    fmt = parse_format(name)
    levels = np.asarray(fmt.int_levels(), dtype=np.int64)
    codes = np.stack([levels, levels[::-1]])
    planes = term_planes(codes, fmt)
    assert all(set(np.unique(p).tolist()) <= {-1, 0, 1} for p in planes.values())
    assert np.array_equal(sum(p << s for (_, s), p in planes.items()), codes)


def _kernel(op: str, arrays: dict[str, np.ndarray], x_bound: int, bound: int, **attrs: object) -> object:
    node = IntNode("t", op, ("input",), (4,), np.ones(4), bound, dict(attrs), arrays)
    return KERNELS[op](node, {"input": x_bound}, "shift_add")


def test_requant_float_path_equals_int_path() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**30), 2**30, (3, 4), generator=gen)
    arrays = {"M": np.array([40000, 51234, 65535, 33000]), "n": np.array([20, 25, 31, 16])}
    attrs = {"qmin": -(2**40), "qmax": 2**40}
    fast = _kernel("requant", arrays, 2**30, 2**40, **attrs)([x], {})  # type: ignore[operator]
    slow = _kernel("requant", arrays, 2**62, 2**40, **attrs)([x], {})  # type: ignore[operator]
    ref = requantize(x, torch.from_numpy(arrays["M"]), torch.from_numpy(arrays["n"]))
    assert torch.equal(fast.to(torch.int64), ref) and torch.equal(slow.to(torch.int64), ref)


def _conv_node(codes: np.ndarray, row_format: np.ndarray, formats: list[str], bias: np.ndarray, groups: int,
               frac: int) -> IntNode:
    attrs = {"formats": [parse_format(f).to_dict() for f in formats], "stride": [1, 1], "padding": [1, 1],
             "dilation": [1, 1], "groups": groups, "acc_budget": 63, "acc_bits": 60, "saturate": False,
             "acc_frac_bits": frac}
    arrays = {"weight": codes, "row_format": row_format, "bias": bias}
    return IntNode("c", "conv", ("input",), (codes.shape[0], 6, 6), np.ones((codes.shape[0], 1, 1)), 2**60,
                   attrs, arrays)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("x_bound", [255, 2**20])  # float32 / float64 GEMMs
@pytest.mark.parametrize("frac", [0, 5])
def test_dot_products_are_exact(groups: int, x_bound: int, frac: int) -> None:
    rng = np.random.default_rng(groups + x_bound + frac)
    rows, cin = 8, 8
    sp2 = parse_format("sp2_4")
    row_format = np.array([0, 1] * (rows // 2), dtype=np.int64)
    shape = (rows, cin // groups, 3, 3)
    codes = np.where(row_format.reshape(-1, 1, 1, 1) == 0, rng.integers(-127, 128, shape),
                     rng.choice(sp2.int_levels(), shape))
    bias = rng.integers(-(2**20), 2**20, rows)
    x = torch.from_numpy(rng.integers(0, x_bound + 1, (2, cin, 6, 6)))
    ref = conv2d_int64(x, torch.from_numpy(codes), [1, 1], [1, 1], [1, 1], groups) * 2**frac
    ref = ref + torch.from_numpy(bias).reshape(1, -1, 1, 1)
    node = _conv_node(codes, row_format, ["fixed8n", "sp2_4"], bias, groups, frac)
    for products in ("shift_add", "multiply"):
        out = DotProgram(node, x_bound, products)([x.to(torch.float32)], {})
        assert torch.equal(out.to(torch.int64), ref), products


def test_float32_exactness_at_the_limit() -> None:
    # sum |w x| just below 2**24: float32 is chosen and still exact
    k = 256
    w = np.full((1, k, 1, 1), 255, dtype=np.int64)
    x = torch.full((1, k, 1, 1), 255.0)
    bound = 255 * 255 * k  # 16,646,400 < 2**24
    node = IntNode("c", "conv", ("input",), (1, 1, 1), np.ones((1, 1, 1)), bound,
                   {"formats": [parse_format("fixed9").to_dict()], "stride": [1, 1], "padding": [0, 0],
                    "dilation": [1, 1], "groups": 1, "acc_budget": 32, "acc_bits": 26, "saturate": False},
                   {"weight": w, "row_format": np.zeros(1, dtype=np.int64), "bias": np.array([-1])})
    prog = DotProgram(node, 255, "multiply")
    assert prog.acc_dtype == torch.float32
    assert int(prog([x], {}).reshape(-1)[0]) == bound - 1


def test_grouped_conv_matches_torch() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-9, 10, (2, 6, 7, 7), generator=gen).double()
    for groups, o in ((6, 6), (3, 9)):
        w = torch.randint(-9, 10, (o, 6 // groups, 3, 3), generator=gen).double()
        b = torch.arange(o, dtype=torch.float64)
        for stride in (1, 2):
            ref = F.conv2d(x, w, b, stride, 1, 1, groups)
            assert torch.equal(grouped_conv2d(x, w, b, (stride, stride), (1, 1), (1, 1), groups), ref)
