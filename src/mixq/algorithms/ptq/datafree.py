"""Data-free calibration: synthesize inputs whose BatchNorm statistics match the ones stored in the
model (ZeroQ, Cai et al. 2020; "The Knowledge Within", Haroush et al. 2020).

Starting from Gaussian noise, the inputs are optimized so that at every BatchNorm layer the
per-channel batch mean and standard deviation of its input equal the stored running mean
and ``sqrt(running_var + eps)``::

    L(x) = Σ_BN ‖μ_batch(x) - μ_BN‖₂ + ‖σ_batch(x) - σ_BN‖₂

The synthesized batch then stands in for calibration data (activation ranges, bias
correction). The model must still contain its BatchNorm layers (run this before folding).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq import progress
from mixq.algorithms.ptq._common import require_positive
from mixq.errors import ModelError


@dataclass(frozen=True)
class DataFreeConfig:
    """``images`` synthesized in groups of ``batch``, each optimized for ``iterations`` Adam steps at
    learning rate ``lr``; ``size`` (H, W) overrides the model's input size (smaller is faster)."""

    images: int = 32
    batch: int = 16
    iterations: int = 200
    lr: float = 0.2
    size: tuple[int, int] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive(self, "datafree", ("images", "batch", "iterations"), ("lr",))


def bn_targets(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, running mean, running std) of every BatchNorm with running statistics."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None:
            out.append((name, m.running_mean.detach().clone(), torch.sqrt(m.running_var.detach() + m.eps)))
    return out


def bn_matching_loss(stats: list[tuple[torch.Tensor, torch.Tensor]],
                     targets: list[tuple[str, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``Σ ‖μ - μ_BN‖ + ‖σ - σ_BN‖`` over the BN layers (``stats`` in the same order as ``targets``)."""
    total = torch.zeros(())
    for (mu, sd), (_, tm, ts) in zip(stats, targets, strict=True):
        total = total + torch.linalg.vector_norm(mu - tm) + torch.linalg.vector_norm(sd - ts)
    return total


def synthesize_inputs(model: nn.Module, input_shape: tuple[int, ...],
                      cfg: DataFreeConfig | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Inputs ``(images, *input_shape)`` synthesized from ``model``'s BatchNorm statistics.

    Returns the inputs and a report (initial and final matching loss averaged over groups).
    ``model`` is not changed.
    """
    cfg = cfg or DataFreeConfig()
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    targets = bn_targets(work)
    if not targets:
        raise ModelError(f"data-free calibration: {type(model).__name__} has no BatchNorm statistics to match")
    mods = dict(work.named_modules())
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        x = inp[0]
        dims = [0] + list(range(2, x.dim()))
        mu = x.mean(dim=dims)
        sd = torch.sqrt(x.var(dim=dims, unbiased=False) + 1e-5)
        captured.append((mu, sd))

    handles = [mods[name].register_forward_pre_hook(hook) for name, _, _ in targets]
    shape = tuple(input_shape)
    if cfg.size is not None and len(shape) == 3:
        shape = (shape[0], *cfg.size)
    gen = torch.Generator().manual_seed(cfg.seed)
    out: list[torch.Tensor] = []
    first_loss, last_loss, groups = 0.0, 0.0, 0
    try:
        with progress.task("ptq synthesize", total=math.ceil(cfg.images / cfg.batch)) as task:
            for start in range(0, cfg.images, cfg.batch):
                n = min(cfg.batch, cfg.images - start)
                x = torch.randn((n, *shape), generator=gen).requires_grad_(True)
                opt = torch.optim.Adam([x], lr=cfg.lr)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations)
                for it in range(cfg.iterations):
                    captured.clear()
                    work(x)
                    loss = bn_matching_loss(captured, targets)
                    if it == 0:
                        first_loss += float(loss.detach())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                last_loss += float(loss.detach())
                groups += 1
                out.append(x.detach())
                task.advance(images=start + n, bn_loss=float(loss.detach()))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out), {"loss_start": first_loss / groups, "loss_end": last_loss / groups}
