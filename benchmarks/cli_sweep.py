"""The command line tried as a new user would: 413 bad or unusual inputs, one process each.

Every case runs ``mixq.cli.main`` in a fresh Python process and temporary folder and is judged on:

* **traceback**: a Python traceback on stdout or stderr (never allowed);
* **exit-0 failure**: a case that must fail exited 0;
* **silent acceptance**: a case with NaN/Inf weights or degenerate data exited 0;
* **unclear**: a failing case whose stderr is not exactly one line (``mixq ...: ...``);
* **wrong code**: the exit status differs from the contract (2 usage, 1 error, 3 failed check, 130 interrupted).

Writes ``benchmarks/results/cli_sweep.json`` and ``.md``. Run:
``.venv/bin/python benchmarks/cli_sweep.py [--jobs 2] [--only SUBSTRING] [--src OTHER_CHECKOUT/src --out PATH]``
(``--src`` runs the same cases against another checkout's CLI, e.g. the code before a change).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MIXQ = [sys.executable, "-c", "import sys; from mixq.cli import main; sys.exit(main())"]
Setup = Callable[[Path], None]
SRC_OVERRIDE = ""


@dataclass
class Case:
    name: str
    args: list[str]
    expect: int  # the contract's exit status
    group: str
    setup: Setup | None = None
    degenerate: bool = False  # NaN/Inf/degenerate input: exit 0 would be a silent acceptance
    interrupt_after: str | None = None  # send SIGINT once this appears on stderr
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ fixtures written into each case's folder

def _cnv_state() -> dict[str, torch.Tensor]:
    from mixq import zoo

    return {k: v.clone() for k, v in zoo.load("cnv", pretrained=True).state_dict().items()}


def _weights(kind: str) -> Setup:
    def setup(d: Path) -> None:
        s = _cnv_state()
        if kind == "nan":
            s["features.0.weight"][0, 0, 0, 0] = float("nan")
        elif kind == "inf":
            s["features.3.weight"][1, 0, 0, 0] = float("inf")
        elif kind == "huge":
            s["classifier.0.weight"][0, 0] = 1e38
        elif kind == "negvar":
            key = next(k for k in s if k.endswith("running_var"))
            s[key][0] = -1.0
        elif kind == "wrong_model":
            s = {"fc.weight": torch.zeros(3, 3)}
        elif kind == "ok":
            pass
        if kind == "corrupt":
            (d / "w.pt").write_bytes(os.urandom(4096))
        elif kind == "empty":
            (d / "w.pt").write_bytes(b"")
        elif kind == "text":
            (d / "w.pt").write_text("these are not weights\n")
        elif kind == "pickle":
            import pickle

            (d / "w.pt").write_bytes(pickle.dumps({"a": object}))
        else:
            torch.save(s, d / "w.pt")
    return setup


def _images(kind: str) -> Setup:
    def setup(d: Path) -> None:
        from PIL import Image

        root = d / "imgs"
        root.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):
            if kind == "black":
                a = np.zeros((32, 32), np.uint8)
            elif kind == "one_black":
                a = np.zeros((32, 32), np.uint8) if i == 2 else rng.integers(0, 255, (32, 32), dtype=np.uint8)
            elif kind == "tiny":
                a = rng.integers(0, 255, (1, 1), dtype=np.uint8)
            elif kind == "white":
                a = np.full((32, 32), 255, np.uint8)
            else:
                a = rng.integers(0, 255, (32, 32), dtype=np.uint8)
            if kind == "nan_tiff":
                f = rng.random((32, 32)).astype(np.float32)
                f[3, 4] = np.nan
                Image.fromarray(f, mode="F").save(root / f"{i}.tif")
            elif kind == "corrupt":
                (root / f"{i}.png").write_bytes(os.urandom(200))
            elif kind == "truncated":
                Image.fromarray(a).save(root / f"{i}.png")
                b = (root / f"{i}.png").read_bytes()
                (root / f"{i}.png").write_bytes(b[: len(b) // 2])
            elif kind == "text":
                (root / f"{i}.txt").write_text("hello")
            elif kind == "empty":
                pass
            else:
                Image.fromarray(a).save(root / f"{i}.png")
    return setup


def _plan(kind: str, model: str = "cnv") -> Setup:
    def setup(d: Path) -> None:
        from mixq import zoo
        from mixq.formats import FixedPoint
        from mixq.graph.capture import capture
        from mixq.plan import plan_to_dict, uniform_plan

        specs = capture(zoo.load(model), zoo.input_shape(model))
        names = [s.name for s in specs if s.is_compute]
        plan = uniform_plan(model, names, FixedPoint(4), FixedPoint(4, signed=False),
                            weight_alt=FixedPoint(2) if kind.startswith("alt") else None,
                            alt_ratio=0.5 if kind.startswith("alt") else 0.0)
        doc = plan_to_dict(plan)
        first = names[1]
        if kind == "alt_big":
            doc["layers"][first]["alt_rows"] = [9999]
        elif kind == "alt_neg":
            doc["layers"][first]["alt_rows"] = [-1]
        elif kind == "empty":
            doc["layers"] = {}
        elif kind == "all_float":
            for lp in doc["layers"].values():
                lp["weight"] = None
                lp["act"] = None
        elif kind == "other_model":
            doc["model"] = "resnet18"
        elif kind == "unknown_layer":
            doc["layers"]["no.such.layer"] = doc["layers"][first]
        elif kind == "bad_bits":
            doc["layers"][first]["weight"]["bits"] = 0
        elif kind == "pe0":
            doc["layers"][first]["mapping"] = {"core": "auto", "pe": 0, "simd": 1}
        elif kind == "version":
            doc["mixq_plan"] = 99
        elif kind == "unknown_field":
            doc["layer"] = doc.pop("layers")
        text = json.dumps(doc)
        if kind == "malformed":
            text = text[: len(text) // 2]
        elif kind == "list":
            text = "[1, 2, 3]"
        (d / "plan.json").write_text(text)
    return setup


def _file(name: str, text: str = "x") -> Setup:
    def setup(d: Path) -> None:
        (d / name).write_text(text)
    return setup


_EXPORT_LOCK = threading.Lock()


def _model_file(kind: str) -> Setup:
    """A model file of one broken (or valid) kind, written as ``m.<suffix>`` into the case folder."""
    def setup(d: Path) -> None:
        import warnings

        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 8 * 8, 3)).eval()
        x = torch.rand(1, 3, 8, 8)
        with _EXPORT_LOCK, warnings.catch_warnings():  # torch's exporters keep global state: one at a time
            warnings.simplefilter("ignore")
            if kind in ("onnx", "onnx_truncated"):
                torch.onnx.export(net, (x,), str(d / "m.onnx"), dynamo=False, opset_version=17)
                if kind == "onnx_truncated":
                    data = (d / "m.onnx").read_bytes()
                    (d / "m.onnx").write_bytes(data[: len(data) // 2])
            elif kind == "onnx_text":
                (d / "m.onnx").write_text("not a model")
            elif kind == "onnx_empty":
                (d / "m.onnx").write_bytes(b"")
            elif kind == "onnx_sin":
                import onnx
                from onnx import TensorProto, helper

                g = helper.make_graph([helper.make_node("Sin", ["input"], ["output"], name="the_sin")], "g",
                                      [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                                      [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])])
                onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(d / "m.onnx"))
            elif kind == "state_dict_pt":
                torch.save(net.state_dict(), d / "m.pt")
            elif kind == "pickled_module_pt":
                torch.save(net, d / "m.pt")
            elif kind == "torchscript":
                torch.jit.save(torch.jit.trace(net, x), str(d / "m.ts"))
            elif kind == "pt2_truncated":
                torch.export.save(torch.export.export(net, (x,)), str(d / "m.pt2"))
                data = (d / "m.pt2").read_bytes()
                (d / "m.pt2").write_bytes(data[: len(data) // 3])
            elif kind == "signals_wrong_shape":
                torch.onnx.export(torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.Flatten()).eval(),
                                  (torch.rand(1, 2, 32),), str(d / "m.onnx"), dynamo=False, opset_version=17)
                np.savez(d / "s.npz", x=np.zeros((8, 3, 32), dtype=np.float32))
    return setup


def _model_file_cases() -> list[Case]:
    c = []
    for kind in ("onnx_text", "onnx_empty", "onnx_truncated", "onnx_sin"):
        for cmd in (["capture"], ["quantize"], ["estimate"]):
            c.append(Case(f"model file {kind} {cmd[0]}", [*cmd, "m.onnx", "--out", "o"], 1, "modelfiles",
                          _model_file(kind)))
    c.append(Case("model file state dict as MODEL", ["capture", "m.pt", "--input-shape", "3,8,8", "--out", "o"], 1,
                  "modelfiles", _model_file("state_dict_pt")))
    c.append(Case("model file pickled module (never unpickled)", ["quantize", "m.pt", "--input-shape", "3,8,8",
                                                                  "--out", "o"], 1, "modelfiles",
                  _model_file("pickled_module_pt")))
    c.append(Case("model file torchscript without --input-shape", ["quantize", "m.ts", "--out", "o"], 1,
                  "modelfiles", _model_file("torchscript")))
    c.append(Case("model file truncated pt2", ["verify", "m.pt2", "--out", "o"], 1, "modelfiles",
                  _model_file("pt2_truncated")))
    c.append(Case("model file missing", ["capture", "nowhere.onnx", "--out", "o"], 1, "modelfiles"))
    c.append(Case("model file 1-D with --calib photos", ["quantize", "m.onnx", "--calib", "photos", "--out", "o"], 1,
                  "modelfiles", _model_file("signals_wrong_shape")))
    c.append(Case("model file 1-D with wrong-shape signals",
                  ["quantize", "m.onnx", "--calib", "s.npz", "--out", "o"], 1, "modelfiles",
                  _model_file("signals_wrong_shape")))
    c.append(Case("model file 1-D with --mean", ["quantize", "m.onnx", "--calib", "s.npz", "--mean", "0.5",
                                                 "--out", "o"], 1, "modelfiles", _model_file("signals_wrong_shape")))
    c.append(Case("search --from a missing artifact", ["search", "--from", "nope", "--out", "o"], 1, "modelfiles"))
    c.append(Case("search --from with --eval missing", ["search", "--from", "q", "--eval", "nope", "--out", "o"], 1,
                  "modelfiles"))
    for args in (["capture", "m.onnx", "--out", "o"], ["quantize", "m.onnx", "--calib", "photos", "--images", "8",
                                                       "--out", "o"],
                 ["quantize", "m.ts", "--input-shape", "3,8,8", "--images", "8", "--out", "o"]):
        kind = "torchscript" if args[1].endswith(".ts") else "onnx"
        c.append(Case("ok: model file " + " ".join(args[:2]), args, 0, "ok", _model_file(kind)))
    return c


# ------------------------------------------------------------------ the cases

def _numeric_cases() -> list[Case]:
    """Every int/float option of every command with bad values (read from the real app)."""
    from typer.main import get_command

    from mixq.cli import _register_all, app

    _register_all()
    root: Any = get_command(app)
    cmds: dict[str, Any] = {}
    for name, cmd in root.commands.items():
        for sub, c in getattr(cmd, "commands", {name: cmd}).items():
            cmds[name if sub == name else f"{name} {sub}"] = c
    first = {"capture": ["cnv"], "quantize": ["cnv"], "verify": ["cnv"], "export": ["cnv"], "estimate": ["cnv"],
             "search": ["cnv"], "rtl generate": ["--model", "cnv", "--layer", "features.0"],
             "rtl simulate": ["--model", "cnv", "--layer", "features.0"],
             "rtl synth": ["--model", "cnv", "--layer", "features.0"]}
    cases = []
    for path, cmd in cmds.items():
        hints = typing.get_type_hints(cmd.callback)
        for p in cmd.params:
            if not p.opts[0].startswith("--"):
                continue
            kinds = set(typing.get_args(hints[p.name])) or {hints[p.name]}
            if int in kinds:
                values = ["-5", "abc", "1.5"]
            elif float in kinds:
                values = ["nan", "inf", "-100", "1e400"]
            else:
                continue
            for v in values:
                cases.append(Case(f"{path} {p.opts[0]} {v}", [*path.split(), *first.get(path, []), p.opts[0], v,
                                                               "--out", "o"] if "out" in hints else
                                  [*path.split(), *first.get(path, []), p.opts[0], v], 2, "numeric option"))
    return cases


def cases() -> list[Case]:
    c: list[Case] = []
    usage = [["--nosuch"], ["nosuch"], ["estimate"], ["verify"], ["export"], ["capture"], ["quantize"], ["search"],
             ["rtl"], ["rtl", "generate"], ["rtl", "simulate", "--model", "cnv"], ["rtl", "synth", "--layer", "x"],
             ["run", "extra-arg"], ["train", "extra"], ["estimate", "cnv", "--arch", "gpu"],
             ["estimate", "cnv", "--fold", "magic"], ["quantize", "cnv", "--recipe", "brecq"],
             ["quantize", "cnv", "--weight-scales", "hessian"], ["quantize", "cnv", "--act-ranges", "max"],
             ["quantize", "cnv", "--msq-rows", "all"], ["export", "cnv", "--format", "tflite"],
             ["verify", "cnv", "--overflow", "wrap"], ["qat", "--optimizer", "lbfgs"], ["qat", "--bn", "keep"],
             ["qat", "--weight-quant", "xnor"], ["qat", "--dataset", "cifar"], ["prune", "--method", "random"],
             ["prune", "--scope", "net"], ["search", "cnv", "--executor", "dask"], ["search", "cnv", "--method", "x"],
             ["run", "--dataset", "imagenet"], ["rtl", "generate", "--model", "cnv", "--layer", "features.0",
                                                "--config", "w3"],
             ["rtl", "synth", "--model", "cnv", "--layer", "features.0", "--weights", "dram"],
             ["estimate", "cnv", "--parts", "abc"], ["estimate", "cnv", "--plan"]]
    c += [Case("usage: " + " ".join(a), a, 2, "usage") for a in usage]
    c.append(Case("usage: no arguments", [], 2, "usage"))
    c += _numeric_cases()
    # unknown names, formats, parts: one-line errors (exit 1)
    for cmd in (["verify"], ["export"], ["estimate"], ["capture"], ["quantize"]):
        c.append(Case(f"{cmd[0]} unknown model", [*cmd, "nosuchnet", "--out", "o"], 1, "names"))
    c.append(Case("search unknown model", ["search", "resnet18", "--out", "o"], 1, "names"))
    c.append(Case("qat unknown model", ["qat", "--model", "nosuchnet", "--out", "o"], 1, "names"))
    c.append(Case("rtl generate unknown model", ["rtl", "generate", "--model", "x", "--layer", "a"], 1, "names"))
    c.append(Case("rtl generate unknown layer", ["rtl", "generate", "--model", "cnv", "--layer", "no.such",
                                                 "--out", "o"], 1, "names"))
    for cmd in (["estimate", "cnv"], ["verify", "cnv", "--images", "2"], ["export", "cnv"]):
        for opt, val in (("--weight", "fixed99"), ("--weight", "bogus"), ("--act", "sp2_0"), ("--act", "")):
            c.append(Case(f"{cmd[0]} {opt} {val!r}", [*cmd, opt, val, "--out", "o"], 1, "formats"))
    for part in ("xc0000", "", "XC7Z020x"):
        c.append(Case(f"estimate part {part!r}", ["estimate", "cnv", "--part", part, "--out", "o"], 1, "names"))
    c.append(Case("run unknown part", ["run", "--part", "xc0000", "--out", "o"], 1, "names"))
    c.append(Case("run bad weight format", ["run", "--weight", "fixed0", "--out", "o"], 1, "formats"))
    c.append(Case("qat bad act format", ["qat", "--act", "nope", "--out", "o"], 1, "formats"))
    # weights files
    for kind, code, degenerate in (("nan", 1, True), ("inf", 1, True), ("huge", 1, True), ("negvar", 1, True),
                                   ("corrupt", 1, False), ("empty", 1, False), ("text", 1, False),
                                   ("pickle", 1, False), ("wrong_model", 1, False)):
        for cmd in ("qat", "prune"):
            c.append(Case(f"{cmd} --weights {kind}", [cmd, "--weights", "w.pt", "--epochs", "1", "--max-train", "64",
                                                       "--max-test", "64", "--out", "o"], code, "weights",
                          _weights(kind), degenerate))
        c.append(Case(f"search --weights-like via qat missing file {kind}", ["qat", "--weights", f"missing-{kind}.pt",
                                                                               "--out", "o"], 1, "weights"))
    # calibration data
    for kind, degenerate in (("black", True), ("one_black", True), ("tiny", True), ("white", True),
                             ("nan_tiff", True), ("corrupt", False), ("truncated", False), ("text", False),
                             ("empty", False)):
        for model in ("cnv", "mobilenet_v2"):
            c.append(Case(f"quantize {model} --calib {kind}", ["quantize", model, "--calib", "imgs", "--images", "4",
                                                               "--random", "--out", "o"], 1, "calibration",
                          _images(kind), degenerate))
    c.append(Case("quantize --calib missing folder", ["quantize", "cnv", "--calib", "nope", "--out", "o"], 1,
                  "calibration"))
    # explicit: the gray images are converted to RGB (the source is named, nothing is silent)
    c.append(Case("quantize --calib shipped for an RGB model", ["quantize", "mobilenet_v2", "--calib", "shipped",
                                                                "--images", "16", "--out", "o"], 0, "calibration"))
    # plans
    plan_kinds = {"alt_big": 1, "alt_neg": 1, "empty": 1, "all_float": 1, "other_model": 1, "unknown_layer": 1,
                  "bad_bits": 1, "pe0": 1, "version": 1, "unknown_field": 1, "malformed": 1, "list": 1}
    for kind, code in plan_kinds.items():
        for cmd in (["estimate", "cnv"], ["verify", "cnv", "--images", "2"], ["export", "cnv"],
                    ["quantize", "cnv", "--random", "--images", "8"]):
            c.append(Case(f"{cmd[0]} plan {kind}", [*cmd, "--plan", "plan.json", "--out", "o"], code, "plans",
                          _plan(kind)))
    c.append(Case("qat plan other_model", ["qat", "--plan", "plan.json", "--out", "o"], 1, "plans",
                  _plan("other_model")))
    c.append(Case("estimate plan missing", ["estimate", "cnv", "--plan", "nope.json", "--out", "o"], 1, "plans"))
    c.append(Case("estimate plan is a folder", ["estimate", "cnv", "--plan", ".", "--out", "o"], 1, "plans"))
    c.append(Case("quantize --msq and --plan", ["quantize", "cnv", "--msq", "0.5", "--plan", "plan.json",
                                                "--out", "o"], 1, "plans", _plan("ok")))
    c.append(Case("quantize --msq-rows without MSQ", ["quantize", "cnv", "--random", "--recipe", "gptq",
                                                      "--msq-rows", "output", "--out", "o"], 1, "plans"))
    # outputs
    for cmd in (["estimate", "cnv"], ["verify", "cnv"], ["export", "cnv"], ["capture", "cnv"], ["quantize", "cnv"],
                ["train"], ["qat"], ["prune"], ["run"], ["search", "cnv"], ["rtl", "generate", "--model", "cnv",
                                                                           "--layer", "features.0"]):
        c.append(Case(f"{cmd[0]} --out under a file", [*cmd, "--out", "afile/sub"], 1, "outputs",
                      _file("afile")))
        c.append(Case(f"{cmd[0]} --out is a file", [*cmd, "--out", "afile"], 1, "outputs", _file("afile")))
    # training numerics
    # lr 10 (the largest allowed) with adam: the loss stays finite (11.4) and accuracy collapses to chance; the
    # run ends normally and reports it. A NaN/Inf loss is the error case, covered by tests/test_training_safety.py
    c.append(Case("qat lr 10 (finite loss, accuracy collapses, reported)", ["qat", "--lr", "10", "--optimizer",
                                                                           "adam", "--epochs", "1", "--max-train",
                                                                           "2000", "--max-test", "64",
                                                                           "--batch-size", "32", "--out", "o"], 0,
                  "training"))
    c.append(Case("qat --lr inf", ["qat", "--lr", "inf", "--out", "o"], 2, "training", None, True))
    c.append(Case("train --max-train -5", ["train", "--max-train", "-5", "--out", "o"], 2, "training"))
    c.append(Case("train missing data root", ["train", "--data-root", "nowhere", "--epochs", "1", "--out", "o"],
                  1, "training"))
    c.append(Case("qat resume without a run", ["qat", "--resume", "--out", "o"], 1, "training"))
    c.append(Case("verify --images 0", ["verify", "cnv", "--images", "0"], 2, "counts"))
    c.append(Case("export --check --images 0", ["export", "cnv", "--check", "--images", "0", "--out", "o"], 2,
                  "counts"))
    c.append(Case("estimate --clock-mhz 0", ["estimate", "cnv", "--clock-mhz", "0"], 2, "counts"))
    c.append(Case("estimate --clock-mhz -100", ["estimate", "cnv", "--clock-mhz", "-100"], 2, "counts"))
    c.append(Case("verify --batch-size 0", ["verify", "cnv", "--batch-size", "0"], 2, "counts"))
    # failed checks
    c.append(Case("estimate resnet18 does not fit", ["estimate", "resnet18", "--out", "o"], 3, "checks"))
    c.append(Case("search unreachable fps", ["search", "cnv", "--target-fps", "1e11", "--executor", "serial",
                                             "--calib-images", "32", "--eval-images", "64", "--out", "o",
                                             "--cache-dir", "cache"], 3, "checks"))
    # interruption
    for args, marker in ((["run", "--no-search"], "mixq run"), (["train", "--epochs", "1"], "train"),
                         (["qat", "--epochs", "2", "--max-train", "2000", "--threads", "1"], "step"),
                         (["prune", "--epochs", "1", "--max-train", "2000", "--threads", "1"], "prune"),
                         (["quantize", "cnv", "--recipe", "gptq"], "gptq"),
                         (["search", "cnv", "--executor", "serial", "--cache-dir", "cache"], "sensitivity")):
        c.append(Case(f"SIGINT {args[0]}", [*args, "--out", "o"], 130, "interrupt", interrupt_after=marker))
    # things that must work
    for args in (["--version"], ["--help"], ["run", "--help"], ["rtl", "--help"], ["estimate", "cnv", "--out", "o"],
                 ["--json", "estimate", "cnv", "--out", "o"], ["capture", "mobilenet_v2", "--out", "o"],
                 ["-q", "verify", "cnv", "--images", "8", "--out", "o"]):
        c.append(Case("ok: " + " ".join(args), args, 0, "ok"))
    return c + _model_file_cases()


# ------------------------------------------------------------------ running and judging

def run_case(case: Case, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mixq-sweep-") as tmp:
        d = Path(tmp)
        if case.setup is not None:
            case.setup(d)
        given = {p for p in d.rglob("*") if p.is_file()}  # the case's own inputs are not left behind
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HOME": str(d)}
        if SRC_OVERRIDE:  # measure another checkout's CLI with the same cases (e.g. the code before a change)
            env["PYTHONPATH"] = SRC_OVERRIDE
        t0 = time.monotonic()
        proc = subprocess.Popen(MIXQ + case.args, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        err_lines: list[str] = []
        if case.interrupt_after is not None:
            assert proc.stderr is not None
            for line in proc.stderr:
                err_lines.append(line)
                if case.interrupt_after in line:
                    proc.send_signal(signal.SIGINT)
                    break
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        err = "".join(err_lines) + err
        rc = proc.returncode
        leftovers = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p not in given
                           and not p.name.endswith(".pt") and "imgs" not in p.parts and p.name not in
                           ("plan.json", "afile") and "cache" not in p.parts and ".cache" not in p.parts)
    fails = case.expect != 0
    text = out + err
    bad_lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    final = bad_lines[-1] if bad_lines else ""
    verdict = {
        "traceback": "Traceback (most recent call last)" in text,
        "exit0_failure": fails and rc == 0,
        "silent_acceptance": case.degenerate and rc == 0,
        "wrong_code": rc != case.expect,
        "unclear": fails and case.expect in (1, 2) and not (final.startswith("mixq") and len(bad_lines) == 1),
        "left_files": fails and case.expect in (1, 2) and bool(leftovers),
    }
    return {"name": case.name, "group": case.group, "args": case.args, "expect": case.expect, "rc": rc,
            "seconds": round(time.monotonic() - t0, 2), "stderr_last": final[:300], **verdict,
            "leftovers": leftovers[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--skip", default="", help="comma-separated substrings: cases whose name contains one are skipped")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "cli_sweep")
    ap.add_argument("--src", default="", help="run the CLI of another checkout's src/ folder (PYTHONPATH)")
    a = ap.parse_args()
    global SRC_OVERRIDE
    SRC_OVERRIDE = a.src
    skip = [k for k in a.skip.split(",") if k]
    todo = [c for c in cases() if a.only in c.name and not any(k in c.name for k in skip)]
    print(f"{len(todo)} cases, {a.jobs} at a time", flush=True)
    t0 = time.monotonic()
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(lambda c: run_case(c, a.timeout), todo))
    keys = ("traceback", "exit0_failure", "silent_acceptance", "wrong_code", "unclear", "left_files")
    totals = {k: sum(r[k] for r in rows) for k in keys}
    groups = Counter(r["group"] for r in rows)
    doc = {"cases": len(rows), "wall_s": round(time.monotonic() - t0, 1), "totals": totals,
           "groups": dict(groups), "rows": rows}
    atomic_write_json(a.out.with_suffix(".json"), doc)
    md = ["# CLI sweep", "", f"{len(rows)} cases, each a fresh Python process running `mixq.cli.main`, "
          f"{doc['wall_s']} s.", "", "| failure class | cases |", "|---|---:|"]
    md += [f"| {k.replace('_', ' ')} | {v} |" for k, v in totals.items()]
    md += ["", "| group | cases | bad |", "|---|---:|---:|"]
    for g, n in groups.items():
        bad = sum(1 for r in rows if r["group"] == g and any(r[k] for k in keys))
        md.append(f"| {g} | {n} | {bad} |")
    failing = [r for r in rows if any(r[k] for k in keys)]
    if failing:
        md += ["", "## Cases that break the contract", "", "| case | expected | got | last stderr line |",
               "|---|---:|---:|---|"]
        md += [f"| `{r['name']}` | {r['expect']} | {r['rc']} | {r['stderr_last'].replace('|', '/')[:160]} |"
               for r in failing]
    atomic_write_text(a.out.with_suffix(".md"), "\n".join(md) + "\n")
    print(json.dumps(totals), f"{len(failing)} cases break the contract", flush=True)
    for r in failing:
        print(f"  {r['name']}: expected {r['expect']}, got {r['rc']}: {r['stderr_last'][:200]}")


if __name__ == "__main__":
    main()
