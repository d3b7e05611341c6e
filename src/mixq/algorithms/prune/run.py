"""Prune, fine-tune, then quantize the pruned layers with focused formats (QAT): one resumable pipeline.

    res = prune_and_quantize(model, base_plan, (x, y), PruneConfig(sparsity=0.7),
                             QatConfig(epochs=2), "runs/pruned", val=(xv, yv))

Stages, each in its own sub-folder of ``out_dir`` with its own checkpoint:

1. masks (``masks.pt``): magnitude or channel pruning of the float model;
2. ``finetune/``: fine-tuning of the pruned float model (BN in training mode),
   masked weights held at zero; its weights in ``finetune/model.pt``;
3. ``qat/``: the plan's pruned layers get `Focused` formats (or shift formats
   when the fitted mixture is not separated), then QAT with the masks; the
   usual run folder (``plan.json``, ``model.pt``, ``result.json``).

``prune.json`` sums it up: sparsity, the format chosen per layer, accuracy at
every stage, size (bitmap-sparse where smaller) and compression.

``prune_state.json`` records what the run is made of (the `PruneConfig`, the
fine-tuning config and a fingerprint of the training data); ``resume=True``
refuses a run whose settings or data differ, naming the field (a run folder
from before this record is checked by its ``masks.pt`` instead). Each stage
reports a line through :mod:`mixq.progress` (with ``QatConfig.progress``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.prune.focused import focused_plan
from mixq.algorithms.prune.masks import (
    CRITERIA,
    SCOPES,
    PruneError,
    apply_masks,
    channel_masks,
    magnitude_masks,
    param_masks,
    prunable_layers,
    sparsity_of,
)
from mixq.algorithms.qat.config import QatConfig
from mixq.algorithms.qat.run import QatResult, train_qat
from mixq.algorithms.qat.trainer import fit
from mixq.io import atomic_write_json, atomic_write_torch
from mixq.nn.size import sparse_size_bytes
from mixq.plan import QuantPlan
from mixq.training import CheckpointHook, accuracy, data_difference, data_fingerprint, dist_info
from mixq.validate import read_torch

METHODS = ("magnitude", "channel")
STATE_FILE = "prune_state.json"
STATE_FORMAT = "mixq-prune-state"


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how to fine-tune it before focused QAT.

    ``sparsity``: fraction of weights (``magnitude``) or output channels
    (``channel``) removed from every pruned layer (``scope="layer"``) or over all
    of them (``"global"``); ``layers``: which layers (default: all Conv2d/Linear
    but the first and last); ``focused_bits``: bits of the focused formats
    (``None`` keeps the plan's formats for the pruned layers).
    """

    sparsity: float = 0.7
    method: str = "magnitude"
    criterion: str = "l1"
    scope: str = "layer"
    layers: tuple[str, ...] | None = None
    finetune_epochs: int = 2
    finetune_lr: float = 0.001
    focused_bits: int | None = 4
    min_separation: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise PruneError(f"PruneConfig.sparsity: must be in [0, 1), got {self.sparsity!r}")
        if self.method not in METHODS:
            raise PruneError(f"PruneConfig.method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.criterion not in CRITERIA:
            raise PruneError(f"PruneConfig.criterion: {self.criterion!r} is not one of {', '.join(CRITERIA)}")
        if self.scope not in SCOPES:
            raise PruneError(f"PruneConfig.scope: {self.scope!r} is not one of {', '.join(SCOPES)}")
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise PruneError(f"PruneConfig.finetune_epochs: must be an integer >= 0, got {self.finetune_epochs!r}")
        if isinstance(self.finetune_lr, bool) or not isinstance(self.finetune_lr, int | float) \
                or not math.isfinite(self.finetune_lr) or self.finetune_lr <= 0:
            raise PruneError(f"PruneConfig.finetune_lr: must be a finite number > 0, got {self.finetune_lr!r}")
        if self.focused_bits is not None and not 3 <= self.focused_bits <= 8:
            raise PruneError(f"PruneConfig.focused_bits: must be in [3, 8] or null, got {self.focused_bits!r}")


@dataclass
class PruneResult:
    model: nn.Module
    plan: QuantPlan
    masks: dict[str, torch.Tensor]
    summary: dict[str, Any]
    qat: QatResult


def make_masks(model: nn.Module, cfg: PruneConfig) -> dict[str, torch.Tensor]:
    layers = list(cfg.layers) if cfg.layers is not None else prunable_layers(model)
    if cfg.method == "magnitude":
        return magnitude_masks(model, cfg.sparsity, layers, cfg.scope)
    return channel_masks(model, cfg.sparsity, layers, cfg.criterion, cfg.scope)


def _save_tensors(path: Path, obj: dict[str, torch.Tensor]) -> None:
    atomic_write_torch(path, {k: v.detach().contiguous() for k, v in obj.items()})


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    obj = read_torch(path, what="readable tensor file", error=PruneError)
    if not isinstance(obj, dict):
        raise PruneError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _finetune_config(cfg: PruneConfig, qat_cfg: QatConfig) -> QatConfig:
    return dataclasses.replace(qat_cfg, epochs=max(1, cfg.finetune_epochs), lr=cfg.finetune_lr, kd_alpha=0.0,
                               grad_bits=None, scale_lr=None, min_lr=0.0)


def _state(cfg: PruneConfig, ft_cfg: QatConfig, data: dict[str, Any]) -> dict[str, Any]:
    doc = {"format": STATE_FORMAT, "version": 1, "prune": dataclasses.asdict(cfg), "finetune": ft_cfg.to_dict(),
           "data": data}
    return dict(json.loads(json.dumps(doc)))  # tuples -> lists, as read back


def _check_state(out: Path, now: dict[str, Any], masks: dict[str, torch.Tensor]) -> None:
    """Refuse to resume a run made with other settings or data (`PruneError` naming the field)."""
    path = out / STATE_FILE
    if not path.is_file():  # a run folder from before the record: its masks must be this config's
        mpath = out / "masks.pt"
        if mpath.is_file():
            old = _load_tensors(mpath)
            if old.keys() != masks.keys() or any(not torch.equal(old[k], masks[k]) for k in masks):
                raise PruneError(f"{mpath}: the saved masks differ from the masks of this PruneConfig "
                                 "(sparsity, method, criterion, scope or layers changed?); resume with the same "
                                 "settings or start a new run folder")
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PruneError(f"{path}: not a readable prune state ({e})") from e
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise PruneError(f"{path}: not a mixq prune state (field 'format')")
    for k, v in now["prune"].items():
        if saved.get("prune", {}).get(k) != v:
            raise PruneError(f"{path}: the run was made with a different prune config: PruneConfig.{k} "
                             f"(run {saved.get('prune', {}).get(k)!r}, now {v!r}); resume with the same "
                             "settings or start a new run folder")
    now_ft = QatConfig.from_dict(now["finetune"])
    old_ft = QatConfig.from_dict(dict(saved.get("finetune", {})), source=f"{path}: finetune", device=now_ft.device)
    diff = now_ft.trajectory_diff(old_ft)
    if diff:
        k = diff[0]
        raise PruneError(f"{path}: the run was fine-tuned with a different config: {k} (run "
                         f"{old_ft.to_dict()[k]!r}, now {now['finetune'][k]!r}); resume with the same settings or "
                         "start a new run folder")
    what = data_difference(saved.get("data"), now["data"])
    if what is not None:
        raise PruneError(f"{path}: the run was made on different training data, this run has {what}; "
                         "resume with the same data or start a new run folder")


def prune_and_quantize(model: nn.Module, plan: QuantPlan, train: tuple[torch.Tensor, torch.Tensor],
                       cfg: PruneConfig, qat_cfg: QatConfig, out_dir: str | Path, *,
                       val: tuple[torch.Tensor, torch.Tensor] | None = None, resume: bool = False,
                       on_checkpoint: CheckpointHook | None = None, fill: float = 0.0,
                       data_meta: dict[str, Any] | None = None) -> PruneResult:
    """Prune ``model``, fine-tune it, fit focused formats, run QAT; everything in ``out_dir``.

    ``resume=True`` continues a stopped run; one made with another `PruneConfig`, fine-tuning
    config or training data (``train`` and ``data_meta``) raises `PruneError` naming the field.
    """
    out = Path(out_dir)
    rank, _ = dist_info()
    ft_dir = out / "finetune"
    if not resume and (ft_dir / "checkpoint.pt").exists():
        raise PruneError(f"{ft_dir / 'checkpoint.pt'}: a checkpoint exists; resume it or choose another folder")
    report_on = qat_cfg.progress and rank == 0
    ft_cfg = _finetune_config(cfg, qat_cfg)
    state = _state(cfg, ft_cfg, data_fingerprint(*train, data_meta))
    masks = make_masks(model, cfg)
    if resume:
        _check_state(out, state, masks)
    if rank == 0:
        _save_tensors(out / "masks.pt", masks)
        atomic_write_json(out / STATE_FILE, state)
    pruned = apply_masks(model, masks)
    summary: dict[str, Any] = {"prune": dataclasses.asdict(cfg), "sparsity": sparsity_of(masks)}
    if report_on:
        progress.log("prune masks", method=cfg.method, sparsity=round(summary["sparsity"], 4), layers=len(masks))
    if val is not None:
        summary["pruned_accuracy_before_finetune"] = accuracy(pruned, *val)
    ft_model_path = ft_dir / "model.pt"
    if resume and ft_model_path.is_file():
        pruned.load_state_dict(_load_tensors(ft_model_path), strict=True)
        if report_on:
            progress.log("prune finetune", done="earlier", model=str(ft_model_path))
    elif cfg.finetune_epochs > 0:
        if report_on:
            progress.log("prune finetune", epochs=cfg.finetune_epochs, lr=cfg.finetune_lr)
        res = fit(pruned.train(), *train, ft_cfg, ft_dir / "checkpoint.pt", masks=param_masks(pruned, masks),
                  val=val, resume=resume, on_checkpoint=on_checkpoint, fill=fill, desc="prune finetune",
                  data_meta=data_meta)
        summary["finetune"] = {"history": res.history, "train_time_s": round(res.train_time_s, 2)}
        if rank == 0:
            _save_tensors(ft_model_path, pruned.state_dict())
    pruned.eval()
    if val is not None:
        summary["pruned_float_accuracy"] = accuracy(pruned, *val)
    qplan: QuantPlan = plan
    report: dict[str, dict[str, object]] = {}
    if cfg.focused_bits is not None:
        qplan, report = focused_plan(pruned, plan, masks, cfg.focused_bits, cfg.min_separation,
                                     fold=qat_cfg.bn == "fold")
    summary["layers"] = report
    if report_on:
        progress.log("prune qat", epochs=qat_cfg.epochs, focused_layers=len(report))
    qres = train_qat(pruned, qplan, train, qat_cfg, out / "qat", val=val, masks=masks, resume=resume,
                     on_checkpoint=on_checkpoint, fill=fill, data_meta=data_meta)
    size = sparse_size_bytes(qres.model)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    summary.update({
        "val_accuracy": qres.summary.get("val_accuracy"),
        "size_bytes": size["bytes"],
        "dense_size_bytes": size["dense_bytes"],
        "fp32_size_bytes": fp32_bytes,
        "compression": fp32_bytes / max(1, size["bytes"]),
        "train_time_s": round(summary.get("finetune", {}).get("train_time_s", 0.0)
                              + qres.summary["train_time_s"], 2),
    })
    if rank == 0:
        atomic_write_json(out / "prune.json", summary)
    if report_on:
        progress.log("prune wrote", out=str(out), compression=round(summary["compression"], 2),
                     **({"val_accuracy": round(summary["val_accuracy"], 2)}
                        if summary.get("val_accuracy") is not None else {}))
    return PruneResult(model=qres.model, plan=qres.plan, masks=masks, summary=summary, qat=qres)
