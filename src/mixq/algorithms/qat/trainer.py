"""The training loop shared by QAT and pruned fine-tuning: exact resume, DDP, progress.

Determinism: the data order of epoch ``e`` is a permutation drawn from a
generator seeded with ``(seed, e)``; augmentation and gradient-quantization
noise of step ``s`` come from generators seeded with ``(seed, e, s, rank)``.
So the position alone fixes every random draw still to come, and a run resumed
from any checkpoint (written every ``checkpoint_every`` steps and at the end
of every epoch) reaches the same weights, bit for bit, as a run that never
stopped (same thread count and torch build).

Data parallel: when ``torch.distributed`` is initialised (``torchrun``), the
model is wrapped in ``DistributedDataParallel``; every global batch of
``batch_size`` images is split across the processes by stride, gradients are
averaged, rank 0 writes the checkpoints and every rank resumes from them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.qat.checkpoint import (
    Position,
    check_compatible,
    check_lineage,
    data_fingerprint,
    load_model_state,
    nonfinite_tensors,
    plan_record,
    read_checkpoint,
    restore_position,
    save_checkpoint,
    set_rng_state,
)
from mixq.algorithms.qat.config import QatConfig, QatError
from mixq.algorithms.qat.functional import augment_shift_flip, cosine_lr, kd_loss
from mixq.algorithms.qat.modules import set_channels_last, set_grad_quant
from mixq.errors import NumericError
from mixq.modes import eval_mode
from mixq.plan import QuantPlan
from mixq.zoo.train import torch_settings

CheckpointHook = Callable[[Position], None]


@dataclass(frozen=True)
class CosineSchedule:
    """Picklable LR multiplier for ``LambdaLR``: warm-up then cosine decay to ``floor`` (a fraction)."""

    total: int
    warmup: int
    floor: float

    def __call__(self, step: int) -> float:
        return cosine_lr(step, self.total, 1.0, self.warmup, self.floor)


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Initialise the default process group from ``torchrun``'s environment (gloo on CPU). True if distributed."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return True


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 steps; stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation of ``range(n)`` fixed by ``(seed, epoch)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, epoch)))


def make_optimizer(model: nn.Module, cfg: QatConfig) -> torch.optim.Optimizer:
    """Weights (decayed), other parameters (no decay) and quantizer steps (``scale_lr``, no decay)."""
    steps, decay, other = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(("w_log_step", "log_scale")):
            steps.append(p)
        elif p.ndim > 1:
            decay.append(p)
        else:
            other.append(p)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.weight_decay},
                                    {"params": other, "weight_decay": 0.0}]
    if steps:
        groups.append({"params": steps, "weight_decay": 0.0, "lr": cfg.scale_lr or cfg.lr})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent (eval mode; the mode is restored)."""
    correct = 0
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return 100.0 * correct / max(1, x.shape[0])


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    train_time_s: float
    steps: int
    resumed_from: dict[str, int] | None


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: QatConfig, checkpoint: Path, *,
        teacher: nn.Module | None = None, masks: Mapping[str, torch.Tensor] | None = None,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, resume: bool = False,
        on_checkpoint: CheckpointHook | None = None, fill: float = 0.0, desc: str = "qat",
        plan: QuantPlan | None = None, data_meta: dict[str, Any] | None = None) -> FitResult:
    """Train ``model`` in place on ``(x, y)`` for ``cfg.epochs``, checkpointing to ``checkpoint``.

    ``masks`` maps parameter names to 0/1 tensors: masked gradients and weights
    are zeroed around every step (pruned fine-tuning). ``teacher`` (eval mode)
    provides distillation targets when ``cfg.kd_alpha > 0``. With ``resume`` and
    an existing checkpoint the run continues from it; a checkpoint of a run
    with another trajectory, another ``plan`` (the plan ``model`` was prepared
    for) or other training data (``x``, ``y`` and ``data_meta``, see
    :func:`~mixq.algorithms.qat.checkpoint.data_fingerprint`) raises `QatError`.
    ``fill`` is the input value of the border pixels that shift augmentation
    brings in.

    A non-finite loss (before the optimizer step) or non-finite weights (before a
    checkpoint is written) stop the run with `NumericError`; the last checkpoint
    written stays as it was. Progress (``cfg.progress``, rank 0): a task ``desc``
    advancing per step with the running loss, and a line per epoch.
    """
    rank, world = dist_info()
    n = int(x.shape[0])
    if n < cfg.batch_size:
        raise QatError(f"QatConfig.batch_size: {cfg.batch_size} is larger than the {n} training samples")
    if cfg.batch_size % world or cfg.batch_size // world < 2:
        raise QatError(f"QatConfig.batch_size: {cfg.batch_size} does not split into >= 2 samples "
                       f"on each of {world} processes")
    if cfg.kd_alpha > 0 and teacher is None:
        raise QatError("QatConfig.kd_alpha: distillation needs a teacher model")
    steps_per_epoch = n // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    params = dict(model.named_parameters())
    mask_params = {}
    for pname, m in (masks or {}).items():
        if pname not in params or tuple(params[pname].shape) != tuple(m.shape):
            raise QatError(f"masks: {pname!r} is not a parameter of the model with shape {tuple(m.shape)}")
        mask_params[pname] = (params[pname], m.to(params[pname].dtype))
    plan_rec = plan_record(plan) if plan is not None else None
    data_rec = data_fingerprint(x, y, data_meta)
    report = cfg.progress and rank == 0
    run = f"{desc} run in {checkpoint.parent}"

    with torch_settings(cfg.threads, cfg.deterministic):
        torch.manual_seed(cfg.seed)
        opt = make_optimizer(model, cfg)
        floor = cfg.min_lr / cfg.lr
        sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineSchedule(total, cfg.warmup_steps, floor))
        pos = Position()
        resumed_from = None
        last_good = "no checkpoint was written yet"
        if resume and checkpoint.is_file():
            obj = read_checkpoint(checkpoint)
            check_compatible(checkpoint, obj, cfg, world)
            load_model_state(checkpoint, model, obj["model"])
            check_lineage(checkpoint, obj, plan=plan_rec, data=data_rec)
            try:
                opt.load_state_dict(obj["optimizer"])
                sched.load_state_dict(obj["scheduler"])
            except (ValueError, KeyError) as e:
                raise QatError(f"{checkpoint}: optimizer state does not match the model ({e})") from e
            pos = restore_position(obj)
            set_rng_state(obj["rng"])
            resumed_from = {"epoch": pos.epoch, "step": pos.step, "global_step": pos.global_step}
            last_good = f"the last good checkpoint is kept at {checkpoint} ({_where(pos, cfg, steps_per_epoch)})"
            if report:
                progress.log(f"{desc} resumed", checkpoint=str(checkpoint), epoch=pos.epoch, step=pos.step,
                             global_step=pos.global_step)
        net: nn.Module = model
        if teacher is not None and cfg.channels_last and x.dim() == 4:
            teacher = copy.deepcopy(teacher).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if world > 1:
            net = nn.parallel.DistributedDataParallel(model)
        grad_gen = torch.Generator()
        set_grad_quant(model, cfg.grad_bits, grad_gen if cfg.grad_bits else None)
        set_channels_last(model, cfg.channels_last and x.dim() == 4)
        _params_memory_format(model, torch.channels_last if cfg.channels_last and x.dim() == 4
                              else torch.contiguous_format)

        def save() -> None:
            nonlocal last_good
            bad = nonfinite_tensors(model)
            if bad:
                raise NumericError(f"{run}: {bad[0]} holds NaN/Inf at {_where(pos, cfg, steps_per_epoch)}; "
                                   f"not saved, {last_good} (lower the learning rate?)")
            if rank == 0:
                save_checkpoint(checkpoint, cfg=cfg, model=model, optimizer=opt, scheduler=sched, pos=pos,
                                world_size=world, plan=plan_rec, data=data_rec)
            if world > 1:
                torch.distributed.barrier()
            last_good = f"the last good checkpoint is kept at {checkpoint} ({_where(pos, cfg, steps_per_epoch)})"
            if on_checkpoint is not None and rank == 0:
                on_checkpoint(pos)

        t_last = time.perf_counter()
        try:
            with progress.task(desc, total=total, done=pos.global_step, enabled=report) as bar:
                while pos.epoch < cfg.epochs:
                    model.train()
                    if teacher is not None:
                        teacher.eval()
                    order = epoch_order(cfg.seed, pos.epoch, n)
                    while pos.step < steps_per_epoch:
                        idx = order[pos.step * cfg.batch_size : (pos.step + 1) * cfg.batch_size][rank::world]
                        xb, yb = x[idx], y[idx]
                        gen = torch.Generator().manual_seed(_seed(cfg.seed, pos.epoch, pos.step, rank))
                        if cfg.augment:
                            xb = augment_shift_flip(xb, gen, fill=fill)
                        if cfg.channels_last and xb.dim() == 4:
                            xb = xb.contiguous(memory_format=torch.channels_last)
                        grad_gen.manual_seed(_seed(cfg.seed, pos.epoch, pos.step, rank, 1))
                        out = net(xb)
                        t_out = None
                        if teacher is not None and cfg.kd_alpha > 0:
                            with torch.no_grad():
                                t_out = teacher(xb)
                        loss = kd_loss(out, t_out if t_out is not None else out, yb, cfg.kd_alpha,
                                       cfg.kd_temperature)
                        value = float(loss.detach())
                        if not _all_finite(value, world):
                            raise NumericError(
                                f"{run}: the training loss is {value} at {_where(pos, cfg, steps_per_epoch, 1)}; "
                                f"stopped before the optimizer step, {last_good} "
                                "(lower the learning rate, or check the model and data for NaN/Inf)")
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        for p, m in mask_params.values():
                            if p.grad is not None:
                                p.grad.mul_(m)
                        opt.step()
                        sched.step()
                        with torch.no_grad():
                            for p, m in mask_params.values():
                                p.mul_(m)
                        pos.step += 1
                        pos.global_step += 1
                        pos.loss_sum += value * len(idx)
                        pos.seen += len(idx)
                        now = time.perf_counter()
                        pos.train_time_s += now - t_last
                        t_last = now
                        bar.advance(epoch=f"{pos.epoch + 1}/{cfg.epochs}",
                                    loss=round(pos.loss_sum / max(1, pos.seen), 4))
                        if cfg.checkpoint_every and pos.global_step % cfg.checkpoint_every == 0 \
                                and pos.step < steps_per_epoch:
                            save()
                            t_last = time.perf_counter()
                    record: dict[str, Any] = {"epoch": pos.epoch + 1,
                                              "train_loss": pos.loss_sum / max(1, pos.seen),
                                              "lr": float(sched.get_last_lr()[0]),
                                              "train_time_s": round(pos.train_time_s, 2)}
                    if val is not None and cfg.eval_every_epoch:
                        record["val_accuracy"] = accuracy(model, *val)
                    pos.history.append(record)
                    pos.epoch += 1
                    pos.step, pos.loss_sum, pos.seen = 0, 0.0, 0
                    save()
                    if report:
                        progress.log(f"{desc} epoch", epoch=f"{record['epoch']}/{cfg.epochs}",
                                     loss=round(record["train_loss"], 4),
                                     **({"val_accuracy": round(record["val_accuracy"], 2)}
                                        if "val_accuracy" in record else {}))
                    t_last = time.perf_counter()
        finally:
            set_grad_quant(model, None, None)
            set_channels_last(model, False)
            _params_memory_format(model, torch.contiguous_format)
        model.eval()
    return FitResult(history=pos.history, train_time_s=pos.train_time_s, steps=pos.global_step,
                     resumed_from=resumed_from)


def _where(pos: Position, cfg: QatConfig, steps_per_epoch: int, ahead: int = 0) -> str:
    """``epoch e/E, step s/S, global step g`` (1-based) of the position (``ahead``: steps past it)."""
    if pos.step == 0 and pos.epoch > 0 and not ahead:
        return f"the end of epoch {pos.epoch}/{cfg.epochs}, global step {pos.global_step}"
    return (f"epoch {pos.epoch + 1}/{cfg.epochs}, step {pos.step + ahead}/{steps_per_epoch}, "
            f"global step {pos.global_step + ahead}")


def _all_finite(value: float, world: int) -> bool:
    """Whether the loss is finite on every process (one all-reduce under DDP, so all stop together)."""
    ok = math.isfinite(value)
    if world > 1:
        flag = torch.tensor([0.0 if ok else 1.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        ok = float(flag) == 0.0
    return ok


@torch.no_grad()
def _params_memory_format(model: nn.Module, fmt: torch.memory_format) -> None:
    """Store every 4-D parameter (conv weights) in ``fmt`` (values unchanged)."""
    for p in model.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=fmt)
