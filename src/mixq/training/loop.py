"""The one training loop of mixq: zoo models from scratch, QAT, pruned fine-tuning.

Determinism (``TrainConfig.order``): in a ``seeded`` run the data order of epoch
``e`` is a permutation drawn from a generator seeded with ``(seed, e)``, and the
augmentation (and the caller's ``before_step`` draws, e.g. gradient-quantization
noise) of step ``s`` come from generators seeded with ``(seed, e, s, rank)``. So the
position alone fixes every random draw still to come, and a run resumed from any
checkpoint (written every ``checkpoint_every`` steps and at the end of every epoch)
reaches the same weights, bit for bit, as a run that never stopped (same thread
count and torch build). A ``stream`` run draws everything from one generator
seeded once (the zoo recipe): reproducible from the start, not resumable.

Data parallel: when ``torch.distributed`` is initialised (``torchrun``), the model
is wrapped in ``DistributedDataParallel``; every global batch of ``batch_size``
images is split across the processes by stride, gradients are averaged, rank 0
writes the checkpoints and every rank resumes from them.

Device (``TrainConfig.device``): ``cpu`` (the default) or a CUDA device. The
model, the teacher and the masks move there for the run; the training data stays
on the CPU, where every batch is drawn, augmented and shuffled exactly as on a CPU
run, then copied to the device (pinned, non-blocking); validation runs on the
device batch by batch. At the end (also when the run stops with an error) the
model is moved back to the CPU, so everything downstream — the integer engine,
export, ``model.pt`` — stays CPU-only. Checkpoints hold CPU tensors (model and
optimizer state), so a run checkpointed on a GPU resumes on the CPU and the other
way round; on CUDA the CUDA RNG states are saved and restored too, best effort.
Bit-exact resume is promised on the CPU only: on CUDA deterministic algorithms are
requested with ``warn_only`` (some CUDA backward kernels have no deterministic
version) and ``CUBLAS_WORKSPACE_CONFIG`` is set to ``:4096:8`` unless already set.

Safety: a non-finite loss stops the run before the optimizer step, non-finite
weights stop it before a checkpoint is written (`NumericError`, naming the
position and the last good checkpoint).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.errors import NumericError
from mixq.training.checkpoint import (
    Position,
    check_lineage,
    load_model_state,
    nonfinite_tensors,
    read_checkpoint,
    restore_position,
    save_checkpoint,
    set_rng_state,
)
from mixq.training.config import TrainConfig, TrainError
from mixq.training.functional import (
    accuracy,
    augment_shift_flip,
    cosine_lr,
    epoch_order,
    kd_loss,
    mix_seed,
    torch_settings,
)

CheckpointHook = Callable[[Position], None]
#: called before every step's forward with (epoch, step, rank) — e.g. to seed the caller's own generators
StepHook = Callable[[int, int, int], None]
#: raises when a checkpoint's saved config (a dict) would not continue this run
ConfigCheck = Callable[[Path, dict[str, Any]], None]


@dataclass(frozen=True)
class CosineSchedule:
    """Picklable LR multiplier for ``LambdaLR``: warm-up then cosine decay to ``floor`` (a fraction)."""

    total: int
    warmup: int
    floor: float

    def __call__(self, step: int) -> float:
        return cosine_lr(step, self.total, 1.0, self.warmup, self.floor)


@dataclass(frozen=True)
class Checkpointing:
    """Where and how a run checkpoints: ``path``; ``config`` (the run's settings as plain values, written
    and handed to ``check_config`` on resume); ``resume`` (continue from an existing checkpoint);
    ``plan`` / ``data`` (lineage records, see :func:`mixq.training.checkpoint.check_lineage`);
    ``on_save`` (called on rank 0 after every checkpoint)."""

    path: Path
    config: Mapping[str, Any]
    check_config: ConfigCheck | None = None
    resume: bool = False
    plan: str | None = None
    data: dict[str, Any] | None = None
    on_save: CheckpointHook | None = None


@dataclass
class FitResult:
    """The epochs' records, the time spent in training steps (``eval_time_s``: in the epochs' validation,
    this session), the optimizer steps taken and the position a resumed run started from."""

    history: list[dict[str, Any]]
    train_time_s: float
    steps: int
    resumed_from: dict[str, int] | None
    eval_time_s: float = 0.0


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Initialise the default process group from ``torchrun``'s environment (gloo on CPU). True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return True


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
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


def _check(model: nn.Module, n: int, cfg: TrainConfig, world: int, teacher: nn.Module | None,
           masks: Mapping[str, torch.Tensor] | None, ckpt: Checkpointing | None,
           name: str) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """The run's arguments checked (`TrainError` naming ``name``'s field); the masks by parameter, on
    ``cfg.device``."""
    if n < cfg.batch_size:
        raise TrainError(f"{name}.batch_size: {cfg.batch_size} is larger than the {n} training samples")
    if cfg.batch_size % world or cfg.batch_size // world < 2:
        raise TrainError(f"{name}.batch_size: {cfg.batch_size} does not split into >= 2 samples "
                         f"on each of {world} processes")
    if cfg.kd_alpha > 0 and teacher is None:
        raise TrainError(f"{name}.kd_alpha: distillation needs a teacher model")
    if ckpt is not None and cfg.order != "seeded":
        raise TrainError(f"{name}.order: a checkpointed run must be 'seeded' (a '{cfg.order}' run cannot resume)")
    params = dict(model.named_parameters())
    out = {}
    for pname, m in (masks or {}).items():
        if pname not in params or tuple(params[pname].shape) != tuple(m.shape):
            raise TrainError(f"masks: {pname!r} is not a parameter of the model with shape {tuple(m.shape)}")
        out[pname] = (params[pname], m.to(device=cfg.device, dtype=params[pname].dtype))
    return out


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *,
        checkpoint: Checkpointing | None = None, teacher: nn.Module | None = None,
        masks: Mapping[str, torch.Tensor] | None = None, val: tuple[torch.Tensor, torch.Tensor] | None = None,
        fill: float = 0.0, before_step: StepHook | None = None, desc: str = "train", run: str | None = None,
        kept: str | None = None, config_name: str = "TrainConfig") -> FitResult:
    """Train ``model`` in place on ``(x, y)`` for ``cfg.epochs`` (then in eval mode, on the CPU).

    ``cfg.device`` is where it trains: the model (and a copy of ``teacher``) moves there, ``x`` / ``y``
    stay on the CPU and each batch is moved after the CPU-side shuffling and augmentation; at the end —
    also when the run stops with an error — the model is moved back to the CPU (see the module doc).

    ``masks`` maps parameter names to 0/1 tensors: masked gradients and weights are
    zeroed around every step (pruned fine-tuning). ``teacher`` (eval mode) provides
    distillation targets when ``cfg.kd_alpha > 0``. ``checkpoint``: where the run
    checkpoints and whether it resumes (`TrainError` when the checkpoint belongs to
    another run). ``fill`` is the input value of the border pixels that shift
    augmentation brings in (e.g. a black pixel, normalised).

    Messages: ``run`` names the run (default ``"{desc} run in <checkpoint folder>"``),
    ``kept`` says what is left when it stops before its first checkpoint, ``config_name``
    names the caller's config in argument errors. Progress (``cfg.progress``, rank 0): a task
    ``desc`` advancing per step with the running loss, and a line per epoch.
    """
    rank, world = dist_info()
    n = int(x.shape[0])
    mask_params = _check(model, n, cfg, world, teacher, masks, checkpoint, config_name)
    cuda = torch.device(cfg.device).type == "cuda"
    if cuda and cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, where it can be
    with torch_settings(cfg.threads, cfg.deterministic, warn_only=cuda):
        try:
            model.to(cfg.device)
            return _fit(model, x, y, cfg, mask_params, (rank, world), checkpoint=checkpoint, teacher=teacher,
                        val=val, fill=fill, before_step=before_step, desc=desc, run=run, kept=kept)
        finally:
            if cuda:
                model.to("cpu")


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
         mask_params: dict[str, tuple[nn.Parameter, torch.Tensor]], dist: tuple[int, int], *,
         checkpoint: Checkpointing | None, teacher: nn.Module | None,
         val: tuple[torch.Tensor, torch.Tensor] | None, fill: float, before_step: StepHook | None, desc: str,
         run: str | None, kept: str | None) -> FitResult:
    """The run of :func:`fit`: its arguments checked, the model on ``cfg.device``, the torch settings held."""
    rank, world = dist
    n = int(x.shape[0])
    steps_per_epoch = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    report = cfg.progress and rank == 0
    where_run = f" in {checkpoint.path.parent}" if checkpoint is not None else ""
    label = run or f"{desc} run{where_run}"
    cl = cfg.channels_last and x.dim() == 4
    dev = torch.device(cfg.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineSchedule(total, cfg.warmup_steps, cfg.min_lr / cfg.lr))
    stream = torch.Generator().manual_seed(cfg.seed)  # the one generator of a 'stream' run
    pos = Position()
    resumed_from = None
    last_good = kept or "no checkpoint was written yet"
    if checkpoint is not None and checkpoint.resume and checkpoint.path.is_file():
        pos = _resume(checkpoint, model, opt, sched, world)
        resumed_from = {"epoch": pos.epoch, "step": pos.step, "global_step": pos.global_step}
        last_good = f"the last good checkpoint is kept at {checkpoint.path} ({_where(pos, cfg, steps_per_epoch)})"
        if report:
            progress.log(f"{desc} resumed", checkpoint=str(checkpoint.path), epoch=pos.epoch, step=pos.step,
                         global_step=pos.global_step)
    net: nn.Module = model
    if teacher is not None and cl:
        teacher = copy.deepcopy(teacher).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if teacher is not None and cuda:
        teacher = (teacher if cl else copy.deepcopy(teacher)).to(dev)  # the caller's teacher stays put
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    _params_memory_format(model, torch.channels_last if cl else torch.contiguous_format)

    def save() -> None:
        nonlocal last_good
        if checkpoint is None:
            return
        bad = nonfinite_tensors(model)
        if bad:
            raise NumericError(f"{label}: {bad[0]} holds NaN/Inf at {_where(pos, cfg, steps_per_epoch)}; "
                               f"not saved, {last_good} (lower the learning rate?)")
        if rank == 0:
            save_checkpoint(checkpoint.path, config=dict(checkpoint.config), model=model, optimizer=opt,
                            scheduler=sched, pos=pos, world_size=world, plan=checkpoint.plan,
                            data=checkpoint.data, cuda_rng=cuda)
        if world > 1:
            torch.distributed.barrier()
        last_good = f"the last good checkpoint is kept at {checkpoint.path} ({_where(pos, cfg, steps_per_epoch)})"
        if checkpoint.on_save is not None and rank == 0:
            checkpoint.on_save(pos)

    t_last = time.perf_counter()
    eval_time = 0.0
    try:
        with progress.task(desc, total=total, done=pos.global_step, enabled=report) as bar:
            while pos.epoch < cfg.epochs:
                model.train()
                if teacher is not None:
                    teacher.eval()
                order = (epoch_order(cfg.seed, pos.epoch, n) if cfg.order == "seeded"
                         else torch.randperm(n, generator=stream))
                while pos.step < steps_per_epoch:
                    idx = order[pos.step * cfg.batch_size : (pos.step + 1) * cfg.batch_size][rank::world]
                    if len(idx) < 2:  # a last partial batch of one image: BatchNorm needs two
                        pos.step += 1
                        continue
                    xb, yb = x[idx], y[idx]
                    gen = (torch.Generator().manual_seed(mix_seed(cfg.seed, pos.epoch, pos.step, rank))
                           if cfg.order == "seeded" else stream)
                    if cfg.augment:
                        xb = augment_shift_flip(xb, gen, fill=fill)
                    if cuda:  # drawn and augmented on the CPU as in a CPU run, then moved
                        xb = xb.pin_memory().to(dev, non_blocking=True)
                        yb = yb.pin_memory().to(dev, non_blocking=True)
                    if cl:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    if before_step is not None:
                        before_step(pos.epoch, pos.step, rank)
                    if cfg.schedule == "absolute":
                        for g in opt.param_groups:
                            g["lr"] = cosine_lr(pos.global_step, total, cfg.lr, cfg.warmup_steps, cfg.min_lr)
                    out = net(xb)
                    t_out = None
                    if teacher is not None and cfg.kd_alpha > 0:
                        with torch.no_grad():
                            t_out = teacher(xb)
                    loss = kd_loss(out, t_out if t_out is not None else out, yb, cfg.kd_alpha,
                                   cfg.kd_temperature)
                    value = float(loss.detach())
                    if not _all_finite(value, world, dev):
                        raise NumericError(
                            f"{label}: the training loss is {value} at {_where(pos, cfg, steps_per_epoch, 1)}; "
                            f"stopped before the optimizer step, {last_good} "
                            "(lower the learning rate, or check the model and data for NaN/Inf)")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for p, m in mask_params.values():
                        if p.grad is not None:
                            p.grad.mul_(m)
                    opt.step()
                    if cfg.schedule == "factor":
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
                                          "lr": float(opt.param_groups[0]["lr"]),
                                          "train_time_s": round(pos.train_time_s, 2)}
                if val is not None and cfg.eval_every_epoch:
                    t_eval = time.perf_counter()
                    record["val_accuracy"] = accuracy(model, *val)
                    eval_time += time.perf_counter() - t_eval
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
        _params_memory_format(model, torch.contiguous_format)
    model.eval()
    return FitResult(history=pos.history, train_time_s=pos.train_time_s, steps=pos.global_step,
                     resumed_from=resumed_from, eval_time_s=eval_time)


def _resume(ck: Checkpointing, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, world: int) -> Position:
    """Load model, optimizer, schedule and RNG states from the checkpoint; its position."""
    obj = read_checkpoint(ck.path)
    if ck.check_config is not None:
        ck.check_config(ck.path, dict(obj["config"]))
    if int(obj["world_size"]) != world:
        raise TrainError(f"{ck.path}: checkpoint was made with {obj['world_size']} processes, now {world} "
                         "(field 'world_size')")
    load_model_state(ck.path, model, obj["model"])
    check_lineage(ck.path, obj, plan=ck.plan, data=ck.data)
    try:
        opt.load_state_dict(obj["optimizer"])
        sched.load_state_dict(obj["scheduler"])
    except (ValueError, KeyError) as e:
        raise TrainError(f"{ck.path}: optimizer state does not match the model ({e})") from e
    pos = restore_position(obj)
    set_rng_state(obj["rng"])
    return pos


def _where(pos: Position, cfg: TrainConfig, steps_per_epoch: int, ahead: int = 0) -> str:
    """``epoch e/E, step s/S, global step g`` (1-based) of the position (``ahead``: steps past it)."""
    if pos.step == 0 and pos.epoch > 0 and not ahead:
        return f"the end of epoch {pos.epoch}/{cfg.epochs}, global step {pos.global_step}"
    return (f"epoch {pos.epoch + 1}/{cfg.epochs}, step {pos.step + ahead}/{steps_per_epoch}, "
            f"global step {pos.global_step + ahead}")


def _all_finite(value: float, world: int, dev: torch.device) -> bool:
    """Whether the loss is finite on every process (one all-reduce under DDP, so all stop together)."""
    ok = math.isfinite(value)
    if world > 1:
        flag = torch.tensor([0.0 if ok else 1.0], device=dev)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        ok = float(flag) == 0.0
    return ok


@torch.no_grad()
def _params_memory_format(model: nn.Module, fmt: torch.memory_format) -> None:
    """Store every 4-D parameter (conv weights) in ``fmt`` (values unchanged)."""
    for p in model.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=fmt)
