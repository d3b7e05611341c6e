"""`mixq qat` and `mixq prune`: thin wrappers over :mod:`mixq.algorithms.qat` and :mod:`mixq.algorithms.prune`.

Both write a run folder (``plan.json`` + ``model.pt`` + ``result.json``, the
plan and state dict that the integer engine and the hardware model read) and
checkpoint as they go; ``--resume`` continues a run that was stopped. Both run
unchanged under ``torchrun`` (``torchrun --nproc_per_node 2 -m mixq.cli qat ...``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

_MODEL = typer.Option("cnv", help="zoo model (28x28 grayscale input)")
_WEIGHTS = typer.Option(None, help="float state dict to start from (default: the zoo's pretrained weights)")
_DATASET = typer.Option("fmnist", help="fmnist or mnist")
_DATA_ROOT = typer.Option(None, help="idx folder of the dataset (default: the Debian / packaged copy)")


def _data(dataset: str, root: Path | None, max_train: int | None, max_test: int | None) -> tuple[Any, ...]:
    from mixq.data import load_fashion_mnist, load_mnist, normalize_gray
    from mixq.errors import DataError

    if dataset not in ("fmnist", "mnist"):
        raise DataError(f"--dataset: {dataset!r} is not fmnist or mnist")
    load = load_fashion_mnist if dataset == "fmnist" else load_mnist
    import torch

    xtr, ytr = load("train", root)
    xte, yte = load("test", root)
    xtr, ytr, xte, yte = xtr[:max_train], ytr[:max_train], xte[:max_test], yte[:max_test]
    return (normalize_gray(xtr), torch.as_tensor(ytr, dtype=torch.int64),
            normalize_gray(xte), torch.as_tensor(yte, dtype=torch.int64))


def _model(name: str, weights: Path | None) -> Any:
    from mixq import zoo
    from mixq.zoo.cnv import load_pretrained

    if weights is not None:
        return load_pretrained(zoo.load(name), weights) if name == "cnv" else _load_state(zoo.load(name), weights)
    return zoo.load(name, pretrained=True)


def _load_state(model: Any, path: Path) -> Any:
    import io

    import torch

    from mixq.errors import ModelError

    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:
        raise ModelError(f"{path}: cannot load the weights into the model ({e})") from e
    return model.eval()


def _fill() -> float:
    from mixq.data import GRAY_MEAN, GRAY_STD

    return -GRAY_MEAN / GRAY_STD


def _qat_config(**kw: Any) -> Any:
    from mixq.algorithms.qat import QatConfig

    return QatConfig(**kw)


def _echo(summary: dict[str, Any], out: Path) -> None:
    keep = {k: summary[k] for k in ("val_accuracy", "size_bytes", "compression", "train_time_s", "steps",
                                    "resumed_from") if k in summary}
    typer.echo(json.dumps(keep, indent=2))
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    @app.command()
    def qat(
        out: Path = typer.Option(Path("runs/qat"), help="run folder (plan.json, model.pt, result.json, checkpoint)"),
        model: str = _MODEL,
        weights: Path | None = _WEIGHTS,
        plan: Path | None = typer.Option(None, help="QuantPlan JSON (default: built from --weight/--act)"),
        weight: str = typer.Option("fixed4n", help="weight format, e.g. fixed4n, sp2_3, binary, ternary"),
        act: str = typer.Option("ufixed4", help="activation format, e.g. ufixed4, ufixed1"),
        weight_alt: str | None = typer.Option(None, help="second row format (MSQ), e.g. sp2_4"),
        alt_ratio: float = typer.Option(0.5, help="fraction of rows in --weight-alt (rows assigned by MSQ)"),
        first_last_bits: int = typer.Option(8, help="bits of the first and last layer (0: same as the others)"),
        dataset: str = _DATASET,
        data_root: Path | None = _DATA_ROOT,
        epochs: int = typer.Option(3, help="training epochs"),
        batch_size: int = typer.Option(128, help="global batch size"),
        lr: float = typer.Option(0.001, help="peak learning rate (cosine; BN folded: far below float training)"),
        optimizer: str = typer.Option("sgd", help="sgd or adam"),
        seed: int = typer.Option(0, help="random seed"),
        weight_quant: str = typer.Option("lsq", help="lsq, ste or dorefa (binary rows: XNOR)"),
        act_quant: str = typer.Option("lsq", help="lsq or dorefa"),
        grad_bits: int | None = typer.Option(None, help="stochastic gradient quantization bits"),
        bn: str = typer.Option("fold", help="fold (before training) or train (fold during training)"),
        kd_alpha: float = typer.Option(0.5, help="weight of distillation from the FP32 model (0: off)"),
        kd_temperature: float = typer.Option(4.0, help="distillation temperature"),
        checkpoint_every: int = typer.Option(100, help="also checkpoint every N steps (0: once per epoch)"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
        max_train: int | None = typer.Option(None, help="use only the first N training images"),
        max_test: int | None = typer.Option(None, help="use only the first N test images"),
        threads: int | None = typer.Option(None, help="torch threads"),
        quiet: bool = typer.Option(False, help="no progress bar"),
    ) -> None:
        """Quantization-aware training of a zoo model under a plan; writes plan.json + model.pt."""
        from mixq.algorithms.qat import init_distributed, low_bit_plan, train_qat
        from mixq.formats import parse_format
        from mixq.plan import load_plan

        init_distributed()
        xtr, ytr, xte, yte = _data(dataset, data_root, max_train, max_test)
        fp = _model(model, weights)
        if plan is not None:
            qplan = load_plan(plan)
        else:
            qplan = low_bit_plan(model, fp, xtr[:64], parse_format(weight), parse_format(act),
                                 weight_alt=parse_format(weight_alt) if weight_alt else None,
                                 alt_ratio=alt_ratio if weight_alt else 0.0,
                                 first_last_bits=first_last_bits or None)
        if any(lp.weight_alt is not None and lp.alt_rows is None for _, lp in qplan.items()):
            from mixq.algorithms.msq import assign_rows

            qplan = assign_rows(fp, qplan)
        cfg = _qat_config(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
                          weight_quant=weight_quant, act_quant=act_quant, grad_bits=grad_bits, bn=bn,
                          kd_alpha=kd_alpha, kd_temperature=kd_temperature, checkpoint_every=checkpoint_every,
                          threads=threads, progress=not quiet)
        res = train_qat(fp, qplan, (xtr, ytr), cfg, out, val=(xte, yte), resume=resume, fill=_fill())
        _echo(res.summary, out)

    @app.command()
    def prune(
        out: Path = typer.Option(Path("runs/prune"), help="run folder"),
        model: str = _MODEL,
        weights: Path | None = _WEIGHTS,
        sparsity: float = typer.Option(0.7, help="fraction of weights (or channels) to remove"),
        method: str = typer.Option("magnitude", help="magnitude or channel"),
        criterion: str = typer.Option("l1", help="channel ranking: l1 or bn_gamma"),
        scope: str = typer.Option("layer", help="layer (same sparsity everywhere) or global"),
        finetune_epochs: int = typer.Option(2, help="float fine-tuning epochs after pruning"),
        finetune_lr: float = typer.Option(0.001, help="fine-tuning learning rate"),
        focused_bits: int = typer.Option(4, help="bits of the focused formats (0: keep --weight)"),
        weight: str = typer.Option("fixed8n", help="weight format of the layers that are not pruned"),
        act: str = typer.Option("ufixed8", help="activation format"),
        dataset: str = _DATASET,
        data_root: Path | None = _DATA_ROOT,
        epochs: int = typer.Option(2, help="QAT epochs after fine-tuning"),
        batch_size: int = typer.Option(128, help="global batch size"),
        lr: float = typer.Option(0.001, help="QAT peak learning rate"),
        seed: int = typer.Option(0, help="random seed"),
        kd_alpha: float = typer.Option(0.5, help="weight of distillation from the FP32 model in QAT"),
        checkpoint_every: int = typer.Option(100, help="also checkpoint every N steps"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
        max_train: int | None = typer.Option(None, help="use only the first N training images"),
        max_test: int | None = typer.Option(None, help="use only the first N test images"),
        threads: int | None = typer.Option(None, help="torch threads"),
        quiet: bool = typer.Option(False, help="no progress bar"),
    ) -> None:
        """Prune, fine-tune and quantize the pruned layers with focused formats (QAT)."""
        from mixq.algorithms.prune import PruneConfig, prune_and_quantize
        from mixq.algorithms.qat import init_distributed, low_bit_plan
        from mixq.formats import parse_format

        init_distributed()
        xtr, ytr, xte, yte = _data(dataset, data_root, max_train, max_test)
        fp = _model(model, weights)
        base = low_bit_plan(model, fp, xtr[:64], parse_format(weight), parse_format(act), first_last_bits=8)
        pcfg = PruneConfig(sparsity=sparsity, method=method, criterion=criterion, scope=scope,
                           finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                           focused_bits=focused_bits or None)
        cfg = _qat_config(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, kd_alpha=kd_alpha,
                          checkpoint_every=checkpoint_every, threads=threads, progress=not quiet)
        res = prune_and_quantize(fp, base, (xtr, ytr), pcfg, cfg, out, val=(xte, yte), resume=resume,
                                 fill=_fill())
        _echo(res.summary, out)
