"""Integer engine vs the float fake-quant model: throughput and peak memory, same run.

Run: ``.venv/bin/python benchmarks/engine.py`` (a few minutes on one core). Writes
``benchmarks/results/engine.json`` and ``engine.md``.

For CNV (28x28 Fashion-MNIST, shipped weights when present) and MobileNetV2 (224x224,
ImageNet weights) under W8A8 (fixed8n / ufixed8) and W4 MSQ (half the rows SP2, the
others fixed4n; 4-bit activations), three runners on the same inputs:

* ``fakequant``: the ordinary fake-quant model (float32, torch);
* ``engine``: the integer engine (integer codes; exact float32/float64/int64 GEMMs;
  SP2 rows as shift-add planes);
* ``faithful``: the hardware-faithful fake-quant model (float64; equals the engine).

Each measurement runs in its own process (spawned), single-threaded
(``torch.set_num_threads(1)``), after one warm-up batch; throughput is images/s over
the timed batches, peak memory the growth of the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before the warm-up) over its
resident set at that point (model and inputs already built). Every engine output is also checked against the faithful
model (``exact`` in the table).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [  # (model, config, batch, timed batches)
    ("cnv", "w8a8", 256, 4), ("cnv", "msq4", 256, 4),
    ("mobilenet_v2", "w8a8", 8, 3), ("mobilenet_v2", "msq4", 8, 3),
]
RUNNERS = ("fakequant", "engine", "faithful")
CONFIGS = {"w8a8": ("fixed8n", "ufixed8", None), "msq4": ("fixed4n", "ufixed4", "sp2_4")}


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _prepare(model: str, config: str, batch: int) -> tuple[Any, Any, Any, bool]:
    import torch

    from mixq import api, data, zoo
    from mixq.algorithms.msq import assign_rows
    from mixq.errors import ModelError
    from mixq.formats import parse_format
    from mixq.graph.bnfold import fold_bn

    torch.manual_seed(0)
    real = True
    try:
        m = zoo.load(model, pretrained=True)
    except ModelError:
        m, real = zoo.load(model), False
    folded = fold_bn(m.eval())
    if model == "cnv":
        calib_np, _ = data.load_fmnist_subset(Path(data.__file__).parent / "assets" / "fmnist_train_calib.npz")
        test_np, _ = data.load_fmnist_subset()
        calib, x = data.normalize_gray(calib_np[:512]), data.normalize_gray(test_np[:batch])
    else:
        calib = data.calibration_set(32, size=224, seed=0)
        x = data.calibration_set(batch, size=224, seed=1)
    w, a, alt = CONFIGS[config]
    plan = api.default_plan(model, folded, calib[:32], weight=parse_format(w), act=parse_format(a),
                            weight_alt=parse_format(alt) if alt else None, alt_ratio=0.5 if alt else 0.0)
    if alt:
        plan = assign_rows(folded, plan, fold=False)
    return api.quantize(folded, plan, calib, fold=False), x, plan, real


def measure(model: str, config: str, runner: str, batch: int, reps: int) -> dict[str, Any]:
    """One runner on one model (in the calling process)."""
    import torch

    from mixq.engine import IntEngine, to_integer
    from mixq.engine.faithful import faithful

    torch.set_num_threads(1)
    q, x, _, real = _prepare(model, config, batch)
    im = to_integer(q, x)
    if runner == "fakequant":
        def fn() -> Any:
            return q(x)
    elif runner == "engine":
        eng = IntEngine(im)

        def fn() -> Any:
            return eng(x).real()
    else:
        fm = faithful(q, im)

        def fn() -> Any:
            return fm(x)
    with torch.no_grad():
        ok = _reset_peak()
        rss0 = _status_kb("VmRSS")
        fn()  # warm-up (its allocations count towards the peak)
        t0 = time.perf_counter()
        for _ in range(reps):
            y = fn()
        dt = time.perf_counter() - t0
        peak = _status_kb("VmHWM")
        exact = None
        if runner == "engine":
            exact = bool(torch.equal(y, faithful(q, im)(x)))
    return {"model": model, "config": config, "runner": runner, "real_weights": real, "batch": batch,
            "batches": reps, "images_per_s": round(batch * reps / dt, 2), "seconds_per_batch": round(dt / reps, 4),
            "peak_extra_mib": round((peak - rss0) / 1024, 1) if ok else None, "exact": exact,
            "input_shape": list(x.shape[1:])}


def _child(args: tuple[str, str, str, int, int], queue: Any) -> None:
    queue.put(measure(*args))


def _run_isolated(args: tuple[str, str, str, int, int]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(args, queue))
    p.start()
    out = queue.get()
    p.join()
    return out  # type: ignore[no-any-return]


def table(rows: list[dict[str, Any]]) -> str:
    by = {(r["model"], r["config"], r["runner"]): r for r in rows}
    lines = ["| model | config | input | batch | fake quant (img/s) | integer engine (img/s) | engine / fake quant "
             "| faithful (img/s) | peak extra MiB: fake quant / engine / faithful | engine == faithful |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, config, _, _ in CASES:
        fq, en, fa = (by.get((model, config, r)) for r in RUNNERS)
        if fq is None or en is None or fa is None:
            continue
        shape = "x".join(map(str, en["input_shape"]))
        lines.append(
            f"| {model}{'' if en['real_weights'] else ' (random init)'} | {config} | {shape} | {en['batch']} "
            f"| {fq['images_per_s']} | {en['images_per_s']} | {en['images_per_s'] / fq['images_per_s']:.2f}x "
            f"| {fa['images_per_s']} | {fq['peak_extra_mib']} / {en['peak_extra_mib']} / {fa['peak_extra_mib']} "
            f"| {'yes' if en['exact'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    rows = []
    for model, config, batch, reps in CASES:
        for runner in RUNNERS:
            r = _run_isolated((model, config, runner, batch, reps))
            print(json.dumps(r), flush=True)
            rows.append(r)
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
           "threads": 1, "torch": __import__("torch").__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    md = ("# Integer engine vs fake quant\n\n"
          "Throughput (images/s) and peak extra memory of the integer engine, the ordinary fake-quant model "
          "(float32) and the hardware-faithful fake-quant model (float64) on the same inputs, one thread each, "
          f"each in its own process (`benchmarks/engine.py`; {env['platform']}, torch {env['torch']}).\n\n"
          + table(rows) + "\n\n"
          "MSQ4: half of every layer's rows SP2 (`sp2_4`, computed by the engine as shift-add planes), the rest "
          "`fixed4n`; 4-bit activations. W8A8: `fixed8n` weights, `ufixed8` activations (signed where the data "
          "needs it). The machine is shared: treat absolute figures as indicative, the ratios as the result.\n")
    (RESULTS / "engine.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
