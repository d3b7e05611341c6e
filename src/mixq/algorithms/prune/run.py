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
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
from mixq.algorithms.prune.size import sparse_size_bytes
from mixq.algorithms.qat.config import QatConfig
from mixq.algorithms.qat.run import QatResult, train_qat
from mixq.algorithms.qat.trainer import CheckpointHook, accuracy, dist_info, fit
from mixq.io import atomic_write_bytes, atomic_write_json
from mixq.plan import QuantPlan

METHODS = ("magnitude", "channel")


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
        if self.finetune_epochs < 0 or self.finetune_lr <= 0:
            raise PruneError("PruneConfig.finetune_epochs / finetune_lr: must be >= 0 / > 0")
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
    buf = io.BytesIO()
    torch.save({k: v.detach().contiguous() for k, v in obj.items()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:
        raise PruneError(f"{path}: not a readable tensor file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise PruneError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def prune_and_quantize(model: nn.Module, plan: QuantPlan, train: tuple[torch.Tensor, torch.Tensor],
                       cfg: PruneConfig, qat_cfg: QatConfig, out_dir: str | Path, *,
                       val: tuple[torch.Tensor, torch.Tensor] | None = None, resume: bool = False,
                       on_checkpoint: CheckpointHook | None = None, fill: float = 0.0) -> PruneResult:
    """Prune ``model``, fine-tune it, fit focused formats, run QAT; everything in ``out_dir``."""
    out = Path(out_dir)
    rank, _ = dist_info()
    ft_dir = out / "finetune"
    if not resume and (ft_dir / "checkpoint.pt").exists():
        raise PruneError(f"{ft_dir / 'checkpoint.pt'}: a checkpoint exists; resume it or choose another folder")
    masks = make_masks(model, cfg)
    if rank == 0:
        _save_tensors(out / "masks.pt", masks)
    pruned = apply_masks(model, masks)
    summary: dict[str, Any] = {"prune": dataclasses.asdict(cfg), "sparsity": sparsity_of(masks)}
    if val is not None:
        summary["pruned_accuracy_before_finetune"] = accuracy(pruned, *val)
    ft_model_path = ft_dir / "model.pt"
    if resume and ft_model_path.is_file():
        pruned.load_state_dict(_load_tensors(ft_model_path), strict=True)
    elif cfg.finetune_epochs > 0:
        ft_cfg = dataclasses.replace(qat_cfg, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, kd_alpha=0.0,
                                     grad_bits=None, scale_lr=None, min_lr=0.0)
        res = fit(pruned.train(), *train, ft_cfg, ft_dir / "checkpoint.pt", masks=param_masks(pruned, masks),
                  val=val, resume=resume, on_checkpoint=on_checkpoint, fill=fill, desc="finetune")
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
    qres = train_qat(pruned, qplan, train, qat_cfg, out / "qat", val=val, masks=masks, resume=resume,
                     on_checkpoint=on_checkpoint, fill=fill)
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
    return PruneResult(model=qres.model, plan=qres.plan, masks=masks, summary=summary, qat=qres)
