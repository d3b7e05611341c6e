"""Number formats (layer L0): frozen dataclasses describing dyadic level sets.

See :mod:`mixq.formats.base` for the contract; :mod:`mixq.formats.registry` for
``format_from_dict`` and the short-name grammar of ``parse_format``.
"""

from mixq.formats.base import NumberFormat
from mixq.formats.binary import Binary, Ternary
from mixq.formats.fixed import FixedPoint, csd, csd_digits
from mixq.formats.focused import Focused, fit_focused
from mixq.formats.minifloat import MiniFloat
from mixq.formats.posit import Posit
from mixq.formats.pot import PowerOfTwo
from mixq.formats.registry import FORMATS, format_from_dict, parse_format
from mixq.formats.sp2 import SumOfPowers

SP2 = SumOfPowers

__all__ = [
    "FORMATS",
    "SP2",
    "Binary",
    "FixedPoint",
    "Focused",
    "MiniFloat",
    "NumberFormat",
    "Posit",
    "PowerOfTwo",
    "SumOfPowers",
    "Ternary",
    "csd",
    "csd_digits",
    "fit_focused",
    "format_from_dict",
    "parse_format",
]
