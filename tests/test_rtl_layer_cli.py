"""`mixq rtl simulate` (the sub-app from :func:`mixq.cli.rtl.register` on a bare Typer app)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mixq.cli import main


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")
def test_rtl_simulate_reports_zero_mismatches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rtl", "simulate", "--model", "cnv", "--layer", "features.0", "--pe", "2",
                 "--simd", "3", "--pixels", "2", "--out", str(tmp_path)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["ok"] and res["outputs"] == 2 * 32 and res["mismatches"] == 0
    assert (tmp_path / "layer_top.v").exists() and (tmp_path / "tb.v").exists()
