"""The documentation builds from the docstrings without a warning, and its examples run.

The docstrings' own examples run through pytest's ``--doctest-modules`` (pyproject);
the README's Python example through ``tests/test_readme.py``.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MISSING = [m for m in ("sphinx", "myst_parser") if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (pip install -e '.[docs]')")
def test_sphinx_build_has_no_warning(tmp_path: Path) -> None:
    out = tmp_path / "html"
    p = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert p.returncode == 0, f"sphinx failed (exit {p.returncode}):\n{p.stderr[-6000:]}"
    pages = {f.stem for f in out.glob("*.html")}
    assert {"index", "quickstart", "architecture", "changelog", "api", "mixq", "mixq.api"} <= pages
    api = (out / "mixq.api.html").read_text(encoding="utf-8")
    assert 'id="mixq.api.default_plan"' in api  # autodoc documented the members, not just the module


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_docs_examples_run(page: str) -> None:
    result = doctest.testfile(str(DOCS / page), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in docs/{page} failed"


def test_every_rst_page_is_in_a_toctree() -> None:
    listed = set()
    for rst in DOCS.glob("*.rst"):
        for block in re.findall(r"\.\. toctree::\n((?:   .*\n|\n)+)", rst.read_text(encoding="utf-8")):
            listed |= {ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith(":")}
    pages = {p.stem for p in DOCS.glob("*.rst")} - {"index"}
    assert pages <= listed, f"not in a toctree: {sorted(pages - listed)}"


def test_api_pages_cover_the_packages() -> None:
    """Every public package (one with ``__all__`` in its ``__init__``) has an API page."""
    src = ROOT / "src" / "mixq"
    skip = {"cli", "report", "rtl"}  # the command line and report have their own docs (--help, the report itself)
    packages = {
        f"mixq.{d.name}" for d in src.iterdir()
        if (d / "__init__.py").is_file() and "__all__" in (d / "__init__.py").read_text(encoding="utf-8")
        and d.name not in skip
    }
    pages = {p.stem for p in DOCS.glob("mixq*.rst")}
    assert packages <= pages, f"no API page for {sorted(packages - pages)}"
