"""`mixq rtl simulate` (the sub-app from :func:`mixq.cli.rtl.register` on a bare Typer app)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mixq.cli.rtl import register


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")
def test_rtl_simulate_reports_zero_mismatches(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test app"""

    register(app)
    r = CliRunner().invoke(app, ["rtl", "simulate", "--model", "cnv", "--layer", "features.0", "--pe", "2",
                                 "--simd", "3", "--pixels", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["ok"] and res["outputs"] == 2 * 32 and res["mismatches"] == 0
    assert (tmp_path / "layer_top.v").exists() and (tmp_path / "tb.v").exists()
