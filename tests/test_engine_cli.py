"""``mixq verify`` and ``mixq export`` (registered by ``mixq.cli.engine.register``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mixq.cli import engine


def _app() -> typer.Typer:
    app = typer.Typer()
    engine.register(app)

    @app.callback()
    def main() -> None:
        """mixq (test app)."""

    return app


def test_verify_cnv(tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    res = CliRunner().invoke(_app(), ["verify", "cnv", "--weight", "fixed4n", "--act", "ufixed4", "--images", "16",
                                      "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "EXACT (0 of 160 outputs differ, 16 inputs)" in res.output
    rep = json.loads(out.read_text())
    assert rep["exact"] and len(rep["layers"]) == 6


@pytest.mark.parametrize("fmt", ["int", pytest.param("qonnx", marks=pytest.mark.slow),
                                 pytest.param("qdq", marks=pytest.mark.slow)])
def test_export_cnv(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / ("cnv.json" if fmt == "int" else "cnv.onnx")
    res = CliRunner().invoke(_app(), ["export", "cnv", "--format", fmt, "--out", str(out), "--check", "--images", "4"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "argmax agreement 100.00%" in res.output


def test_export_unknown_format(tmp_path: Path) -> None:
    res = CliRunner().invoke(_app(), ["export", "cnv", "--format", "tflite", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0
