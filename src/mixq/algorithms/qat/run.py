"""`train_qat`: fine-tune a model quantized from a `QuantPlan`, end to end, resumable.

    plan = low_bit_plan("cnv", model, sample, parse_format("fixed4n"), parse_format("ufixed4"))
    res = train_qat(model, plan, (x_train, y_train), QatConfig(epochs=3, kd_alpha=0.5), "runs/w4a4",
                    val=(x_test, y_test))
    res.model        # plain QConv2d/QLinear/QAct model: what the integer engine reads
    res.paths        # plan.json, model.pt, result.json (+ checkpoint.pt)

Re-running with ``resume=True`` after the process died continues from the
last checkpoint and ends with the same weights as an uninterrupted run; a
resume with another config, plan or training data is refused (`QatError`
naming what differs). A NaN/Inf in the float model, the loss or the weights
stops the run with `NumericError`, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.qat.config import QatConfig, QatError
from mixq.algorithms.qat.modules import export_plain, qat_layers
from mixq.algorithms.qat.prepare import prepare_qat
from mixq.algorithms.qat.result import CHECKPOINT_FILE, save_result
from mixq.algorithms.qat.trainer import fit
from mixq.errors import NumericError
from mixq.nn.size import sparse_size_bytes
from mixq.plan import QuantPlan
from mixq.training import CheckpointHook, accuracy, dist_info, nonfinite_tensors


@dataclass
class QatResult:
    """The trained plain quantized model, its plan, a JSON-ready summary and the files written."""

    model: nn.Module
    plan: QuantPlan
    summary: dict[str, Any]
    paths: dict[str, Path]


def _param_masks(qmodel: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter masks for training: each layer's weight mask, plus its bias (or BN) on dead rows.

    A row whose weights are all pruned and whose bias is exactly zero (a pruned
    channel, :func:`mixq.algorithms.prune.channel_masks`) stays exactly zero.
    """
    out: dict[str, torch.Tensor] = {}
    layers = dict(qat_layers(qmodel))
    for name, mask in masks.items():
        out[f"{name}.weight"] = mask
        layer = layers.get(name)
        if layer is None:
            continue
        dead = mask.reshape(mask.shape[0], -1).sum(dim=1) == 0
        if not bool(dead.any()):
            continue
        keep = (~dead).to(mask.dtype)
        if layer.bn is not None:
            if layer.bn.weight is not None and bool((layer.bn.weight.detach()[dead] == 0).all()) \
                    and layer.bn.bias is not None and bool((layer.bn.bias.detach()[dead] == 0).all()):
                out[f"{name}.bn.weight"] = keep
                out[f"{name}.bn.bias"] = keep
        elif layer.bias is not None and bool((layer.bias.detach()[dead] == 0).all()):
            out[f"{name}.bias"] = keep
    return out


def train_qat(model: nn.Module, plan: QuantPlan, train: tuple[torch.Tensor, torch.Tensor], cfg: QatConfig,
              out_dir: str | Path, *, val: tuple[torch.Tensor, torch.Tensor] | None = None,
              calib: torch.Tensor | None = None, masks: Mapping[str, torch.Tensor] | None = None,
              teacher: nn.Module | None = None, resume: bool = False, on_checkpoint: CheckpointHook | None = None,
              fill: float = 0.0, extra_summary: dict[str, Any] | None = None,
              data_meta: dict[str, Any] | None = None) -> QatResult:
    """Quantization-aware training of the float ``model`` under ``plan``; results in ``out_dir``.

    ``train`` / ``val`` are (float inputs, int64 labels); ``calib`` (default: the
    first ``cfg.calib_images`` training inputs) initialises the scales; ``masks``
    (layer -> 0/1 weight mask) keeps pruned weights at zero; ``teacher`` defaults
    to the float ``model`` itself when ``cfg.kd_alpha > 0``. A fresh run refuses
    to overwrite an existing checkpoint unless ``resume`` is given; ``data_meta``
    (JSON values, e.g. ``{"dataset": "fmnist"}``) is recorded in the checkpoint
    with a fingerprint of ``train`` and must match on resume, as must ``plan``.
    A float ``model`` holding NaN/Inf raises `NumericError` before anything runs.
    """
    out = Path(out_dir)
    ckpt = out / CHECKPOINT_FILE
    rank, world = dist_info()
    if ckpt.exists() and not resume:
        raise QatError(f"{ckpt}: a checkpoint exists; resume it (--resume) or choose another output folder")
    x, y = train
    if x.shape[0] != y.shape[0]:
        raise QatError(f"train: {x.shape[0]} inputs but {y.shape[0]} labels")
    bad = nonfinite_tensors(model)
    if bad:
        raise NumericError(f"qat run in {out}: the float model's {bad[0]} holds NaN/Inf; nothing was trained "
                           f"or written{' (the checkpoint ' + str(ckpt) + ' is kept)' if ckpt.exists() else ''}")
    report = cfg.progress and rank == 0
    if report:
        progress.log("qat prepare", out=str(out), layers=len(plan.layers), train_samples=int(x.shape[0]))
    calib_x = calib if calib is not None else x[: cfg.calib_images]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        qmodel = prepare_qat(model, plan, calib_x, cfg, masks)
    if cfg.kd_alpha > 0 and teacher is None:
        teacher = copy.deepcopy(model).eval()
    fit_masks = _param_masks(qmodel, masks or {})
    res = fit(qmodel, x, y, cfg, ckpt, teacher=teacher, masks=fit_masks, val=val, resume=resume,
              on_checkpoint=on_checkpoint, fill=fill, plan=plan, data_meta=data_meta)
    plain = export_plain(qmodel)
    bad = nonfinite_tensors(plain)
    if bad:
        raise NumericError(f"qat run in {out}: the exported model's {bad[0]} holds NaN/Inf; {out / 'model.pt'} "
                           f"not written (the last good checkpoint is kept at {ckpt})")
    summary: dict[str, Any] = {
        "model": plan.model,
        "config": cfg.to_dict(),
        "train_images": int(x.shape[0]),
        "steps": res.steps,
        "train_time_s": round(res.train_time_s, 2),
        "history": res.history,
        "resumed_from": res.resumed_from,
        "world_size": world,
    }
    size = sparse_size_bytes(plain)
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    summary.update({"size_bytes": size["bytes"], "dense_size_bytes": size["dense_bytes"],
                    "fp32_size_bytes": fp32, "compression": fp32 / max(1, size["bytes"])})
    if val is not None:
        summary["val_accuracy"] = accuracy(plain, *val)
        summary["val_images"] = int(val[0].shape[0])
    summary.update(extra_summary or {})
    out_plan = plan.with_meta(qat={k: summary[k] for k in ("config", "steps", "train_time_s")}
                              | ({"val_accuracy": summary["val_accuracy"]} if val is not None else {}))
    paths: dict[str, Path] = {"checkpoint": ckpt}
    if rank == 0:
        paths.update(save_result(out, plain, out_plan, summary))
    if world > 1:
        torch.distributed.barrier()
    if report:
        progress.log("qat wrote", out=str(out), steps=res.steps,
                     **({"val_accuracy": round(summary["val_accuracy"], 2)} if val is not None else {}))
    return QatResult(model=plain, plan=out_plan, summary=summary, paths=paths)
