#!/usr/bin/env python3
"""Build the mixq wheel, install it in a fresh virtual environment and check that it works.

    python scripts/wheel_check.py [--limit 1.0] [--runs 3] [--keep]

Steps (each timed, all reported; exit status 1 if any check fails):

1. build the wheel from this checkout (``pip wheel --no-deps``);
2. check its contents: every module and every package-data file under
   ``src/mixq`` (zoo weights ``*.pt``, data assets ``*.npz``, ``hw/data/*.json``,
   any ``*.v``), the licence, and the version from ``mixq/_version.py``;
3. create a fresh venv in a temporary folder, install ``torch==2.13.0`` first
   (the CPU build, from local disk: an unpinned ``torch`` would resolve a CUDA
   build), then the wheel with its dependencies;
4. from outside the checkout: ``import mixq`` loads the installed copy, does not
   import torch, and the bundled weights, images and cost model load;
5. ``mixq --version``, ``mixq run --help``, ``mixq estimate --help`` and
   ``python -c "import mixq; print(mixq.__version__)"`` exit 0 and answer in
   under ``--limit`` seconds (best of ``--runs`` wall-clock runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "mixq"
TORCH = "torch==2.13.0"
# at least one file of each kind must ship (globs inside the wheel)
REQUIRED_DATA = ["mixq/zoo/weights/*.pt", "mixq/data/assets/*.npz", "mixq/hw/data/*.json"]

SMOKE = """
import sys
import mixq
assert "torch" not in sys.modules, "import mixq imported torch"
print(mixq.__version__, mixq.__file__)
model = mixq.zoo.load("cnv", pretrained=True)          # zoo/weights/*.pt
x, y = mixq.data.load_fmnist_subset()                  # data/assets/*.npz
from mixq.hw.cost import CostModel
CostModel.default()                                     # hw/data/coefficients.json
print("package data ok:", type(model).__name__, x.shape)
"""


def _version() -> str:
    text = (PKG / "_version.py").read_text(encoding="utf-8")
    m = re.search(r'^__version__ = "([^"]+)"', text, flags=re.M)
    if m is None:
        raise SystemExit("src/mixq/_version.py has no __version__ line")
    return m.group(1)


def _env() -> dict[str, str]:
    """The caller's environment (pip's settings included) without the checkout's venv or sources."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}}
    return env


class Check:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.steps: list[tuple[str, float]] = []

    def run(self, label: str, cmd: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        t0 = time.perf_counter()
        shown = " ".join("'<script>'" if "\n" in a else a for a in cmd)
        print(f"--> {label}: {shown}", flush=True)
        p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
        dt = time.perf_counter() - t0
        self.steps.append((label, dt))
        if p.returncode != 0:
            self.fail(f"{label}: exit {p.returncode}\n{_tail(p.stdout + p.stderr)}")
        return p

    def fail(self, msg: str) -> None:
        print(f"FAIL {msg}", flush=True)
        self.failures.append(msg.splitlines()[0])


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + ln for ln in text.strip().splitlines()[-lines:])


def check_wheel(whl: Path, version: str, chk: Check) -> None:
    names = set(zipfile.ZipFile(whl).namelist())
    expected = [
        "mixq/" + f.relative_to(PKG).as_posix()
        for f in PKG.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
    ]
    missing = sorted(set(expected) - names)
    if missing:
        chk.fail(f"wheel lacks {len(missing)} file(s) of src/mixq: {', '.join(missing[:10])}")
    data = sorted(n for n in names if n.startswith("mixq/") and not n.endswith(".py"))
    for pattern in REQUIRED_DATA:
        if not any(Path(n).match(pattern) for n in data):
            chk.fail(f"wheel has no {pattern}")
    verilog = [n for n in names if n.endswith(".v")]
    dist_info = f"mixq-{version}.dist-info"
    if f"{dist_info}/licenses/LICENSE" not in names:
        chk.fail(f"wheel has no {dist_info}/licenses/LICENSE")
    if f"{dist_info}/METADATA" in names:
        meta = zipfile.ZipFile(whl).read(f"{dist_info}/METADATA").decode()
        if f"\nVersion: {version}\n" not in meta:
            chk.fail(f"METADATA version is not {version}")
    else:
        chk.fail(f"wheel has no {dist_info}/METADATA (version mismatch?)")
    print(f"    wheel: {whl.name}, {whl.stat().st_size / 1e6:.1f} MB, {len(names)} files; "
          f"package data: {len(data)} ({', '.join(Path(n).name for n in data)}); *.v: {len(verilog)}")


def timed(label: str, cmd: list[str], cwd: Path, runs: int, limit: float, chk: Check,
          expect: str | None = None) -> float:
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            chk.fail(f"{label}: exit {p.returncode}\n{_tail(p.stdout + p.stderr)}")
            return float("nan")
        if expect is not None and expect not in p.stdout:
            chk.fail(f"{label}: output lacks {expect!r}: {p.stdout.strip()[:200]!r}")
    best = min(times)
    verdict = "ok" if best < limit else f"SLOW (limit {limit:.1f} s)"
    print(f"    {label:<38} best {best:6.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times)})  {verdict}")
    if best >= limit:
        chk.fail(f"{label}: best of {runs} runs {best:.3f} s >= {limit:.1f} s")
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=1.0, help="seconds a --help/--version may take (best run)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (wheel and venv)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    version = _version()
    chk = Check()
    tmp = Path(tempfile.mkdtemp(prefix="mixq-wheel-"))
    try:
        dist, venv, cwd = tmp / "dist", tmp / "venv", tmp / "cwd"
        cwd.mkdir()
        chk.run("build wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
                ROOT)
        wheels = sorted(dist.glob("mixq-*.whl"))
        if not wheels:
            chk.fail("no wheel was built")
            return _report(chk, t_start, tmp, args.keep)
        check_wheel(wheels[0], version, chk)

        chk.run("create venv", [sys.executable, "-m", "venv", str(venv)], tmp)
        py, exe = venv / "bin" / "python", venv / "bin" / "mixq"
        chk.run(f"install {TORCH}", [str(py), "-m", "pip", "install", "-q", TORCH], cwd)
        chk.run("install wheel", [str(py), "-m", "pip", "install", "-q", str(wheels[0])], cwd)
        if chk.failures:
            return _report(chk, t_start, tmp, args.keep)

        p = chk.run("smoke (installed copy, package data)", [str(py), "-c", SMOKE], cwd)
        if p.returncode == 0:
            print(_tail(p.stdout, 5))
            if str(venv) not in p.stdout:
                chk.fail(f"import mixq did not load the installed copy: {p.stdout.strip()[:200]}")

        print(f"timings (best of {args.runs}, limit {args.limit:.1f} s):")
        timed("mixq --version", [str(exe), "--version"], cwd, args.runs, args.limit, chk, expect=version)
        timed("mixq run --help", [str(exe), "run", "--help"], cwd, args.runs, args.limit, chk)
        timed("mixq estimate --help", [str(exe), "estimate", "--help"], cwd, args.runs, args.limit, chk)
        timed("import mixq; print(mixq.__version__)",
              [str(py), "-c", "import mixq; print(mixq.__version__)"], cwd, args.runs, args.limit, chk, expect=version)
        return _report(chk, t_start, tmp, args.keep)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _report(chk: Check, t_start: float, tmp: Path, keep: bool) -> int:
    """Print the steps' times and the verdict; remove the temporary folder first unless kept."""
    if keep:
        print(f"kept: {tmp}")
    else:
        t0 = time.perf_counter()
        shutil.rmtree(tmp, ignore_errors=True)
        chk.steps.append(("clean up", time.perf_counter() - t0))
    print("steps: " + ", ".join(f"{label} {dt:.1f} s" for label, dt in chk.steps))
    total = time.perf_counter() - t_start
    if chk.failures:
        print(f"wheel check FAILED in {total:.1f} s:\n" + "\n".join(f"  - {f}" for f in chk.failures))
        return 1
    print(f"wheel check passed in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
