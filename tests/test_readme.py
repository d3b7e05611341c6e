"""The README's Python example runs as written and gives a sensible accuracy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_readme_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    # W4A4 round-to-nearest CNV on the 2,000-image subset (FP32: ~94%)
    assert 85.0 < float(printed) <= 100.0
