"""Registry of formats: ``FORMATS``, ``format_from_dict`` and the short-name grammar of ``parse_format``.

Short names (case-insensitive, surrounding blanks ignored)::

    fixed<b> | int<b>              signed fixed point, b bits (two's complement range)
    fixed<b>n | int<b>n            signed, narrow (symmetric) range
    ufixed<b> | uint<b>            unsigned fixed point
    pot<b>                         power of two (sign + exponent, with zero)
    sp2_<b>                        SP2 (two-term sum of powers), b bits
    sp<k>_<b> | apot<b>_<k>        k-term sum of powers (APoT-style)
    binary | ternary
    fp8_e4m3 | fp8_e5m2            OCP FP8 (E4M3: bias 7, only S.1111.111 is NaN, max 448;
                                   E5M2: bias 15, IEEE-style inf/NaN, max 57344)
    fp<n>_e<E>m<M>                 minifloat with n = 1 + E + M bits, IEEE bias, all codes finite
    minifloat_e<E>m<M>[_b<bias>]   the same with an optional explicit bias
    posit<n>_<es>                  posit with n bits and es exponent bits

>>> parse_format("sp2_4")
SumOfPowers(bits=4, terms=2)
>>> parse_format("ufixed4").to_dict()
{'kind': 'fixed', 'bits': 4, 'signed': False, 'narrow': False}
>>> format_from_dict({"kind": "pot", "bits": 3})
PowerOfTwo(bits=3)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from mixq.errors import FormatError
from mixq.formats.base import NumberFormat
from mixq.formats.binary import Binary, Ternary
from mixq.formats.fixed import FixedPoint
from mixq.formats.focused import Focused
from mixq.formats.minifloat import MiniFloat
from mixq.formats.posit import Posit
from mixq.formats.pot import PowerOfTwo
from mixq.formats.sp2 import SumOfPowers

FORMATS: dict[str, type] = {
    "fixed": FixedPoint,
    "pot": PowerOfTwo,
    "sp2": SumOfPowers,
    "binary": Binary,
    "ternary": Ternary,
    "minifloat": MiniFloat,
    "posit": Posit,
    "focused": Focused,
}


def format_from_dict(d: Mapping[str, Any]) -> NumberFormat:
    """Build a format from its ``to_dict()`` form; :class:`FormatError` names a bad kind or field."""
    if not isinstance(d, Mapping):
        raise FormatError(f"format: expected a mapping like {{'kind': 'fixed', 'bits': 8}}, got {d!r}")
    kind = d.get("kind")
    cls = FORMATS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FormatError(f"format.kind: {kind!r} is not one of {', '.join(FORMATS)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    args = {k: v for k, v in d.items() if k != "kind"}
    unknown = sorted(set(args) - fields)
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise FormatError(f"{kind}.{unknown[0]}: unknown field (known: {known})")
    if kind == "focused":
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        fmt = cls(**args)
    except FormatError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - fields are validated in __post_init__
        raise FormatError(f"{kind}: {e}") from e
    return fmt  # type: ignore[no-any-return]


_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], NumberFormat]]] = [
    (re.compile(r"(?:fixed|int)(\d+)(n?)"),
     lambda m: FixedPoint(int(m[1]), signed=True, narrow=m[2] == "n")),
    (re.compile(r"u(?:fixed|int)(\d+)"), lambda m: FixedPoint(int(m[1]), signed=False)),
    (re.compile(r"pot(\d+)"), lambda m: PowerOfTwo(int(m[1]))),
    (re.compile(r"sp2_(\d+)"), lambda m: SumOfPowers(int(m[1]), 2)),
    (re.compile(r"sp(\d+)_(\d+)"), lambda m: SumOfPowers(int(m[2]), int(m[1]))),
    (re.compile(r"apot(\d+)_(\d+)"), lambda m: SumOfPowers(int(m[1]), int(m[2]))),
    (re.compile(r"binary"), lambda m: Binary()),
    (re.compile(r"ternary"), lambda m: Ternary()),
    (re.compile(r"fp8_e4m3(?:fn)?"), lambda m: MiniFloat(4, 3, 7, special="fn")),
    (re.compile(r"fp8_e5m2"), lambda m: MiniFloat(5, 2, 15, special="ieee")),
    (re.compile(r"fp(\d+)_e(\d+)m(\d+)"), lambda m: _fp(int(m[1]), int(m[2]), int(m[3]))),
    (re.compile(r"minifloat_e(\d+)m(\d+)(?:_b(-?\d+))?"),
     lambda m: MiniFloat(int(m[1]), int(m[2]), None if m[3] is None else int(m[3]))),
    (re.compile(r"posit(\d+)_(\d+)"), lambda m: Posit(int(m[1]), int(m[2]))),
]


def _fp(n: int, e: int, m: int) -> MiniFloat:
    if n != 1 + e + m:
        raise FormatError(f"format: fp{n}_e{e}m{m} has 1 + {e} + {m} = {1 + e + m} bits, not {n}")
    return MiniFloat(e, m)


def parse_format(text: str) -> NumberFormat:
    """A format from a short name (grammar in the module docstring); :class:`FormatError` if unknown."""
    if not isinstance(text, str):
        raise FormatError(f"format: expected a short name like 'fixed8', got {text!r}")
    t = text.strip().lower()
    for pat, build in _RULES:
        m = pat.fullmatch(t)
        if m:
            return build(m)
    if t.startswith("focused"):
        raise FormatError(f"format: {text!r}: focused formats are fitted, use fit_focused(w, bits)")
    raise FormatError(
        f"format: unknown short name {text!r} (e.g. fixed8, fixed4n, ufixed4, pot4, sp2_4, sp3_6, binary, "
        "ternary, fp8_e4m3, fp8_e5m2, minifloat_e2m1, posit8_1)"
    )
