"""The hardware model has no torch: every ``mixq.hw`` module (and ``mixq.plan``, ``mixq.formats``,
``mixq.graph.spec``, which it reads) imports in a fresh interpreter without loading torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import mixq.hw

ROOT = Path(__file__).resolve().parents[1]
HW_MODULES = sorted(f"mixq.hw.{m.name}" for m in pkgutil.iter_modules(mixq.hw.__path__))
PROBE = "import importlib, sys\nimportlib.import_module({mod!r})\nprint('torch' in sys.modules)\n"


def _loads_torch(module: str) -> bool:
    p = subprocess.run([sys.executable, "-c", PROBE.format(mod=module)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return {"True": True, "False": False}[p.stdout.strip()]


def test_every_hw_module_is_listed() -> None:
    assert {"mixq.hw.cost", "mixq.hw.units", "mixq.hw.estimate", "mixq.hw.kinds", "mixq.hw.lower",
            "mixq.hw.overlay", "mixq.hw.pe", "mixq.hw.streaming"} <= set(HW_MODULES)


@pytest.mark.parametrize("module", ["mixq.hw", *HW_MODULES, "mixq.plan", "mixq.formats", "mixq.graph.spec"])
def test_module_imports_without_torch(module: str) -> None:
    assert not _loads_torch(module), f"importing {module} loads torch"


def test_probe_sees_torch() -> None:
    # the same probe reports torch where it is loaded, so the tests above can fail
    assert _loads_torch("mixq.graph.capture")
    assert _loads_torch("mixq.formats._torch")


def test_formats_load_torch_on_first_kernel() -> None:
    code = ("import sys\nfrom mixq.formats import FixedPoint, SumOfPowers\n"
            "assert 'torch' not in sys.modules\nimport torch\n"
            "x = torch.tensor([0.3, -1.2, 2.6])\n"
            "print(FixedPoint(4).quantize(x, 0.5).tolist(), SumOfPowers(4).quantize(x, 1.0).tolist())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[1, -2, 5] [2, -8, 8]"  # 0.25, -1, +1 (clamped) on the SP2 grid of 1/8
