"""Imports in mixq point only down the layers of docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mixq"

# Package -> layer. Lower layers may not import higher ones.
LAYER = {
    "errors": 0, "io": 0, "progress": 0, "validate": 0, "modes": 0, "formats": 0, "_version": 0,
    "zoo": 0, "data": 0,
    "quant": 1,
    "plan": 2, "nn": 2,
    "graph": 3,
    "hw": 4, "engine": 4,
    "algorithms": 5,
    "export": 6, "rtl": 6, "artifact": 6,
    "report": 7, "api": 7,
    "tasks": 8,
    "run": 9, "cli": 9, "__init__": 9, "__main__": 9,
}
# Extra rules beyond the layer numbers.
FORBIDDEN = {
    "hw": {"torch", "mixq.nn", "mixq.quant"},  # the hardware model is pure data and arithmetic
    "zoo": {"mixq.formats"},
    "data": {"mixq.formats"},
    "modes": {"mixq"},  # base helper: torch and the standard library only
}


def _imports(source: str) -> list[str]:
    tree = ast.parse(source)
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "mixq" and node.level == 0:
            names.extend(f"mixq.{a.name}" for a in node.names)  # from mixq import api, zoo
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _violations(pkg: str, source: str, label: str) -> list[str]:
    here = LAYER.get(pkg)
    if here is None:
        return [f"{label}: package {pkg!r} has no layer in tests/test_layering.py"]
    bad: list[str] = []
    for name in _imports(source):
        for forbidden in FORBIDDEN.get(pkg, ()):
            if name == forbidden or name.startswith(forbidden + "."):
                bad.append(f"{label} imports {name} (forbidden in {pkg})")
        if not name.startswith("mixq."):
            continue
        there = LAYER.get(name.split(".")[1])
        if there is not None and there > here:
            bad.append(f"{label} (L{here}) imports {name} (L{there})")
    return bad


def test_imports_point_down() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10, "no sources found"
    problems = []
    for f in files:
        rel = f.relative_to(SRC)
        problems += _violations(rel.parts[0].removesuffix(".py"), f.read_text(encoding="utf-8"), str(rel))
    assert not problems, "\n".join(problems)


def test_checker_catches_an_upward_import() -> None:
    assert any("imports mixq.report" in v for v in _violations("formats", "from mixq.report import html\n", "x"))
    assert _violations("quant", "import mixq.plan.plan\n", "x")
    assert any("imports mixq.api" in v for v in _violations("algorithms", "from mixq import api, zoo\n", "x"))
    assert not _violations("report", "from mixq.formats import FixedPoint\n", "x")


@pytest.mark.parametrize("pkg,mod", [("hw", "torch"), ("hw", "mixq.nn")])
def test_checker_catches_forbidden(pkg: str, mod: str) -> None:
    assert _violations(pkg, f"import {mod}\n", "x")
