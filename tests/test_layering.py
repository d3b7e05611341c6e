"""Every import in mixq follows the import-rules table of docs/ARCHITECTURE.md, with no exceptions list.

The table names, per package, the mixq packages it may import, lowest row first. The test reads every
``import`` of every module (module level, inside functions, under ``TYPE_CHECKING``) and checks:

* each import of another mixq package is one its row allows, and that package stands in an earlier row;
* each package the row allows is really imported (the table is the true picture, not a wish list);
* every package of ``src/mixq`` has a row, and no row names a package that does not exist;
* third-party packages a row forbids (``hw``: torch) are not imported;
* inside a package, modules and subpackages import each other without a cycle (``TYPE_CHECKING`` aside).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mixq"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Rule:
    package: str
    row: int
    allowed: tuple[str, ...]  # "graph" (the package) or "graph.spec" (that module only)
    forbidden: tuple[str, ...]  # third-party top-level packages


@dataclass(frozen=True)
class Import:
    module: str  # importing module, e.g. mixq.hw.cost
    name: str  # imported name, e.g. mixq.graph.spec or torch.nn
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def rules(text: str) -> dict[str, Rule]:
    """The rows of the "Import rules" table."""
    section = text.split("## Import rules", 1)[1].split("\n## ", 1)[0]
    out: dict[str, Rule] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        names = [re.findall(r"`([^`]+)`", c) for c in (cells[0], cells[2], cells[3])]
        pkg = names[0][0]
        out[pkg] = Rule(pkg, len(out), tuple(names[1]), tuple(names[2]))
    return out


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """``mixq.hw.cost`` -> ``hw``; the top-level modules ``mixq/__init__.py`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def _is_module(name: str) -> bool:
    path = SRC.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or path.is_dir()


def imports(source: str, module: str, is_package: bool = False) -> Iterator[Import]:
    """Every import of ``source`` (module ``module``), relative ones resolved."""
    tree = ast.parse(source)
    typed = _type_checking_lines(tree)
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            pkg = node.module or ""
            if node.level:
                pkg = ".".join(base[: len(base) - node.level + 1] + ([pkg] if pkg else []))
            # `from mixq import api` / `from mixq.hw import cost` import the submodule too
            names = [pkg] + [f"{pkg}.{a.name}" for a in node.names if _is_module(f"{pkg}.{a.name}")]
        for name in names:
            yield Import(module, name, node.lineno, node.lineno in typed)


def all_imports() -> list[Import]:
    out: list[Import] = []
    for f in sorted(SRC.rglob("*.py")):
        out += imports(f.read_text(encoding="utf-8"), module_name(f), f.name == "__init__.py")
    return out


def _target(name: str) -> tuple[str, str] | None:
    """(package, dotted name inside mixq) of a mixq import, None for third-party ones."""
    if name == "mixq" or not name.startswith("mixq."):
        return None
    rest = name.split(".", 1)[1]
    return rest.split(".")[0], rest


def violations(table: dict[str, Rule], found: list[Import]) -> list[str]:
    bad: list[str] = []
    used: dict[str, set[str]] = defaultdict(set)
    for imp in found:
        here = package_of(imp.module)
        rule = table.get(here)
        if rule is None:
            bad.append(f"{imp.module}: package {here!r} has no row in the import rules of docs/ARCHITECTURE.md")
            continue
        tgt = _target(imp.name)
        if tgt is None:
            top = imp.name.split(".")[0]
            if top in rule.forbidden:
                bad.append(f"{imp.module}:{imp.line} imports {imp.name} (its row forbids {top})")
            continue
        pkg, dotted = tgt
        if pkg == here:
            continue
        match = next((a for a in rule.allowed if a == pkg or dotted == a or dotted.startswith(a + ".")), None)
        if match is None:
            bad.append(f"{imp.module}:{imp.line} imports {imp.name}: row {here!r} does not allow {pkg!r}")
        else:
            used[here].add(match)
    for pkg, rule in table.items():
        for a in rule.allowed:
            there = table.get(a.split(".")[0])
            if there is None:
                bad.append(f"row {pkg!r} allows {a!r}, which has no row")
            elif there.row >= rule.row:
                bad.append(f"row {pkg!r} allows {a!r}, which does not stand in an earlier row (upward import)")
            elif a not in used[pkg]:
                bad.append(f"row {pkg!r} allows {a!r}, but no module of {pkg!r} imports it (keep the table true)")
    return bad


def cycles(found: list[Import]) -> list[list[str]]:
    """Import cycles between the units (a package's direct submodules and subpackages) of one package."""
    def unit(name: str) -> str:
        return ".".join(name.split(".")[:3])

    graph: dict[str, set[str]] = defaultdict(set)
    for imp in found:
        if imp.type_only or not imp.name.startswith("mixq."):
            continue
        a, b = unit(imp.module), unit(imp.name)
        if a != b and package_of(a) == package_of(b) and a.count(".") == 2 and b.count(".") == 2:
            graph[a].add(b)
    out: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_follows_the_table() -> None:
    table = rules(DOC.read_text(encoding="utf-8"))
    assert len(table) > 20, "import rules table not found in docs/ARCHITECTURE.md"
    packages = {module_name(f).split(".")[1] if f.name != "__init__.py" or f.parent != SRC else "__init__"
                for f in SRC.rglob("*.py")}
    missing = sorted(packages - set(table))
    extra = sorted(set(table) - packages)
    problems = violations(table, all_imports())
    problems += [f"package {p!r} has no row in the import rules" for p in missing]
    problems += [f"row {p!r} names no package of src/mixq" for p in extra]
    assert not problems, "\n".join(problems)


def test_no_import_cycle_inside_a_package() -> None:
    found = cycles(all_imports())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


TABLE = """
## Import rules
| package | layer | may import | not |
|---|---|---|---|
| `errors` | base | | |
| `formats` | L0 | `errors` | |
| `graph` | L3 | `errors`, `formats` | |
| `hw` | L4 | `errors`, `graph.spec` | `torch` |
"""


def _check(module: str, source: str, table: str = TABLE) -> list[str]:
    return [v for v in violations(rules(table), list(imports(source, module)))
            if "no module of" not in v]


@pytest.mark.parametrize("module,source,expect", [
    ("mixq.formats.fixed", "from mixq.hw import cost\n", "does not allow 'hw'"),  # upward
    ("mixq.formats.fixed", "def f():\n    import mixq.graph.spec\n", "does not allow 'graph'"),  # lazy
    ("mixq.formats.fixed", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mixq.hw import x\n",
     "does not allow 'hw'"),  # type-only imports count for layering
    ("mixq.hw.cost", "import torch\n", "forbids torch"),
    ("mixq.hw.cost", "from mixq.graph import capture\n", "does not allow 'graph'"),  # only graph.spec
    ("mixq.hw.cost", "from mixq import graph\n", "does not allow 'graph'"),
    ("mixq.hw.cost", "from ..graph.capture import capture\n", "does not allow 'graph'"),  # relative
])
def test_checker_catches(module: str, source: str, expect: str) -> None:
    assert any(expect in v for v in _check(module, source)), _check(module, source)


def test_checker_allows_and_checks_the_table_itself() -> None:
    assert not _check("mixq.hw.cost", "from mixq.graph.spec import LayerSpec\nfrom mixq.errors import E\n")
    assert not _check("mixq.formats.fixed", "from mixq.formats.base import X\nimport numpy\n")
    assert not [v for v in violations(rules(TABLE), []) if "earlier row" in v]
    swapped = TABLE.replace("| `graph` | L3 | `errors`, `formats` | |\n", "") + "| `graph` | L3 | `errors` | |\n"
    upward = [v for v in violations(rules(swapped), []) if "earlier row" in v]
    assert upward == ["row 'hw' allows 'graph.spec', which does not stand in an earlier row (upward import)"]
    unused = [v for v in violations(rules(TABLE), []) if "no module of" in v]
    assert "row 'formats' allows 'errors', but no module of 'formats' imports it (keep the table true)" in unused


def test_cycle_finder() -> None:
    found = [Import("mixq.algorithms.qat.run", "mixq.algorithms.prune.masks", 1, False),
             Import("mixq.algorithms.prune.run", "mixq.algorithms.qat", 2, False),
             Import("mixq.engine.context", "mixq.engine.convert", 3, True)]
    assert cycles(found) == [["mixq.algorithms.prune", "mixq.algorithms.qat"]]
    assert cycles(found[:1] + found[2:]) == []
