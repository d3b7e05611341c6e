"""Packaging: one version, a light ``import mixq`` with the main API, licence and changelog."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import mixq
from mixq._version import __version__

ROOT = Path(__file__).resolve().parents[1]

# public name -> (module, attribute) it must be
API = {
    "default_plan": ("mixq.api", "default_plan"),
    "quantize": ("mixq.api", "quantize"),
    "evaluate": ("mixq.api", "evaluate"),
    "verify": ("mixq.engine.verify", "verify"),
    "estimate": ("mixq.hw.estimate", "estimate"),
    "load_plan": ("mixq.plan", "load_plan"),
    "save_plan": ("mixq.plan", "save_plan"),
    "QuantPlan": ("mixq.plan", "QuantPlan"),
    "parse_format": ("mixq.formats", "parse_format"),
    "capture": ("mixq.graph.capture", "capture"),
    "MixqError": ("mixq.errors", "MixqError"),
}


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_import_mixq_does_not_import_torch() -> None:
    p = _fresh("import mixq, sys; assert 'torch' not in sys.modules, sorted(sys.modules); print(mixq.__version__)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == __version__


def test_every_public_name_resolves() -> None:
    p = _fresh("import mixq\nfor n in mixq.__all__: getattr(mixq, n)\nprint(len(mixq.__all__))")
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == len(mixq.__all__)


@pytest.mark.parametrize("name", sorted(API))
def test_public_name_is_the_right_object(name: str) -> None:
    module, attr = API[name]
    assert name in mixq.__all__
    assert getattr(mixq, name) is getattr(importlib.import_module(module), attr)


def test_all_and_dir() -> None:
    assert set(mixq.__all__) == set(API) | {"__version__"}
    assert mixq.__version__ == __version__
    assert set(mixq.__all__) <= set(dir(mixq))
    assert {"api", "zoo", "data", "formats", "hw"} <= set(dir(mixq))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = mixq.nope  # type: ignore[attr-defined]


def test_subpackages_on_attribute_access() -> None:
    p = _fresh("import mixq\nprint(mixq.zoo.__name__, mixq.hw.__name__)\nfrom mixq import data\nprint(data.__name__)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["mixq.zoo", "mixq.hw", "mixq.data"]


def test_version_has_one_source() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in meta["project"]
    assert "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mixq._version.__version__"}
    parts = __version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts), __version__


def test_license_and_changelog() -> None:
    lic = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in lic and "Version 2.0, January 2004" in lic and "END OF TERMS AND CONDITIONS" in lic
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "Apache-2.0" in str(meta["project"]["license"])
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert f"## [{__version__}]" in changelog, f"CHANGELOG.md has no section for {__version__}"
