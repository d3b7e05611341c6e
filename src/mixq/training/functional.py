"""The pieces of a training step as pure functions: schedule, distillation loss, augmentation, seeds,
data order, top-1 accuracy; and the torch settings a reproducible run holds.

>>> round(cosine_lr(0, 10, base=1.0, warmup=0), 3), round(cosine_lr(5, 10, base=1.0, warmup=0), 3)
(1.0, 0.5)
>>> epoch_order(0, 1, 5).tolist() == epoch_order(0, 1, 5).tolist() != epoch_order(0, 2, 5).tolist()
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from mixq.modes import eval_mode


@contextmanager
def torch_settings(threads: int | None, deterministic: bool = True, warn_only: bool = False) -> Iterator[None]:
    """A thread count (``None``: leave it) and deterministic algorithms for the duration of the block;
    both restored afterwards. ``warn_only``: an op without a deterministic implementation warns instead
    of raising (CUDA training, where some backward kernels have none)."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def cosine_lr(step: int, total: int, base: float, warmup: int = 0, floor: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to ``floor`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return floor + 0.5 * (base - floor) * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    """``(1-α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`` (``α = 0``: CE)."""
    ce = F.cross_entropy(student, labels)
    if alpha <= 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.detach() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


def augment_shift_flip(x: torch.Tensor, gen: torch.Generator, shift: int = 2, fill: float = 0.0) -> torch.Tensor:
    """The one augmentation: a random shift (up to ``shift`` pixels each way, ``fill`` brought in) and a
    random left-right flip, per image of an (N, C, H, W) batch (other shapes pass unchanged)."""
    if x.dim() != 4 or shift < 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=fill)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 steps; stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of ``epoch`` in a ``seeded`` run: a permutation of ``range(n)`` fixed by ``(seed, epoch)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def top1_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> int:
    """How many of ``x`` the model (in eval mode, restored after) classifies as ``y``; ``x`` may stay on
    the CPU when the model is on a GPU (each batch is moved to the model's device)."""
    correct = 0
    dev = model_device(model)
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            pred = model(x[i : i + batch_size].to(dev, non_blocking=True)).argmax(1)
            correct += int((pred.to(y.device) == y[i : i + batch_size]).sum())
    return correct


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """The one top-1 accuracy of mixq's training code, in percent (the unit of ``mixq.api.evaluate``):
    ``100 · correct / n`` (0 for no samples)."""
    return 100.0 * top1_correct(model, x, y, batch_size) / max(1, x.shape[0])
