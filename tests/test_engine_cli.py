"""``mixq verify`` and ``mixq export`` (registered by ``mixq.cli.engine.register``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixq.cli import main


def test_verify_cnv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["verify", "cnv", "--weight", "fixed4n", "--act", "ufixed4", "--images", "16", "--out", str(tmp_path)])
    assert rc == 0
    assert "EXACT (0 of 160 outputs differ, 16 inputs)" in capsys.readouterr().out
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["exact"] and len(rep["layers"]) == 6


@pytest.mark.parametrize("fmt", ["int", pytest.param("qonnx", marks=pytest.mark.slow),
                                 pytest.param("qdq", marks=pytest.mark.slow)])
def test_export_cnv(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "cnv", "--format", fmt, "--out", str(tmp_path), "--check", "--images", "4"]) == 0
    out = tmp_path / ("model.json" if fmt == "int" else "model.onnx")
    assert out.is_file() and "argmax agreement 100.00%" in capsys.readouterr().out


def test_export_unknown_format_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "cnv", "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert "--format" in capsys.readouterr().err and not (tmp_path / "x").exists()
