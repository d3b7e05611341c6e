"""Unique names for generated graphs (the ONNX importer's FX nodes, the exporters' ONNX tensors)."""

from __future__ import annotations


class UniqueNames:
    """The names taken so far; :meth:`take` gives ``base``, or ``base_1``, ``base_2``... when taken.

    >>> n = UniqueNames(); n.take("x"), n.take("x"), n.take("x_1"), n.take("y")
    ('x', 'x_1', 'x_1_1', 'y')
    """

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name
