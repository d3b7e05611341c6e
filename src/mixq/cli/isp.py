"""`mixq isp train|eval|denoise`: the AI-ISP denoiser (the zoo U-Net) on the shipped photos.

The task itself (photos, noise, metrics, PTQ / QAT, evaluation) is :mod:`mixq.tasks.isp`. Three things live
here because ``tasks`` may not import them: the float training call into the one trainer
(:func:`train_float`, :func:`mixq.training.fit`), the integer engine's check (:func:`engine_check`) and the
report's images. ``train`` writes ``model.pt`` + ``model.json`` (the U-Net's settings, read back by the other
two), ``eval`` writes ``eval.json``, ``report.md`` and before/after crops (PNG), ``denoise IMG`` a PNG.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from mixq.cli._common import choice, count, emit, out_dir, real

DEFAULT_RUN = Path("runs") / "isp"


# ----------------------------------------------------------------------------- library pieces (CLI layer)


def build_unet(cfg: dict[str, Any]) -> Any:
    from mixq.zoo.unet import unet

    return unet(width=int(cfg["width"]), depth=int(cfg["depth"]), up=str(cfg["up"]))


def train_float(model: Any, clean: Any, *, epochs: int, batch_size: int, lr: float, seed: int,
                threads: int | None, progress: bool = True) -> Any:
    """Train the float denoiser in place on clean patches (fresh noise of every level each batch) with the one
    trainer; its :class:`~mixq.training.FitResult`."""
    import torch

    from mixq.tasks.isp import NOISE_LEVELS, DenoiseObjective, train_labels
    from mixq.training import TrainConfig, fit

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", seed=seed, threads=threads,
                      augment=False, warmup_steps=20, min_lr=lr * 0.05, eval_every_epoch=False, progress=progress)
    torch.manual_seed(seed)
    return fit(DenoiseObjective(model, list(NOISE_LEVELS.values())), clean, train_labels(clean), cfg,
               desc="isp train")


def engine_check(qmodel: Any, noisy: Any) -> dict[str, Any]:
    """The integer engine against the hardware-faithful fake quant on ``noisy`` (``engine.verify``), and the
    engine's output in real units."""
    from mixq.engine import IntEngine, to_integer, verify

    im = to_integer(qmodel, noisy[:1])
    rep = verify(qmodel, noisy, imodel=im)
    out = IntEngine(im)(noisy)
    return {"exact": bool(rep["exact"]), "mismatching_outputs": int(rep["mismatching_outputs"]),
            "images": int(noisy.shape[0]), "output": out.real().float()}


def save_png(path: Path, img: Any) -> Path:
    """A (3, H, W) float image in [0, 1] as an 8-bit PNG, written atomically."""
    import io

    import numpy as np
    from PIL import Image

    from mixq.io import atomic_write_bytes

    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def load_run(weights: Path) -> tuple[Any, dict[str, Any]]:
    """The float U-Net of a ``mixq isp train`` run (``model.pt`` + ``model.json`` beside it)."""
    from mixq.errors import DataError, ModelError
    from mixq.validate import load_state

    meta = weights.with_name("model.json")
    if not weights.is_file():
        raise DataError(f"--weights {weights}: no such file (run `mixq isp train --out {weights.parent}` first)")
    try:
        cfg = json.loads(meta.read_text())["unet"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{meta}: not the model.json of a `mixq isp train` run ({type(e).__name__}: {e})") from None
    model = build_unet(cfg)
    try:
        model.load_state_dict(load_state(weights, f"--weights {weights}"))
    except RuntimeError as e:
        raise ModelError(f"--weights {weights}: does not match the U-Net of {meta} "
                         f"({' '.join(str(e).split())[:200]})") from None
    return model.eval(), json.loads(meta.read_text())


def write_report(folder: Path, result: dict[str, Any], clean: Any, models: dict[str, Any], seed: int) -> Path:
    """``report.md``: the PSNR / SSIM table and, per held-out photo, a 64x64 crop clean / noisy (mid) / each
    model's output / the Gaussian filter, as PNGs in ``crops/``."""
    from mixq.io import atomic_write_text
    from mixq.tasks import isp

    noisy = isp.noisy_set(clean, "mid", seed + 1)
    outs = {"clean": clean, "noisy": noisy, **{k: isp.run_model(m)(noisy) for k, m in models.items()},
            "gaussian": isp.gaussian_filter(noisy, float(result["baselines"]["gaussian"]["mid"]["sigma"]))}
    levels = list(isp.NOISE_LEVELS)
    rows = [k for k in result if isinstance(result[k], dict) and set(levels) <= set(result[k])]
    lines = ["# AI-ISP denoising: the U-Net on held-out photos", "",
             f"Weights `{result['weights']}`, {clean.shape[0]} held-out photos (central {result['crop']}x"
             f"{result['crop']} crops), Poisson-Gaussian noise "
             + ", ".join(f"{k}: a={v.a}, b={v.b}" for k, v in isp.NOISE_LEVELS.items()) + ".", "",
             "| model | " + " | ".join(f"{lv} PSNR / SSIM" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    table = {**{k: result[k] for k in rows}, **result["baselines"]}
    lines += [f"| {k} | " + " | ".join(f"{v[lv]['psnr']:.2f} / {v[lv]['ssim']:.3f}" for lv in levels) + " |"
              for k, v in table.items() if set(levels) <= set(v)]
    if "engine_check" in result:
        ec = result["engine_check"]
        lines += ["", f"Integer engine on `{ec['model']}` at mid noise: exact = {ec['exact']}, "
                      f"{ec['mismatching_outputs']} mismatching outputs, PSNR {ec['engine_mid']['psnr']} dB."]
    lines += ["", "## Before / after (mid noise, 64x64 crops)", "", "| photo | " + " | ".join(outs) + " |",
              "|---|" + "---|" * len(outs)]
    side = min(64, int(clean.shape[-1]))
    for i in range(clean.shape[0]):
        cells = []
        for k, img in outs.items():
            rel = f"crops/photo{i}-{k}.png"
            save_png(folder / rel, img[i, :, :side, :side])
            cells.append(f"![{k}]({rel})")
        lines.append(f"| {result['test_photos'][i]} | " + " | ".join(cells) + " |")
    return atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- commands

_WEIGHTS = typer.Option(DEFAULT_RUN / "model.pt", "--weights", help="model.pt of a `mixq isp train` run")
_THREADS = count(1, "torch threads")
_SEED = count(0, "random seed", 0)


def _train(out: Path | None, width: int, depth: int, up: str, patch: int, patches: int, epochs: int,
           batch_size: int, lr: float, seed: int, threads: int) -> None:
    from mixq.io import atomic_write_json, atomic_write_torch
    from mixq.tasks.isp import NOISE_LEVELS, load_photos, objective_loss, random_patches, split_photos

    folder = out if out is not None else DEFAULT_RUN
    out_dir(folder, "isp")
    if patch % 2**depth:
        from mixq.errors import OptionError

        raise OptionError(f"--patch: {patch} is not divisible by 2**depth = {2**depth}")
    photos = load_photos()
    train_idx, test_idx = split_photos(len(photos))
    clean = random_patches([photos[i] for i in train_idx], patches, patch, seed)
    cfg = {"width": width, "depth": depth, "up": up}
    model = build_unet(cfg)
    before = objective_loss(model, clean[:64], list(NOISE_LEVELS.values()), seed)
    t0 = time.perf_counter()
    res = train_float(model, clean, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=threads)
    after = objective_loss(model, clean[:64], list(NOISE_LEVELS.values()), seed)
    summary = {"unet": cfg, "patch": patch, "patches": patches, "epochs": epochs, "batch_size": batch_size,
               "lr": lr, "seed": seed, "threads": threads, "steps": res.steps,
               "train_time_s": round(time.perf_counter() - t0, 1), "mse_before": before, "mse_after": after,
               "train_photos": train_idx, "test_photos": test_idx,
               "noise_levels": {k: vars(v) for k, v in NOISE_LEVELS.items()}}
    atomic_write_torch(folder / "model.pt", model.state_dict())
    atomic_write_json(folder / "model.json", summary)
    emit({"out": str(folder), **summary}, [f"trained U-Net w{width} d{depth}: mse {before:.5f} -> {after:.5f} "
                                            f"in {summary['train_time_s']} s", f"wrote {folder}"])


def _eval(out: Path | None, weights: Path, crop: int, precisions: list[str], recipe: str, qat: list[str],
          qat_epochs: int, seed: int, threads: int) -> None:
    import torch

    from mixq.io import atomic_write_json
    from mixq.tasks import isp

    folder = out_dir(out if out is not None else DEFAULT_RUN / "eval", "isp")
    torch.set_num_threads(threads)
    model, meta = load_run(weights)
    photos = isp.load_photos()
    train_idx, test_idx = isp.split_photos(len(photos))
    clean = isp.center_crops([photos[i] for i in test_idx], crop)
    train_clean = isp.random_patches([photos[i] for i in train_idx], 2048, int(meta["patch"]), seed + 1)
    calib = isp.calibration_inputs(train_clean[:96], seed + 2)
    levels = list(isp.NOISE_LEVELS)
    result: dict[str, Any] = {"weights": str(weights), "test_photos": test_idx, "crop": crop, "recipe": recipe,
                              "fp32": isp.evaluate(isp.run_model(model), clean, levels, seed)}
    models: dict[str, Any] = {"fp32": model}
    for name in precisions:
        q = isp.ptq_denoiser(model, name, calib, recipe)
        models[f"ptq_{name}"] = q
        result[f"ptq_{name}"] = isp.evaluate(isp.run_model(q), clean, levels, seed)
        if qat_epochs and name in qat:
            qq = isp.qat_denoiser(model, name, train_clean, calib, isp.QatSettings(epochs=qat_epochs, seed=seed,
                                                                                   threads=threads, init="dfq"), folder)
            models[f"qat_{name}"] = qq
            result[f"qat_{name}"] = isp.evaluate(isp.run_model(qq), clean, levels, seed)
    result["baselines"] = isp.baselines(clean, train_clean[:64], seed)
    check_name = next((k for k in models if k.endswith("w4a4")), next(iter(m for m in models if m != "fp32"), None))
    if check_name is not None:
        noisy = isp.noisy_set(clean, "mid", seed + 1)
        chk = engine_check(models[check_name], noisy)
        out_img = chk.pop("output")
        result["engine_check"] = {"model": check_name, **chk,
                                  "engine_mid": isp.scores(out_img, clean)}
    write_report(folder, result, clean, models, seed)
    atomic_write_json(folder / "eval.json", result)
    mid = {k: v["mid"]["psnr"] for k, v in result.items() if isinstance(v, dict) and "mid" in v}
    emit({"out": str(folder), **result}, [f"PSNR at mid noise (dB): {json.dumps(mid)}", f"wrote {folder}"])


def _denoise(image: Path, out: Path | None, weights: Path, precision: str, noise: str, seed: int,
             threads: int) -> None:
    import torch

    from mixq.tasks import isp
    from mixq.validate import writable_file

    target = out if out is not None else image.with_name(f"{image.stem}-denoised.png")
    writable_file(target, "--out")
    torch.set_num_threads(threads)
    model, meta = load_run(weights)
    img = isp.read_photo(image)
    m = 2 ** int(meta["unet"]["depth"])
    h, w = img.shape[1] // m * m, img.shape[2] // m * m
    x = img[None, :, :h, :w]
    if noise != "none":
        x = isp.noisy_set(x, noise, seed)
    net = model
    if precision != "fp32":
        photos = isp.load_photos()
        train_idx, _ = isp.split_photos(len(photos))
        calib = isp.calibration_inputs(isp.random_patches([photos[i] for i in train_idx], 96,
                                                          int(meta["patch"]), seed + 1), seed + 2)
        net = isp.ptq_denoiser(model, precision, calib)
    y = isp.run_model(net, 1)(x)[0]
    save_png(target, y)
    lines = [f"wrote {target} ({w}x{h}, {precision})"]
    res: dict[str, Any] = {"out": str(target), "precision": precision, "noise": noise, "size": [h, w]}
    if noise != "none":
        noisy_path = target.with_name(f"{target.stem}-noisy.png")
        save_png(noisy_path, x[0])
        res["noisy"] = str(noisy_path)
        res["psnr_noisy"] = isp.scores(x, img[None, :, :h, :w])["psnr"]
        res["psnr_denoised"] = isp.scores(y[None], img[None, :, :h, :w])["psnr"]
        lines.insert(0, f"PSNR {res['psnr_noisy']} dB -> {res['psnr_denoised']} dB")
    emit(res, lines)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="AI-ISP denoising with the U-Net: train, evaluate (PTQ / QAT), denoise an image.")
    app.add_typer(sub, name="isp")

    @sub.command("train")
    def train(
        out: Path | None = typer.Option(None, help=f"run folder (model.pt, model.json; default {DEFAULT_RUN})"),
        width: int = count(16, "U-Net width (channels of the first level)"),
        depth: int = count(2, "U-Net poolings"),
        up: str = choice("pixelshuffle", "upsampling", ("pixelshuffle", "convtranspose")),
        patch: int = count(32, "training patch side", 8),
        patches: int = count(4096, "training patches (drawn from the training photos)", 2),
        epochs: int = count(3, "training epochs"),
        batch_size: int = count(32, "batch size", 2),
        lr: float = real(1e-3, "Adam learning rate (warm-up + cosine)", 0.0, 1.0),
        seed: int = _SEED,
        threads: int = _THREADS,
    ) -> None:
        """Train the U-Net denoiser on patches of the training photos (Poisson-Gaussian noise, all levels)."""
        _train(out, width, depth, up, patch, patches, epochs, batch_size, lr, seed, threads)

    @sub.command("eval")
    def evaluate(
        out: Path | None = typer.Option(None, help=f"report folder (default {DEFAULT_RUN / 'eval'})"),
        weights: Path = _WEIGHTS,
        crop: int = count(128, "side of the central crop of each held-out photo", 16),
        precision: list[str] = typer.Option(["w8a8", "w4a4", "w2a2"], "--precision",
                                            help="quantized precisions (repeat): w8a8, w4a4, w2a2"),
        recipe: str = choice("dfq", "PTQ recipe", ("plan", "minmax", "dfq", "gptq", "adaround")),
        qat: list[str] = typer.Option(["w4a4"], "--qat", help="precisions also trained by QAT (repeat)"),
        qat_epochs: int = count(1, "QAT epochs (2048 patches; 0: PTQ only)", 0),
        seed: int = _SEED,
        threads: int = _THREADS,
    ) -> None:
        """PSNR / SSIM on held-out photos at every noise level: FP32, PTQ (and QAT) per precision, classical
        baselines, the integer engine on the W4A4 model; report.md with before/after crops."""
        from mixq.errors import OptionError
        from mixq.tasks.isp import PRECISIONS

        for opt, given in (("--precision", precision), ("--qat", qat)):
            bad = [p for p in given if p not in PRECISIONS]
            if bad:
                raise OptionError(f"{opt}: {bad[0]!r} is not one of {', '.join(PRECISIONS)}")
        _eval(out, weights, crop, precision, recipe, qat, qat_epochs, seed, threads)

    @sub.command("denoise")
    def denoise(
        image: Path = typer.Argument(..., help="image file (PNG, JPEG, ...)"),
        out: Path | None = typer.Option(None, help="output PNG (default IMAGE-denoised.png beside it)"),
        weights: Path = _WEIGHTS,
        precision: str = choice("fp32", "precision (quantized: PTQ on training patches)",
                                ("fp32", "w8a8", "w4a4", "w2a2")),
        noise: str = choice("none", "add synthetic noise first (then PSNR is reported)",
                            ("none", "low", "mid", "high")),
        seed: int = _SEED,
        threads: int = _THREADS,
    ) -> None:
        """Denoise IMG (cropped to a multiple of 2**depth) and write a PNG."""
        from mixq.tasks.isp import read_photo

        read_photo(image)  # a missing or broken image: one line before any work
        _denoise(image, out, weights, precision, noise, seed, threads)
