"""Issue 17's "captured once per command and passed down": one FX trace per command. The one tracer
(:class:`mixq.graph.trace.Tracer`) runs once, in ``normalize``, and every later stage (capture, BN folding,
the PTQ streams, the integer engine, the hardware lowering, the RTL) reads that graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mixq.cli import main
from mixq.graph import trace as trace_mod

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_command_traces_the_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    orig = trace_mod.Tracer.trace

    def counted(self: Any, root: Any, concrete_args: Any = None) -> Any:
        calls.append(type(root).__name__)
        return orig(self, root, concrete_args)

    monkeypatch.setattr(trace_mod.Tracer, "trace", counted)
    q = tmp_path / "q"
    commands = [["quantize", "cnv", "--images", "64", "--out", str(q)],
                ["verify", "--from", str(q), "--images", "8", "--out", str(tmp_path / "v")],
                ["estimate", "--from", str(q), "--out", str(tmp_path / "e")],
                ["rtl", "build", "--from", str(q), "--images", "0", "--out", str(tmp_path / "r")]]
    for cmd in commands:
        calls.clear()
        assert main(cmd) == 0, cmd
        assert len(calls) == 1, (cmd, calls)
