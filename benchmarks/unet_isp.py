"""AI-ISP denoising with the U-Net: PSNR / SSIM per precision (FP32, PTQ and QAT at W8A8 / W4A4 / W2A2) and
noise level on held-out photos, the classical baselines, the integer engine's check, the single-engine
("mnisc") EU at 1920x1080 on the XC7Z020 beside the streaming template, and the EU Verilog co-simulated on
the trained, quantized U-Net (Icarus).

    .venv/bin/python benchmarks/unet_isp.py [--quick] [--cache runs/unet_isp]

Writes benchmarks/results/unet_isp.json and .md. One thread; about 24 minutes of CPU (the FP32 model 2048 steps,
~3 min, the FP32 control trained on for 2048 more, ~3 min, three QAT runs of 2048 steps at ~5.7 min each, the
rest ~1 min; 18 minutes when ``--cache`` holds the float models), much longer on a loaded machine; ``--quick``:
~1 minute, a smoke run, not for the figures; ``--render``: the .md again from the .json; ``--cache DIR``: keep
the trained FP32 model and its control there and read them back next time (the float training is deterministic
on one thread, so the models are those a fresh run trains).

The verdict's reference is the FP32 control: the FP32 model trained on for as many steps as QAT takes, so the
quantized and float models have had the same training. The FP32 steps (2048) and the ReLU after the upsampling
were chosen on a validation split of the training photos (every 5th training photo), not on the held-out ones:
there the control gains +0.19 dB over a 2048-step FP32 (+0.43 / +0.87 over a 768-step one), and QAT W4A4 lost
-0.64 dB against its control with the ReLU, -1.53 dB without. The quantizer steps' learning rate (1e-2, ten
times the weights') was chosen on the same kind of split, see :data:`VALIDATION`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mixq.cli.isp import train_float
from mixq.engine import IntEngine, to_integer, verify
from mixq.engine.program import lower, prog_input
from mixq.graph import capture
from mixq.hw import estimate
from mixq.hw.mnisc import EuConfig, at_resolution, estimate_mnisc
from mixq.hw.parts import get_part
from mixq.io import atomic_write_json, atomic_write_text
from mixq.rtl.cosim import iverilog_available
from mixq.rtl.mnisc import cosimulate_eu, eu_steps
from mixq.tasks import isp
from mixq.zoo.unet import unet

RESULTS = Path(__file__).parent / "results"
HD = (1080, 1920)
DDR_GBPS = 4.26  # the XC7Z020 board's DDR3 (32 bit x 1066 MT/s), 80% efficiency: the template's defaults


@dataclass(frozen=True)
class Setup:
    width: int = 16
    depth: int = 2
    patch: int = 32
    patches: int = 8192
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    qat_epochs: int = 16
    qat_patches: int = 4096
    qat_lr: float = 1e-3
    # Adam's lr for the quantizers' (log) steps, same cosine decay (None: qat_lr); chosen on the validation split
    qat_scale_lr: float | None = 1e-2
    qat_init: str = "dfq"
    # QAT's loss: (1 - a) MSE(student, clean) + a MSE(student, teacher(noisy)), the teacher "fp32" (the model
    # QAT starts from) or "control" (fp32_same_steps); a = 0: the plain MSE
    qat_kd_alpha: float = 0.0
    qat_teacher: str = "fp32"
    crop: int = 128
    cosim_size: int = 16
    seed: int = 0
    up_relu: bool = True  # a ReLU after each upsampling: the decoder convs read an unsigned concat


#: QAT W4A4 choices measured on a validation split of the training photos (the central 128x128 crop of training
#: photos 1, 7, 14, 21, 27 — every 5th; the FP32 training saw random patches of them, the test photos stay
#: unseen): the same FP32 model and control as the run, one setting changed from the plain QAT (quantizer steps
#: at qat_lr, no distillation); mid-noise PSNR of the QAT model minus the control's (31.31 dB) on that split
VALIDATION = {
    "plain QAT (steps at 1e-3)": -0.93,
    "distillation a = 0.5 from fp32_same_steps": -1.08,
    "steps at 1e-2 (the default)": -0.73,
    "steps at 3e-2": -0.73,
}
VALIDATION_NOTE = ("steps at 1e-2 vs 3e-2: the same at mid noise, 1e-2 better at low (+0.55 dB) and high (+0.34 dB) "
                   "noise; steps at 1e-2 vs plain: +0.79 dB low, +0.49 dB high")

QUICK = Setup(width=4, patches=512, epochs=1, qat_epochs=1, qat_patches=128, crop=64)
EU_GRID = [(p, s, bits, lane) for p in (8, 16, 32, 64) for s in (8, 16, 32, 64) for bits in (2, 4, 8)
           for lane in ("fixed_lut", "fixed_dsp")]


def _float_models(su: Setup, clean: torch.Tensor, cache: Path | None) -> tuple[Any, Any, dict[str, Any]]:
    """The FP32 model (``su.epochs`` on ``clean``) and its control (trained on as long as QAT trains: same patches,
    epochs, Adam peak lr; float), and their training record. With ``cache`` both are read from / written to
    that folder under a key of every setting they depend on (the training is deterministic on one thread, so a
    cached model is the model a fresh run trains; the record keeps the seconds of the run that trained it)."""
    fkeys = ("width", "depth", "patch", "patches", "epochs", "batch_size", "lr", "seed", "up_relu")
    ckeys = (*fkeys, "qat_epochs", "qat_patches", "qat_lr")
    d = asdict(su)
    key = hashlib.sha256(json.dumps([d[k] for k in ckeys] + [torch.__version__]).encode()).hexdigest()[:16]
    path = cache / f"unet_isp_float_{key}.pt" if cache is not None else None
    torch.manual_seed(su.seed)
    model = unet(width=su.width, depth=su.depth, up_relu=su.up_relu)
    ctrl = unet(width=su.width, depth=su.depth, up_relu=su.up_relu)
    if path is not None and path.exists():
        blob = torch.load(path, weights_only=True)
        model.load_state_dict(blob["fp32"])
        ctrl.load_state_dict(blob["control"])
        torch.manual_seed(su.seed + 1)  # what follows draws the same with or without the cache
        return model.eval(), ctrl.eval(), {**json.loads(blob["record"]), "cached": str(path)}
    t0 = time.perf_counter()
    fit = train_float(model, clean, epochs=su.epochs, batch_size=su.batch_size, lr=su.lr, seed=su.seed, threads=1,
                      progress=False)
    rec: dict[str, Any] = {"train": {"steps": fit.steps, "seconds": round(time.perf_counter() - t0, 1),
                                     "final_loss": fit.history[-1]["train_loss"]}}
    t0 = time.perf_counter()
    ctrl.load_state_dict(model.state_dict())
    train_float(ctrl, clean[: su.qat_patches], epochs=su.qat_epochs, batch_size=su.batch_size, lr=su.qat_lr,
                seed=su.seed, threads=1, progress=False)
    rec["control_seconds"] = round(time.perf_counter() - t0, 1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"fp32": model.state_dict(), "control": ctrl.state_dict(), "record": json.dumps(rec)}, tmp)
        tmp.replace(path)
    torch.manual_seed(su.seed + 1)
    return model.eval(), ctrl.eval(), rec


def _quality(su: Setup, photos: list[torch.Tensor], train_idx: list[int], test_idx: list[int],
             work: Path, cache: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    torch.manual_seed(su.seed)
    clean = isp.random_patches([photos[i] for i in train_idx], su.patches, su.patch, su.seed)
    test = isp.center_crops([photos[i] for i in test_idx], su.crop)
    model, ctrl, rec = _float_models(su, clean, cache)
    out: dict[str, Any] = {"train": {**rec["train"], **({"cached": rec["cached"]} if "cached" in rec else {})}}
    calib = isp.calibration_inputs(clean[:96], su.seed + 2)
    levels = list(isp.NOISE_LEVELS)
    out["fp32"] = isp.evaluate(isp.run_model(model), test, levels, su.seed)
    models: dict[str, Any] = {"fp32": model}
    qat_clean = clean[: su.qat_patches]
    out["fp32_same_steps"] = {**isp.evaluate(isp.run_model(ctrl), test, levels, su.seed),
                              "seconds": rec["control_seconds"]}
    for name in isp.PRECISIONS:
        for recipe in ("plan", "dfq", "gptq"):
            t0 = time.perf_counter()
            q = isp.ptq_denoiser(model, name, calib, recipe)
            key = f"ptq_{recipe}_{name}"
            models[key] = q
            out[key] = {**isp.evaluate(isp.run_model(q), test, levels, su.seed),
                        "seconds": round(time.perf_counter() - t0, 1)}
        t0 = time.perf_counter()
        qq = isp.qat_denoiser(model, name, qat_clean, calib,
                              isp.QatSettings(epochs=su.qat_epochs, lr=su.qat_lr, seed=su.seed, threads=1,
                                               init=su.qat_init, kd_alpha=su.qat_kd_alpha,
                                               scale_lr=su.qat_scale_lr), work,
                              teacher=ctrl if su.qat_teacher == "control" else model)
        models[f"qat_{name}"] = qq
        out[f"qat_{name}"] = {**isp.evaluate(isp.run_model(qq), test, levels, su.seed),
                              "seconds": round(time.perf_counter() - t0, 1)}
    out["float_one_act"] = {k: _float_one_act(models[k], test, su.seed) for k in ("qat_w4a4", "qat_w2a2")}
    out["baselines"] = isp.baselines(test, clean[:64], su.seed)
    return out, {"models": models, "test": test, "calib": calib}


def _float_one_act(q: Any, test: torch.Tensor, seed: int) -> dict[str, float]:
    """What each activation quantizer of ``q`` costs: the mid-noise PSNR gained (dB, held-out photos) when that
    one quantizer passes its input through in float — the diagnostic, not a model the hardware runs."""
    from mixq.nn import QAct

    base = isp.evaluate(isp.run_model(q), test, ["mid"], seed)["mid"]["psnr"]
    out = {}
    for name, mod in q.named_modules():
        if isinstance(mod, QAct) and mod.mode == "quant":
            mod.mode = "float"
            out[name.removesuffix(".input_quant")] = round(
                isp.evaluate(isp.run_model(q), test, ["mid"], seed)["mid"]["psnr"] - base, 2)
            mod.mode = "quant"
    return out


def _engine(models: dict[str, Any], test: torch.Tensor, seed: int) -> dict[str, Any]:
    """Every quantized denoiser on the integer engine at mid noise: bit-exact against the faithful model, and
    the PSNR of the engine's own output."""
    noisy = isp.noisy_set(test, "mid", seed + 1)
    out = {}
    for key, q in models.items():
        if key == "fp32":
            continue
        im = to_integer(q, noisy[:1])
        rep = verify(q, noisy[:2], imodel=im)
        res = IntEngine(im)(noisy)
        out[key] = {"exact": bool(rep["exact"]), "mismatching_outputs": int(rep["mismatching_outputs"]),
                    "engine_psnr_mid": isp.scores(res.real().float(), test)["psnr"]}
    return out


def _hardware(q: Any, fp: Any, su: Setup, name: str) -> dict[str, Any]:
    """The EU grid at 1080p for the quantized U-Net ``q``, and the streaming template for the same network."""
    base = (32, 32)
    steps = eu_steps(lower(to_integer(q, (3, *base))))
    hd = at_resolution(steps, base, HD)
    part = get_part("xc7z020")
    rows: list[dict[str, Any]] = []
    for p, s, bits, lane in EU_GRID:
        est = estimate_mnisc(hd, EuConfig(p=p, s=s, wbits=bits, abits=bits, lane=lane, ddr_gbps=DDR_GBPS), part)
        ddr_s = sum(t.ddr_s for t in est.steps)
        compute_s = sum(t.compute_s for t in est.steps)
        rows.append({"p": p, "s": s, "bits": bits, "lane": lane, "fits": est.fits, "fps": round(est.fps, 3),
                     "bound": est.bound, "lut": round(est.resources.lut), "dsp": round(est.resources.dsp),
                     "bram": round(est.resources.bram, 1), "ff": round(est.resources.ff),
                     "ddr_only_fps": round(1 / ddr_s, 2), "compute_only_fps": round(1 / compute_s, 3),
                     "clock_mhz": est.clock_mhz})
    fitting = [r for r in rows if r["fits"]]
    best = max(fitting, key=lambda r: r["fps"]) if fitting else None
    macs = sum(s.macs for s in hd)
    out: dict[str, Any] = {"precision": name, "macs_per_frame": macs, "ddr_gbps": DDR_GBPS, "ddr_efficiency": 0.8,
                           "grid": rows, "best": best, "realtime_30fps": bool(best and best["fps"] >= 30)}
    if best is not None:
        est = estimate_mnisc(hd, EuConfig(p=best["p"], s=best["s"], wbits=best["bits"], abits=best["bits"],
                                          lane=best["lane"], ddr_gbps=DDR_GBPS), part)
        out["best_detail"] = {k: v for k, v in est.to_dict().items() if k != "steps"}
        out["best_steps"] = est.to_dict()["steps"]
        out["shortfall"] = round(30 / best["fps"], 2)
        out["mac_rate_needed_gmacs"] = round(30 * macs / 1e9, 1)
        out["mac_rate_best_gmacs"] = round(best["fps"] * macs / 1e9, 2)
    specs = capture(unet(width=su.width, depth=su.depth, up_relu=su.up_relu), (3, *HD))
    plan = isp.precision_plan(name, fp, torch.rand(4, 3, 32, 32) - 0.05)
    try:
        st = estimate(specs, plan, "xc7z020", "streaming")
        out["streaming"] = {"fits": st.fits, "fps": round(st.fps, 3), "bottleneck": st.bottleneck,
                            "resources": st.resources.to_dict(), "clock_mhz": st.clock_mhz,
                            "overflows": [str(o) for o in st.overflows][:5], "notes": list(st.notes)[:5]}
    except Exception as e:  # a template that refuses the network: its one-line reason is the result
        out["streaming"] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    return out


def _cosim(q: Any, su: Setup, test: torch.Tensor, work: Path) -> dict[str, Any]:
    if not iverilog_available():
        return {"skipped": "iverilog not installed"}
    n = su.cosim_size
    prog = lower(to_integer(q, (3, n, n)))
    x = isp.noisy_set(test[:1, :, :n, :n], "mid", su.seed)
    t0 = time.perf_counter()
    res = cosimulate_eu(prog, prog_input(prog, x).numpy(), work / "cosim", p=8)
    return {"input": [3, n, n], "p": 8, "cycles": res.cycles, "done": res.done, "elements": res.elements,
            "mismatching_elements": sum(res.mismatches.values()), "ok": res.ok,
            "steps": len(prog.steps), "kinds": sorted({s.kind for s in prog.steps}),
            "seconds": round(time.perf_counter() - t0, 1)}


def _md(r: dict[str, Any]) -> str:
    levels = list(isp.NOISE_LEVELS)
    su = r["setup"]
    qat_steps = su["qat_epochs"] * (su["qat_patches"] // su["batch_size"])
    steps_lr = f", the quantizer steps at {su['qat_scale_lr']}," if su.get("qat_scale_lr") else ""
    teacher = "fp32_same_steps" if su.get("qat_teacher") == "control" else "the FP32 model QAT starts from"
    kd = (f"; loss `(1 - a) MSE(q(y), x) + a MSE(q(y), t(y))` with a = {su['qat_kd_alpha']}: distilled from the float "
          f"teacher t = {teacher}" if su.get("qat_kd_alpha") else "")
    lines = ["# U-Net AI-ISP denoiser (benchmarks/unet_isp.py)", "",
             f"U-Net width {su['width']}, depth {su['depth']}, pixel-shuffle upsampling"
             + (" with a ReLU after it (the decoder convs read an unsigned concat)" if su.get("up_relu") else "")
             + f", residual output; trained "
             f"{r['quality']['train']['steps']} steps ({r['quality']['train']['seconds']} s, one thread"
             + ("; read back from --cache" if r["quality"]["train"].get("cached") else "") + ") on "
             f"{su['patches']} {su['patch']}x{su['patch']} patches of {len(r['train_photos'])} photos; tested on the "
             f"central {su['crop']}x{su['crop']} crop of {len(r['test_photos'])} held-out photos (split by photo). "
             "Noise: Poisson-Gaussian `y = a Poisson(x/a) + N(0, b^2)`, "
             + ", ".join(f"{k} a={v['a']} b={v['b']}" for k, v in r["noise_levels"].items())
             + ". W4A4 / W2A2: the layers touching the image (enc.0.0, skip, head) at W8A8; PTQ recipes plan / dfq / "
             "gptq on 96 noisy training patches; QAT: "
             f"{su['qat_epochs']} epoch(s) on {su['qat_patches']} patches ({qat_steps} steps; LSQ, Adam at "
             f"{su['qat_lr']}{steps_lr} with cosine decay to 0), started from the {su.get('qat_init', 'observer')} PTQ "
             f"model{kd}.", "",
             "| model | " + " | ".join(f"{lv} PSNR / SSIM" for lv in levels) + " |", "|---|" + "---:|" * len(levels)]
    rows = {k: v for k, v in r["quality"].items() if isinstance(v, dict) and set(levels) <= set(v)}
    rows.update(r["quality"]["baselines"])
    for k, v in rows.items():
        lines.append(f"| {k} | " + " | ".join(f"{v[lv]['psnr']:.2f} / {v[lv]['ssim']:.3f}" for lv in levels) + " |")
    fp = r["quality"]["fp32"]["mid"]["psnr"]
    lines += ["", "Loss against FP32 at mid noise (dB): " + ", ".join(
        f"{k} {v['mid']['psnr'] - fp:+.2f}" for k, v in r["quality"].items()
        if k.startswith(("ptq", "qat")) and isinstance(v, dict)) + ".", ""]
    q4, q2 = r["quality"].get("qat_w4a4"), r["quality"].get("qat_w2a2")
    ctl = r["quality"].get("fp32_same_steps")
    if q4 is not None and q2 is not None and ctl is not None:
        c = ctl["mid"]["psnr"]
        d4, d2 = q4["mid"]["psnr"] - c, q2["mid"]["psnr"] - c
        lines += [f"Int4 target (lose <= 0.5 dB against FP32 at mid noise, held-out photos). The reference is the "
                  f"FP32 trained as long as the QAT models (fp32_same_steps: the FP32 above trained on for the same "
                  f"{qat_steps} steps QAT takes, {c - fp:+.2f} dB over it): qat_w4a4 {d4:+.2f} dB, "
                  f"**{'met' if d4 >= -0.5 else 'not met'}**; int2: qat_w2a2 {d2:+.2f} dB. Against the shorter-trained "
                  f"FP32 row: qat_w4a4 {q4['mid']['psnr'] - fp:+.2f} dB, qat_w2a2 {q2['mid']['psnr'] - fp:+.2f} dB.",
                  ""]
    foa = r["quality"].get("float_one_act")
    if foa:
        for k, v in foa.items():
            top = sorted(v.items(), key=lambda kv: -kv[1])[:4]
            lines.append(f"What each activation quantizer of {k} costs (mid-noise PSNR gained with that one quantizer "
                         "in float, dB): " + ", ".join(f"{n} {d:+.2f}" for n, d in top) + "; others "
                         f"<= {max([d for _, d in sorted(v.items(), key=lambda kv: -kv[1])[4:]] or [0.0]):+.2f}.")
        lines.append("")
    if {k: su.get(k) for k in asdict(Setup())} == asdict(Setup()):  # the figures are the default setup's
        lines += ["QAT choices on a validation split of the training photos (W4A4, mid noise, dB against the control "
                  "on that split; benchmarks/unet_isp.py VALIDATION): "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in VALIDATION.items()) + f"; {VALIDATION_NOTE}.", ""]
    eng = r["engine"]
    lines.append("Integer engine (mid noise, every quantized model): "
                 + ", ".join(f"{k} {'exact' if v['exact'] else 'MISMATCH'} ({v['engine_psnr_mid']:.2f} dB)"
                             for k, v in eng.items()) + ".")
    hw = r["hardware"]
    b = hw.get("best")
    lines += ["", f"## Single EU on the XC7Z020 at 1920x1080 ({hw['precision']} network, "
                  f"{hw['macs_per_frame'] / 1e9:.2f} GMAC/frame; DDR {hw['ddr_gbps']} GB/s x {hw['ddr_efficiency']})",
              ""]
    if b is not None:
        lines += ["| EU (p x s, bits, lanes) | LUT | FF | DSP | BRAM | fps | bound | DDR-only fps |",
                  "|---|---:|---:|---:|---:|---:|---|---:|",
                  f"| {b['p']} x {b['s']}, int{b['bits']}, {b['lane']} | {b['lut']:,} | {b['ff']:,} | {b['dsp']} | "
                  f"{b['bram']} | {b['fps']} | {b['bound']} | {b['ddr_only_fps']} |", "",
                  f"1080p at >= 30 fps: **{'reached' if hw['realtime_30fps'] else 'not reached'}** by any EU of the "
                  f"grid that fits ({len(hw['grid'])} configurations). The fastest that fits gives {b['fps']} fps "
                  f"({hw['shortfall']}x short of 30): {b['bound']}-bound — it needs "
                  f"{hw['mac_rate_needed_gmacs']} GMAC/s, it does {hw['mac_rate_best_gmacs']}; DDR alone would allow "
                  f"{b['ddr_only_fps']} fps."]
        if b["ddr_only_fps"] < 30:
            lines += ["", f"DDR is a second bound: reading and writing every feature map once per layer moves "
                          f"{hw['best_detail']['ddr_bytes'] / 1e6:.0f} MB per frame, so even unlimited compute stops "
                          f"at {b['ddr_only_fps']} fps ({30 / b['ddr_only_fps']:.1f}x short of 30) at "
                          f"{hw['ddr_gbps']} GB/s x {hw['ddr_efficiency']}."]
    st = hw["streaming"]
    lines += ["", "Streaming template, same network and plan at 1080p: " + (
        f"{st['fps']} fps, fits: {st['fits']}, bottleneck {st['bottleneck']}, {st['resources']}"
        if "fps" in st else st["error"]) + "."]
    cs = r["cosim"]
    lines += ["", "EU Verilog co-simulation (Icarus) of the trained QAT "
              f"{hw['precision']} U-Net: " + (cs["skipped"] if "skipped" in cs else
              f"input {cs['input']}, p = {cs['p']}, {cs['cycles']:,} cycles, {cs['elements']:,} elements, "
              f"{cs['mismatching_elements']} mismatching ({cs['seconds']} s)") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the .json only")
    ap.add_argument("--cache", type=Path, default=None,
                    help="a folder to keep the trained FP32 model and its control in (and read them from next time)")
    args = ap.parse_args(argv)
    if args.render:
        import json

        stem = "unet_isp_quick" if args.quick else "unet_isp"
        atomic_write_text(RESULTS / f"{stem}.md", _md(json.loads((RESULTS / f"{stem}.json").read_text())))
        return 0
    su = QUICK if args.quick else Setup()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    photos = isp.load_photos()
    train_idx, test_idx = isp.split_photos(len(photos))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        quality, keep = _quality(su, photos, train_idx, test_idx, work, args.cache)
        engine = _engine(keep["models"], keep["test"], su.seed)
        q = keep["models"]["qat_w4a4"]
        hardware = _hardware(q, keep["models"]["fp32"], su, "w4a4")
        cosim = _cosim(q, su, keep["test"], work)
    r = {"setup": asdict(su), "train_photos": train_idx, "test_photos": test_idx,
         "noise_levels": {k: vars(v) for k, v in isp.NOISE_LEVELS.items()}, "quality": quality, "engine": engine,
         "hardware": hardware, "cosim": cosim, "seconds": round(time.perf_counter() - t0, 1),
         "torch": torch.__version__}
    stem = "unet_isp_quick" if args.quick else "unet_isp"
    atomic_write_json(RESULTS / f"{stem}.json", r)
    atomic_write_text(RESULTS / f"{stem}.md", _md(r))
    print(_md(r))
    return 0 if all(v["exact"] for v in engine.values()) and cosim.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
