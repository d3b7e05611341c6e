"""The command line's error and exit contract, driven through real processes where it matters.

0 ok, 1 error (one line), 2 usage error (one line), 3 failed check, 130 interrupted;
never a traceback without --debug. Every numeric option of every command refuses a
bad value at parse time (before any work, nothing written).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import pytest

from mixq.cli import _register_all, app, main

MIXQ = [sys.executable, "-m", "mixq.cli"]


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(MIXQ + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _commands() -> dict[str, Any]:
    """Every command, by its path ("estimate", "rtl generate"), from the real app."""
    from typer.main import get_command

    _register_all()
    root: Any = get_command(app)
    out: dict[str, Any] = {}
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):
            for sub, c in cmd.commands.items():
                out[f"{name} {sub}"] = c
        else:
            out[name] = cmd
    return out


COMMANDS = _commands()
# the first positional argument, when a command has one
ARG = {"capture": "cnv", "quantize": "cnv", "verify": "cnv", "export": "cnv", "estimate": "cnv", "search": "cnv",
       "rtl build": "cnv"}
REQUIRED = {"rtl generate": ["--model", "cnv", "--layer", "features.0"],
            "rtl simulate": ["--model", "cnv", "--layer", "features.0"],
            "rtl synth": ["--model", "cnv", "--layer", "features.0"]}


def _numeric_options() -> list[tuple[str, str, str]]:
    """(command, option, bad value) for every int and float option."""
    cases = []
    for path, cmd in COMMANDS.items():
        hints = typing.get_type_hints(cmd.callback)
        for p in cmd.params:
            if not p.opts[0].startswith("--"):
                continue
            kinds = set(typing.get_args(hints[p.name])) or {hints[p.name]}
            kind = "integer" if int in kinds else "float" if float in kinds else ""
            if kind == "integer":
                cases += [(path, p.opts[0], "-1"), (path, p.opts[0], "x")]
            elif kind == "float":
                cases += [(path, p.opts[0], v) for v in ("nan", "inf", "-1")]
    return cases


NUMERIC = _numeric_options()


def test_every_command_is_covered() -> None:
    assert set(COMMANDS) == {"run", "train", "capture", "quantize", "verify", "export", "estimate", "calibrate-hw",
                             "qat", "prune", "search", "rtl generate", "rtl simulate", "rtl synth", "rtl build",
                             "isp train", "isp eval", "isp denoise"}
    assert len(NUMERIC) >= 60


@pytest.mark.parametrize(("command", "option", "value"), NUMERIC, ids=[f"{c}{o}={v}" for c, o, v in NUMERIC])
def test_bad_numeric_option_is_a_usage_error(command: str, option: str, value: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = [*command.split(), *([ARG[command]] if command in ARG else []), *REQUIRED.get(command, []),
            option, value]
    if "--out" in COMMANDS[command].params[0].opts or any("--out" in p.opts for p in COMMANDS[command].params):
        args += ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and "usage error" in err[0], err
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("args", [
    [], ["estimate"], ["nosuchcommand"], ["estimate", "cnv", "--nosuchoption"], ["estimate", "cnv", "--parts", "abc"],
    ["rtl", "generate"], ["quantize", "cnv", "--recipe", "nope"], ["estimate", "cnv", "--arch", "gpu"],
], ids=lambda a: " ".join(a) or "no-args")
def test_usage_errors_exit_2_with_one_line(args: list[str], tmp_path: Path) -> None:
    r = _run(args, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "usage error" in r.stderr


def test_version_and_fast_help(tmp_path: Path) -> None:
    from mixq import __version__

    r = _run(["--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"mixq {__version__}"
    code = ("import sys, runpy; sys.argv = ['mixq', 'run', '--help']\n"
            "try:\n runpy.run_module('mixq.cli', run_name='__main__')\n"
            "except SystemExit as e:\n assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'help imported torch'")
    r2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert "--out" in r2.stdout


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["verify", "nosuch"], 1, "not a zoo model"),
    (["estimate", "cnv", "--part", "xc0000"], 1, "xc0000"),
    (["rtl", "generate", "--model", "cnv", "--layer", "no.such"], 1, "no.such"),
    (["estimate", "resnet18", "--part", "xc7z020"], 3, "does not fit"),
    (["qat", "--resume"], 1, "no qat run to resume"),
    (["prune", "--resume"], 1, "no prune run to resume"),
    (["qat", "--model", "resnet20", "--max-train", "64"], 1, "the model takes 3x32x32 inputs"),
    (["prune", "--model", "mobilenet_v2", "--max-train", "64"], 1, "--dataset fmnist has 1x28x28 images"),
])
def test_errors_and_failed_checks(args: list[str], code: int, needle: str, tmp_path: Path) -> None:
    r = _run([*args, "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert needle in err[-1] and len(err) == 1, r.stderr
    if code == 1:
        assert not (tmp_path / "o").exists()


def test_verify_mismatch_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine is bit-exact on every plan the CLI can build (saturating accumulators are
    # modelled on both sides), so the mismatch is injected into the real report: this tests
    # the command's mapping of a failed check to exit 3, with the report still written.
    import importlib

    verify_mod = importlib.import_module("mixq.engine.verify")

    real = verify_mod.verify

    def one_flip(*a: Any, **k: Any) -> dict[str, Any]:
        rep = real(*a, **k)
        return {**rep, "exact": False, "mismatching_outputs": 1}

    monkeypatch.setattr(verify_mod, "verify", one_flip)
    rc = main(["verify", "cnv", "--images", "4", "--out", str(tmp_path)])
    assert rc == 3
    cap = capsys.readouterr()
    assert "MISMATCH (1 of 40 outputs differ" in cap.out and "differs" in cap.err
    assert (tmp_path / "verify.json").is_file()


def test_unwritable_out_is_refused_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    t = time.perf_counter()
    assert main(["train", "--out", str(afile / "w"), "--epochs", "1"]) == 1
    assert time.perf_counter() - t < 30  # no training first
    assert "--out" in capsys.readouterr().err


def test_json_mode_prints_one_document(tmp_path: Path) -> None:
    import json

    r = _run(["--json", "estimate", "cnv", "--out", str(tmp_path / "e")], tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["fits"] and d["fps"] > 0 and d["out"] == str(tmp_path / "e")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = _run(["--debug", "estimate", "cnv", "--part", "xc0000", "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def _interrupt(args: list[str], cwd: Path, wait_for: str, timeout: float = 240) -> tuple[int, str]:
    """Start ``mixq args``, wait for ``wait_for`` on stderr (a progress line), send SIGINT."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(MIXQ + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stderr is not None
    seen = []
    t0 = time.monotonic()
    for line in proc.stderr:
        seen.append(line)
        if wait_for in line:
            break
        assert time.monotonic() - t0 < timeout, "".join(seen)
    else:
        proc.wait()
        pytest.fail(f"ended before {wait_for!r}: rc {proc.returncode}\n{''.join(seen)}")
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest


@pytest.mark.parametrize(("args", "wait_for"), [
    (["run", "--no-search"], "mixq run"),
    (["quantize", "cnv", "--recipe", "gptq", "--images", "64"], "gptq"),
    (["qat", "--epochs", "2", "--max-train", "2000", "--max-test", "100", "--threads", "1"], "qat start"),
    (["search", "cnv", "--executor", "serial", "--calib-images", "64", "--eval-images", "200"], "sensitivity"),
], ids=["run", "quantize", "qat", "search"])
def test_sigint_exits_130_and_names_the_checkpoint(args: list[str], wait_for: str, tmp_path: Path) -> None:
    out = tmp_path / "o"
    rc, err = _interrupt([*args, "--out", str(out)], tmp_path, wait_for)
    assert rc == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mixq: interrupted"), err
    assert "Traceback" not in err
    if args[0] == "qat":
        assert f"--out {out} --resume" in last
    if args[0] == "run":
        assert not (out / "summary.json").exists() and not (out / "search").exists()


def test_float_options_reject_nonfinite_values_in_code() -> None:
    from mixq.cli._common import _finite

    assert _finite(1.0) and not _finite(math.nan) and not _finite(math.inf)


def test_a_swallowed_interrupt_still_stops_the_job() -> None:
    """SIGINT can land where Python swallows exceptions (a finalizer, a callback): the handler also
    asks mixq.progress to stop, so the next progress report raises again."""
    from mixq import progress

    progress.configure("quiet")
    progress.request_stop()
    with pytest.raises(KeyboardInterrupt), progress.task("train", total=3) as t:
        t.advance()
    assert progress.clear_stop() is True and progress.clear_stop() is False
    with progress.task("train", total=1) as t:
        t.advance()  # no stop requested: runs on


def test_one_default_plan_and_outputs_under_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """estimate used 4 bits while verify/export used 8, and wrote estimate.json into the current folder."""
    import json

    from mixq.cli._common import DEFAULT_ACT, DEFAULT_WEIGHT

    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "estimate", "cnv"]) == 0
    est = json.loads((tmp_path / "runs" / "estimate-cnv" / "estimate.json").read_text())
    assert (DEFAULT_WEIGHT, DEFAULT_ACT) == ("fixed8", "ufixed8")
    assert all(ly["formats"].startswith("fixed8") for ly in est["layers"] if ly["macs"] > 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_calibrate_hw_never_writes_into_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mixq.rtl.sweep import DATA_DIR

    before = {p.name: p.stat().st_mtime_ns for p in DATA_DIR.iterdir()}
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "calibrate-hw", "--refit"]) == 0
    assert (tmp_path / "runs" / "calibrate-hw" / "coefficients.json").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in DATA_DIR.iterdir()} == before
