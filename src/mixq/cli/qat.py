"""`mixq qat` and `mixq prune`: thin wrappers over :mod:`mixq.algorithms.qat` and :mod:`mixq.algorithms.prune`.

Both write a run folder (``plan.json`` + ``model.pt`` + ``result.json``, the
plan and state dict that the integer engine and the hardware model read) and
checkpoint as they go; the folder of ``qat`` and of ``prune`` (not ``--dynamic``) is also a
``mixq quantize`` artifact (``quantized.pt``, ``summary.json``), which ``verify`` / ``export`` /
``estimate`` / ``rtl`` / ``search --from`` read. ``--resume`` continues a run that was stopped. Both run
unchanged under torchrun (``torchrun --nproc_per_node 2 -m mixq.cli qat ...``).
``--device cuda`` trains on a GPU (checked before any work: a machine without one is
one error line); data, calibration and the files written stay on the CPU, and a run
resumes on either device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mixq.cli._common import (
    GRAY,
    INPUT_SHAPE,
    INPUT_SIZE,
    MEAN,
    STD,
    check_device,
    choice,
    count,
    device_option,
    emit,
    formats,
    model_source,
    out_dir,
    real,
    set_resume_hint,
)

_MODEL = typer.Option("cnv", help="model: a zoo name, a model file (.onnx, TorchScript .pt/.ts, .pt2) or a "
                                   "builder FILE.py:FUNCTION / package.module:FUNCTION")
_WEIGHTS = typer.Option(None, help="float state dict loaded strictly into the model (default: a zoo model's "
                                   "pretrained weights, a builder's or file's own)")
_DATASET = typer.Option("fmnist", help="training data: fmnist, mnist (28x28 gray), a folder of class subfolders "
                                       "(images) or an .npz of inputs 'x' and integer labels 'y'")
_TEST_DATA = typer.Option(None, "--test-data", help="test data of the same kinds (default: fmnist / mnist's test "
                                                     "split; else a seeded tenth of --dataset held out)")
_DATA_ROOT = typer.Option(None, help="idx folder of fmnist / mnist (default: the Debian / packaged copy)")
_EPOCHS = count(3, "training epochs")
_BATCH = count(128, "global batch size", 2)
_LR = real(0.001, "peak learning rate (cosine; BN folded: far below float training)", 0.0, 10.0)
_SEED = count(0, "random seed", 0)
_KD = real(0.5, "weight of distillation from the FP32 model (0: off)", 0.0, 1.0, low_open=False)
_CKPT = count(100, "also checkpoint every N steps (0: once per epoch)", 0)
_RESUME = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint")
_MAX_TRAIN = count(None, "use only the first N training images")
_MAX_TEST = count(None, "use only the first N test images")
_THREADS = count(None, "torch threads")
#: Test images ``prune --dynamic`` runs its quantized model on in the integer engine.
ENGINE_IMAGES = 256
_DEVICE = device_option(help="where the model trains: cpu, cuda or cuda:N (data, calibration and the written model "
                      "stay on the CPU)")


def _qat_config(**kw: Any) -> Any:
    from mixq.algorithms.qat import QatConfig

    return QatConfig(**kw)


def _echo(summary: dict[str, Any], out: Path) -> None:
    fields = ("val_accuracy", "size_bytes", "compression", "train_time_s", "steps", "resumed_from")
    keep: dict[str, Any] = {k: summary[k] for k in fields if k in summary}
    emit({"out": str(out), **keep}, [json.dumps(keep, indent=2), f"wrote {out}"])


#: the file that shows a run folder holds a run to resume
_RUN_MARK = {"qat": "checkpoint.pt", "prune": "masks.pt"}


def _start(command: str, out: Path | None, model: str, weights: Path | None, input_shape: Any, resume: bool,
           device: str = "cpu") -> tuple[Path, Any]:
    """Checks before any work (the model source, ``--device`` one this machine has); the run folder, named if
    the run is interrupted, and the model's source."""
    from mixq.errors import OptionError

    src = model_source(model, None if weights is None else str(weights), input_shape)
    check_device(device)
    folder = out_dir(out, command, src.name)
    if resume and not (folder / _RUN_MARK[command]).is_file():
        raise OptionError(f"--resume: {folder} holds no {command} run to resume (no {_RUN_MARK[command]}); "
                          "drop --resume to start one")
    set_resume_hint(f"continue with: mixq {command} --out {folder} --resume (same options)")
    return folder, src


def register(app: typer.Typer) -> None:
    @app.command()
    def qat(
        out: Path | None = typer.Option(None, help="run folder (plan.json, model.pt, result.json, checkpoint; "
                                                   "default runs/qat-MODEL)"),
        resume: bool = _RESUME,
        model: str = _MODEL,
        weights: Path | None = _WEIGHTS,
        input_shape: str | None = INPUT_SHAPE,
        plan: Path | None = typer.Option(None, help="QuantPlan JSON (default: built from --weight/--act)"),
        weight: str = typer.Option("fixed4n", help="weight format, e.g. fixed4n, sp2_3, binary, ternary"),
        act: str = typer.Option("ufixed4", help="activation format, e.g. ufixed4, ufixed1"),
        weight_alt: str | None = typer.Option(None, help="second row format (MSQ), e.g. sp2_4"),
        alt_ratio: float = real(0.5, "fraction of rows in --weight-alt (rows assigned by MSQ)", 0.0, 1.0,
                                low_open=False),
        first_last_bits: int = count(8, "bits of the first and last layer (0: same as the others)", 0),
        residual_bits: int | None = count(None, "train every residual add's output and operands as codes of this "
                                          "many bits (2..16; needs --bn fold)", 2, "--residual-bits", maximum=16),
        dataset: str = _DATASET,
        test_data: str | None = _TEST_DATA,
        data_root: Path | None = _DATA_ROOT,
        input_size: str | None = INPUT_SIZE,
        mean: str | None = MEAN,
        std: str | None = STD,
        gray: bool | None = GRAY,
        epochs: int = _EPOCHS,
        batch_size: int = _BATCH,
        lr: float = _LR,
        optimizer: str = choice("sgd", "optimizer", ("sgd", "adam")),
        seed: int = _SEED,
        weight_quant: str = choice("lsq", "weight quantizer (binary rows: XNOR)", ("lsq", "ste", "dorefa")),
        act_quant: str = choice("lsq", "activation quantizer", ("lsq", "dorefa")),
        grad_bits: int | None = count(None, "stochastic gradient quantization bits", 2),
        bn: str = choice("fold", "BatchNorm: fold before training, or fold during training", ("fold", "train")),
        kd_alpha: float = _KD,
        kd_temperature: float = real(4.0, "distillation temperature"),
        checkpoint_every: int = _CKPT,
        max_train: int | None = _MAX_TRAIN,
        max_test: int | None = _MAX_TEST,
        threads: int | None = _THREADS,
        device: str = _DEVICE,
    ) -> None:
        """Quantization-aware training of MODEL (zoo, file or builder) under a plan; writes plan.json + model.pt."""
        from mixq.algorithms.qat import train_qat
        from mixq.tasks.training import ImageOptions, qat_plan, run_inputs, save_run_artifact

        folder, src = _start("qat", out, model, weights, input_shape, resume, device)
        fmts = formats(weight=weight, act=act, weight_alt=weight_alt)
        ri = run_inputs(src, dataset, data_root, max_train, max_test, test_data,
                        ImageOptions(input_size, mean, std, gray))  # type: ignore[arg-type]
        qplan = qat_plan(src.name, ri.model, ri.train[0][:64], plan, fmts["weight"], fmts["act"], fmts["weight_alt"],
                         alt_ratio, first_last_bits or None)
        if residual_bits is not None:
            import dataclasses

            qplan = dataclasses.replace(qplan, residual_bits=residual_bits)
        cfg = _qat_config(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
                          weight_quant=weight_quant, act_quant=act_quant, grad_bits=grad_bits, bn=bn,
                          kd_alpha=kd_alpha, kd_temperature=kd_temperature, checkpoint_every=checkpoint_every,
                          threads=threads, device=device)
        res = train_qat(ri.model, qplan, ri.train, cfg, folder, val=ri.test, resume=resume, fill=ri.fill)
        save_run_artifact(folder, ri, res)
        _echo(res.summary, folder)

    @app.command()
    def prune(
        out: Path | None = typer.Option(None, help="run folder (default runs/prune-MODEL)"),
        resume: bool = _RESUME,
        model: str = _MODEL,
        weights: Path | None = _WEIGHTS,
        input_shape: str | None = INPUT_SHAPE,
        sparsity: float = real(0.7, "fraction of weights (or channels) to remove", 0.0, 1.0, low_open=False,
                               high_open=True),
        method: str = choice("magnitude", "pruning method", ("magnitude", "channel")),
        criterion: str = choice("l1", "channel ranking", ("l1", "bn_gamma")),
        scope: str = choice("layer", "same sparsity in every layer, or one global threshold", ("layer", "global")),
        finetune_epochs: int = count(2, "float fine-tuning epochs after pruning", 0),
        finetune_lr: float = real(0.001, "fine-tuning learning rate", 0.0, 10.0),
        focused_bits: int = count(4, "bits of the focused formats (0: keep --weight)", 0),
        weight: str = typer.Option("fixed8n", help="weight format of the layers that are not pruned"),
        act: str = typer.Option("ufixed8", help="activation format"),
        dataset: str = _DATASET,
        test_data: str | None = _TEST_DATA,
        data_root: Path | None = _DATA_ROOT,
        input_size: str | None = INPUT_SIZE,
        mean: str | None = MEAN,
        std: str | None = STD,
        gray: bool | None = GRAY,
        epochs: int = count(2, "QAT epochs after fine-tuning"),
        batch_size: int = _BATCH,
        lr: float = _LR,
        seed: int = _SEED,
        kd_alpha: float = _KD,
        checkpoint_every: int = _CKPT,
        max_train: int | None = _MAX_TRAIN,
        max_test: int | None = _MAX_TEST,
        threads: int | None = _THREADS,
        device: str = _DEVICE,
        dynamic: bool = typer.Option(False, "--dynamic", help="dynamic channel pruning (FBS): gate every conv per "
                                     "input instead; --finetune-* train it with KD, then QAT at --weight/--act"),
        density: float = real(0.7, "--dynamic: fraction of output channels each conv computes per input", 0.0, 1.0),
        mac_budget: float = real(0.0, "--dynamic: choose each conv's density for this fraction of the convs' "
                                 "dense MACs (0: --density everywhere)", 0.0, 1.0, low_open=False),
        fps_budget: float = real(0.0, "--dynamic: choose each conv's density so the layer-sequential overlay on "
                                 "--part runs at least this many frames/s (0: off)", 0.0, low_open=False),
        part: str = typer.Option("xc7z020", help="--fps-budget: the FPGA part (see mixq.hw.parts)"),
        adaptive: bool = typer.Option(False, "--adaptive", help="--dynamic: each input keeps its own number of "
                                      "channels (those whose saliency reaches the layer's threshold), the density "
                                      "holding on average"),
    ) -> None:
        """Prune, fine-tune and quantize the pruned layers with focused formats (QAT); or, with --dynamic,
        convert to FBS (per-input channel gating), fine-tune with KD and quantize (QAT)."""
        from mixq.algorithms.prune import PruneConfig, prune_and_quantize
        from mixq.errors import OptionError
        from mixq.tasks.training import ImageOptions, qat_plan, run_inputs, save_run_artifact

        if dynamic and resume:
            raise OptionError("--resume: a --dynamic run does not resume; start it again")
        for flag, on in (("--adaptive", adaptive), ("--fps-budget", fps_budget > 0), ("--mac-budget", mac_budget > 0)):
            if on and not dynamic:
                raise OptionError(f"{flag}: applies to --dynamic (FBS) only")
        if fps_budget > 0 and mac_budget > 0:
            raise OptionError("--fps-budget: give either --fps-budget or --mac-budget, not both")
        if fps_budget > 0:
            from mixq.hw import get_part

            get_part(part)  # an unknown part: one line naming it, before any training
        folder, src = _start("prune", out, model, weights, input_shape, resume, device)
        fmts = formats(weight=weight, act=act)
        ri = run_inputs(src, dataset, data_root, max_train, max_test, test_data,
                        ImageOptions(input_size, mean, std, gray))  # type: ignore[arg-type]
        fp, train, test, name = ri.model, ri.train, ri.test, src.name
        if dynamic:
            from mixq.algorithms.prune.fbs import FbsConfig, fbs_and_quantize
            from mixq.training import TrainConfig

            ft = TrainConfig(epochs=finetune_epochs, lr=finetune_lr, kd_alpha=kd_alpha, batch_size=batch_size,
                             seed=seed, threads=threads, device=device)
            qcfg = _qat_config(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, kd_alpha=kd_alpha,
                               threads=threads, device=device) if epochs > 0 else None
            fcfg = FbsConfig(density=density, train=ft, adaptive=adaptive)
            chosen = None
            if mac_budget > 0:
                from mixq.algorithms.prune.fbs_budget import budget_config

                fcfg, chosen = budget_config(fp, train[0][:256], mac_budget, fcfg)
            elif fps_budget > 0:
                from mixq.algorithms.prune.fbs_budget import fps_config

                dense_plan = qat_plan(name, fp, train[0][:64], None, fmts["weight"], fmts["act"])
                fcfg, chosen = fps_config(fp, train[0][:256], fps_budget, fcfg, dense_plan, part)
            summary, final = fbs_and_quantize(fp, lambda m: qat_plan(name, m, train[0][:64], None,
                                                                     fmts["weight"], fmts["act"]),
                                              train, fcfg, qcfg, folder, val=test, fill=ri.fill)
            if chosen is not None:
                key, head = (("mac_budget", {"fraction": mac_budget, "budget_macs": chosen.budget_macs})
                             if mac_budget > 0 else ("fps_budget", {"fps": fps_budget, "part": part,
                                                                    "overlay_fps_at_most_inputs": chosen.fps}))
                summary[key] = {**head, "chosen_macs": chosen.cost_macs, "grid": list(chosen.grid),
                                "sensitivity": {k: list(v) for k, v in chosen.sensitivity.items()}}
            if qcfg is not None:  # the quantized model in the integer engine: outputs and channel decisions
                from mixq.engine.verify_fbs import verify_fbs

                summary["engine"] = verify_fbs(final, test[0][:ENGINE_IMAGES])
            from mixq.io import atomic_write_json

            atomic_write_json(folder / "fbs.json", summary)
            _echo({**summary, "train_time_s": summary.get("qat_train_time_s")}, folder)
            eng = summary.get("engine")
            if eng is not None and not eng["exact"]:
                from mixq.errors import CheckFailed

                raise CheckFailed(f"{folder / 'fbs.json'}: the integer engine differs from the hardware-faithful "
                                  f"FBS model on {eng['images']} test images (outputs bit-exact: "
                                  f"{eng['outputs_bit_exact']}, channel decisions equal: "
                                  f"{eng['decisions_equal_faithful']})")
            return
        base = qat_plan(name, fp, train[0][:64], None, fmts["weight"], fmts["act"])
        pcfg = PruneConfig(sparsity=sparsity, method=method, criterion=criterion, scope=scope,
                           finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                           focused_bits=focused_bits or None)
        cfg = _qat_config(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, kd_alpha=kd_alpha,
                          checkpoint_every=checkpoint_every, threads=threads, device=device)
        res = prune_and_quantize(fp, base, train, pcfg, cfg, folder, val=test, resume=resume,
                                 fill=ri.fill)
        save_run_artifact(folder, ri, res.qat, "prune")
        _echo(res.summary, folder)
