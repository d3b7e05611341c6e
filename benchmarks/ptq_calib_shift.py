"""How much of MobileNetV2's low-bit fidelity gap is the calibration data: a diagnostic, not a benchmark row.

The ``--lowbit`` rows calibrate on 256 crops of 8 photos and measure agreement on 2,000 views of 20 *other*
photos. Here each recipe runs twice on the same plan: (a) with those 256 crops, (b) with 250 views of the
evaluation photos themselves (every 8th view, from the second: ``views[1::8]``). Both are measured on the other
1,750 views (no view is in both), so the difference is paired. (b) calibrates on the test photos, so it is not a
result to set beside the targets: it says how much of the gap the calibration photos' distribution explains.

Run: ``.venv/bin/python benchmarks/ptq_calib_shift.py [--only KEY,...]`` (one thread; ~15 min per GPTQ pair,
~40 per BRECQ pair on a loaded 2-core machine). Keys are ``ptq_mobilenetv2.py --lowbit --list``'s. Writes
``benchmarks/results/ptq_calib_shift.json`` and ``.md`` (rows already there are kept unless ``--force``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixq import zoo  # noqa: E402
from mixq.algorithms.ptq import quantize_report  # noqa: E402
from mixq.data import calibration_set  # noqa: E402
from mixq.data.fidelity import fidelity_set, normalize  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from ptq_common import fidelity, logits, paired_difference  # noqa: E402
from ptq_mobilenetv2 import BRECQ_ITERS, _cached, lowbit_configs, lowbit_plans  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("w4a8_gptq", "w4a8_msqfp_brecq_fcal")
STRIDE, OFFSET = 8, 1  # the calibration views of arm (b): views[OFFSET::STRIDE]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(KEYS), help=f"comma-separated --lowbit row keys ({','.join(KEYS)})")
    ap.add_argument("--force", action="store_true", help="re-run keys already in the JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    configs = lowbit_configs(BRECQ_ITERS)
    keys = [k for k in args.only.split(",") if k]
    unknown = [k for k in keys if k not in configs]
    if unknown:
        raise SystemExit(f"--only: unknown keys {unknown} (see ptq_mobilenetv2.py --lowbit --list)")
    out_json = RESULTS / "ptq_calib_shift.json"
    doc: dict[str, Any] = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": {}}
    model = zoo.load("mobilenet_v2", pretrained=True).eval()
    fs = _cached("fidelity_2000.pt", fidelity_set)
    views = normalize(fs.x)
    calib = _cached("calib_256.pt", lambda: calibration_set(256, include_foolbox=False, seed=0))
    sibling = views[OFFSET::STRIDE].contiguous()
    held = torch.tensor([i for i in range(views.shape[0]) if i % STRIDE != OFFSET])
    x = views[held]
    ref = _cached("ref_2000.pt", lambda: logits(model, views, 16))[held]
    plans = lowbit_plans(model, calib[:8])
    for key in keys:
        if key in doc["rows"] and not args.force:
            continue
        label, pkey, recipe, kw, _, bcfg = configs[key]
        if bcfg is not None:
            raise SystemExit(f"--only: {key} is a Brevitas row")
        arms: dict[str, Any] = {}
        for arm, data in (("photos8", calib), ("sibling_views", sibling)):
            t = time.perf_counter()
            q = quantize_report(model, plans[pkey], data, recipe, **kw).model
            out = logits(q, x, 16)
            agree, sq = fidelity(ref, out)
            arms[arm] = {"agreement": round(agree, 2), "sqnr_db": round(sq, 2),
                         "seconds": round(time.perf_counter() - t, 1), "hits": out.argmax(1).eq(ref.argmax(1))}
            print(f"{key} {arm}: {agree:.2f}% {sq:.2f} dB", flush=True)
        d, hw = paired_difference(arms["sibling_views"].pop("hits"), arms["photos8"].pop("hits"))
        doc["rows"][key] = {"label": label, **arms, "difference": round(d, 2), "ci95": round(hw, 2)}
        doc.update(benchmark="ptq_calib_shift", command="python benchmarks/ptq_calib_shift.py", eval_views=len(held),
                   calibration={"photos8": int(calib.shape[0]), "sibling_views": int(sibling.shape[0])},
                   torch=torch.__version__, threads=1, date=time.strftime("%Y-%m-%d"))
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_json, doc)  # after each key: an interrupted run keeps what it measured
    if not doc["rows"]:
        raise SystemExit("--only: no keys given, nothing measured")
    md = ["## Calibration photos vs views of the evaluation photos (`benchmarks/ptq_calib_shift.py`, diagnostic)",
          "", f"Each recipe calibrated on (a) the --lowbit rows' {doc['calibration']['photos8']} crops of 8 photos, "
          f"(b) {doc['calibration']['sibling_views']} views of the 20 evaluation photos; both measured on the other "
          f"{doc['eval_views']} views. (b) sees the test photos: a measure of the calibration data's share of the "
          "gap, not a result.", "",
          "| recipe | (a) 8 photos: agreement (%) / SQNR (dB) | (b) evaluation photos' views | (b) − (a) (points, "
          "paired 95% CI) |", "|---|---:|---:|---|"]
    for r in doc["rows"].values():
        a, b = r["photos8"], r["sibling_views"]
        md.append(f"| {r['label']} | {a['agreement']:.2f} / {a['sqnr_db']:.2f} | {b['agreement']:.2f} / "
                  f"{b['sqnr_db']:.2f} | {r['difference']:+.2f} ± {r['ci95']:.2f} |")
    atomic_write_text(RESULTS / "ptq_calib_shift.md", "\n".join(md) + "\n")
    print("\n".join(md), flush=True)


if __name__ == "__main__":
    main()
