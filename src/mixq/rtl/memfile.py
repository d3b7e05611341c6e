"""Memory initialisation files (``$readmemh``) for the generated layer engines.

A word is a list of fields packed LSB first (field 0 in the lowest bits), each field
stored in two's complement of its width. One word per line, hex, fixed width.

>>> pack([3, -1], [4, 4])
243
>>> mem_text([1, 255], 8)
'01\\nff\\n'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mixq.errors import HardwareError
from mixq.io import atomic_write_text


def pack(fields: Sequence[int], widths: Sequence[int]) -> int:
    """Fields packed LSB first, each in two's complement of its width."""
    word, pos = 0, 0
    for v, w in zip(fields, widths, strict=True):
        v = int(v)
        if not -(1 << w) < v < (1 << w):
            raise HardwareError(f"memory field {v} does not fit {w} bits")
        word |= (v & ((1 << w) - 1)) << pos
        pos += w
    return word


def mem_text(words: Sequence[int], width: int) -> str:
    """``$readmemh`` text of ``words`` (unsigned integers below ``2**width``)."""
    digits = max(1, (width + 3) // 4)
    out = []
    for w in words:
        if w < 0 or w >> width:
            raise HardwareError(f"memory word {w} does not fit {width} bits")
        out.append(f"{w:0{digits}x}")
    return "\n".join(out) + "\n"


def write_mem(path: Path, words: Sequence[int], width: int) -> Path:
    """Write a ``$readmemh`` file atomically; returns ``path``."""
    return atomic_write_text(path, mem_text(words, width))


def signed_width(values: Sequence[int]) -> int:
    """Bits of a two's-complement field holding every value (at least 2).

    >>> signed_width([0, 7]), signed_width([-8, 3]), signed_width([-9])
    (4, 4, 5)
    """
    w = 2
    for v in values:
        v = int(v)
        w = max(w, (v.bit_length() if v >= 0 else (-v - 1).bit_length()) + 1)
    return w
