"""How much of MobileNetV2's low-bit fidelity gap is the calibration data: a diagnostic, not a benchmark row.

The ``--lowbit`` rows calibrate on 256 crops of 8 photos and measure agreement on 2,000 views of 20 *other*
photos. Here each recipe runs on the same plan with three calibration sets:

* ``photos8``: those 256 crops (the rows' own);
* ``sibling_views``: 250 views of the 20 evaluation photos (``views[1::8]``), measured on the other 1,750 views:
  the same photos, other crops, scales and flips (overlapping content);
* ``other_photos``: 250 views of the 10 even-numbered evaluation photos, measured on the 1,000 views of the 10
  odd-numbered ones: disjoint by photo, but drawn from the evaluation photos' collection.

Each is set beside ``photos8`` on its own held-out views (paired). The last two calibrate on the evaluation
collection, so they are not results to set beside the targets: they say how much of the gap the calibration
photos' distribution explains, and (their difference) how much is overlap of content.

Run: ``.venv/bin/python benchmarks/ptq_calib_shift.py [--only KEY,...]`` (one thread; three PTQ runs per key:
~25 min for GPTQ, ~1 h for BRECQ on a loaded 2-core machine). Keys: ``ptq_mobilenetv2.py --lowbit --list``. Writes
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

from mixq.algorithms.ptq import quantize_report  # noqa: E402
from mixq.data.fidelity import normalize  # noqa: E402
from mixq.io import atomic_write_json, atomic_write_text  # noqa: E402
from ptq_common import fidelity, logits, paired_difference  # noqa: E402
from ptq_mobilenetv2 import BRECQ_ITERS, _cached, lowbit_configs, lowbit_data, lowbit_plans  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("w4a8_gptq", "w4a8_msqfp_brecq_fcal")
STRIDE, OFFSET = 8, 1  # sibling_views calibrates on views[OFFSET::STRIDE]


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
    model, fs, calib = lowbit_data()
    views = normalize(fs.x)
    idx = torch.arange(views.shape[0])
    even = idx[fs.groups % 2 == 0]
    # name -> (calibration inputs, the views it is measured on, beside photos8 on the same views)
    arms = {"photos8": (calib, idx),
            "sibling_views": (views[OFFSET::STRIDE].contiguous(), idx[idx % STRIDE != OFFSET]),
            "other_photos": (views[even[torch.linspace(0, len(even) - 1, 250).round().long()]].contiguous(),
                             idx[fs.groups % 2 == 1])}
    ref = _cached("ref_2000.pt", lambda: logits(model, views, 16))
    plans = lowbit_plans(model, calib[:8])
    for key in keys:
        if key in doc["rows"] and not args.force and all(a in doc["rows"][key] for a in arms):
            continue
        label, pkey, recipe, kw, _, bcfg = configs[key]
        if bcfg is not None:
            raise SystemExit(f"--only: {key} is a Brevitas row")
        outs: dict[str, torch.Tensor] = {}
        row: dict[str, Any] = {"label": label}
        for arm, (data, on) in arms.items():
            t = time.perf_counter()
            q = quantize_report(model, plans[pkey], data, recipe, **kw).model
            outs[arm] = logits(q, views, 16)
            agree, sq = fidelity(ref[on], outs[arm][on])
            row[arm] = {"agreement": round(agree, 2), "sqnr_db": round(sq, 2), "views": len(on),
                        "calibration": int(data.shape[0]), "seconds": round(time.perf_counter() - t, 1)}
            if arm != "photos8":
                base, hit = (outs[a][on].argmax(1).eq(ref[on].argmax(1)) for a in ("photos8", arm))
                a8, _ = fidelity(ref[on], outs["photos8"][on])
                d, hw = paired_difference(hit, base)
                row[arm].update(photos8_agreement=round(a8, 2), difference=round(d, 2), ci95=round(hw, 2))
            print(f"{key} {arm}: {row[arm]}", flush=True)
        doc["rows"][key] = row
        doc.update(benchmark="ptq_calib_shift", command="python benchmarks/ptq_calib_shift.py",
                   torch=torch.__version__, threads=1, date=time.strftime("%Y-%m-%d"))
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_json, doc)  # after each key: an interrupted run keeps what it measured
    if not doc["rows"]:
        raise SystemExit("--only: no keys given, nothing measured")
    md = ["## Calibration photos vs the evaluation photos' collection (`benchmarks/ptq_calib_shift.py`, "
          "diagnostic)", "",
          "Each recipe calibrated three ways; each other set beside the rows' own (256 crops of 8 photos) on the "
          "views it holds out: `sibling_views`, 250 views of the 20 evaluation photos, measured on the other 1,750; "
          "`other_photos`, 250 views of 10 evaluation photos, measured on the 1,000 views of the other 10. Both "
          "calibrate on the evaluation collection: a measure of the calibration data's share of the gap, not a "
          "result.", "",
          "| recipe | calibration | measured on | agreement (%) / SQNR (dB) | 8 photos on the same views (%) | "
          "difference (points, paired 95% CI) |", "|---|---|---|---:|---:|---|"]
    for r in doc["rows"].values():
        p8 = r["photos8"]
        md.append(f"| {r['label']} | 8 photos (the rows') | all {p8['views']} views | {p8['agreement']:.2f} / "
                  f"{p8['sqnr_db']:.2f} | | |")
        for arm in ("sibling_views", "other_photos"):
            if arm in r:
                a = r[arm]
                md.append(f"| | {arm} ({a['calibration']}) | {a['views']} held-out views | {a['agreement']:.2f} / "
                          f"{a['sqnr_db']:.2f} | {a['photos8_agreement']:.2f} | {a['difference']:+.2f} ± "
                          f"{a['ci95']:.2f} |")
    atomic_write_text(RESULTS / "ptq_calib_shift.md", "\n".join(md) + "\n")
    print("\n".join(md), flush=True)


if __name__ == "__main__":
    main()
