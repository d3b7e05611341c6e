"""Network-wise distillation: the quantized network's continuous parameters tuned on the float network's
predictions (the whole network at once, after the rounding is fixed).

Every earlier PTQ stage fits something local — a layer's output (GPTQ, AdaRound), a block's (BRECQ). Their
errors add up along the network, and what the user compares is the prediction. This stage (the network-wise
step of NWQ, Wang et al., NeurIPS 2022, and PD-Quant's prediction-difference loss, Liu et al., CVPR 2023,
without their rounding variables) minimises, with Adam on mini-batches of the calibration images (each also
seen mirrored when ``flip``)::

    KL( softmax(f(x) / T) ‖ softmax(q(x) / T) )

``f`` the float network, ``q`` the quantized one, over

- every compute layer's **bias** (the hardware adds it on the accumulator grid: any value is exact);
- with ``weights``: a **factor per weight row** on its scale (every row format's scale of the row, the codes
  found by the rounding stage kept where the factor does not move them past a level edge; LSQ's
  straight-through rounding, so a code may change);
- with ``acts``: every activation quantizer's **step** (LSQ, the steps of a residual stream and its readers as
  one, so the streams stay tied as :func:`~mixq.graph.residual.tie_residual_scales` left them).

Factors and steps are learned as logarithms (one learning rate fits every layer's scale). The network as it
came in is kept when the tuned one's loss on the calibration images is not lower (``kept: "start"``).

Data: the calibration set only (the first ``images``). Device: ``device``; the model is moved there for the
stage and back afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixq import progress
from mixq.algorithms.ptq._common import batches, is_quant_layer, require_positive
from mixq.algorithms.ptq.blocks import QLayer
from mixq.errors import MixqError
from mixq.graph.residual import stream_readers
from mixq.modes import eval_mode
from mixq.nn import QAct
from mixq.quant.lsq import lsq_quant

__all__ = ["DistillConfig", "distill"]


@dataclass(frozen=True)
class DistillConfig:
    """``steps`` Adam steps on mini-batches of ``batch`` of the first ``images`` calibration images (mirrored
    copies too with ``flip``); ``lr`` for the log row factors and log activation steps, ``bias_lr`` for the
    biases; ``weights`` / ``acts``: learn the row factors / the activation steps; ``temperature`` of the
    softmaxes; ``batch_size``: images per forward outside the optimisation."""

    steps: int = 600
    batch: int = 32
    images: int = 1000
    lr: float = 1e-2
    bias_lr: float = 1e-3
    weights: bool = True
    acts: bool = True
    flip: bool = True
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        require_positive(self, "distill", ("steps", "batch", "images", "batch_size"), ("lr", "temperature"))
        if self.bias_lr < 0:
            raise MixqError(f"distill.bias_lr: must be >= 0 (0: biases fixed), got {self.bias_lr!r}")
        if not (self.weights or self.acts or self.bias_lr > 0):
            raise MixqError("distill: weights, acts and bias_lr all off: nothing to learn")


def _act_groups(q: nn.Module) -> list[list[QAct]]:
    """The calibrated activation quantizers of ``q``, those sharing a residual stream's scale as one group."""
    groups: list[list[QAct]] = []
    seen: set[int] = set()
    for stream, readers in stream_readers(q):
        tied = [a for a in (stream, *readers) if a.mode == "quant"]
        if len(tied) > 1 and all(torch.equal(a.scale, tied[0].scale) for a in tied):
            groups.append(tied)
            seen.update(id(a) for a in tied)
    for m in q.modules():
        if isinstance(m, QAct) and m.mode == "quant" and id(m) not in seen:
            groups.append([m])
            seen.add(id(m))
    return groups


class _Tuned:
    """The learnable state: log row factors per layer, a log step per activation group, the biases."""

    def __init__(self, q: nn.Module, cfg: DistillConfig) -> None:
        self.layers: list[QLayer] = [m for m in q.modules() if is_quant_layer(m) and m.formats]  # type: ignore[misc]
        self.log_rows = [torch.zeros((m.weight.shape[0],) + (1,) * (m.weight.dim() - 1), device=m.weight.device,
                                     requires_grad=cfg.weights) for m in self.layers]
        self.groups = _act_groups(q) if cfg.acts else []
        self.log_steps = [g[0].scale.detach().float().abs().clamp(min=1e-12).log().clone().requires_grad_(True)
                          for g in self.groups]
        self.biases: list[torch.Tensor] = [m.bias for m in q.modules()  # type: ignore[misc]
                                           if is_quant_layer(m) and m.bias is not None]

    def params(self, cfg: DistillConfig) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if cfg.weights:
            out.append({"params": self.log_rows, "lr": cfg.lr})
        if self.log_steps:
            out.append({"params": self.log_steps, "lr": cfg.lr})
        if cfg.bias_lr > 0 and self.biases:
            out.append({"params": self.biases, "lr": cfg.bias_lr})
        return out

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Layers quantize with their row factors, activation quantizers with the learned steps (LSQ)."""
        try:
            for m, lr in zip(self.layers, self.log_rows, strict=True):
                m.__dict__["quantized_weight"] = lambda m=m, lr=lr: self._weight(m, lr)
            for g, ls in zip(self.groups, self.log_steps, strict=True):
                for a in g:
                    a.__dict__["forward"] = lambda x, a=a, ls=ls: lsq_quant(x, ls.exp(), a.fmt, 1.0)
            yield
        finally:
            for mod in [*self.layers, *(a for g in self.groups for a in g)]:
                mod.__dict__.pop("quantized_weight", None)
                mod.__dict__.pop("forward", None)

    @staticmethod
    def _weight(m: QLayer, log_row: torch.Tensor) -> torch.Tensor:
        return m.weight_at(lambda w, fmt, s: lsq_quant(w, s, fmt, 1.0), m.w_scales * log_row.exp())

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in (*self.log_rows, *self.log_steps, *self.biases)]

    @torch.no_grad()
    def restore(self, saved: list[torch.Tensor]) -> None:
        for t, v in zip((*self.log_rows, *self.log_steps, *self.biases), saved, strict=True):
            t.copy_(v)

    @torch.no_grad()
    def write_back(self) -> None:
        for m, lr in zip(self.layers, self.log_rows, strict=True):
            m.w_scales = m.w_scales * lr.exp().to(m.w_scales).unsqueeze(0)
        for g, ls in zip(self.groups, self.log_steps, strict=True):
            for a in g:
                a.scale = ls.exp().reshape(a.scale.shape).to(a.scale)


def _kl(out: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    """Mean over images of KL(softmax(target/t) ‖ softmax(out/t)), times t² (Hinton's gradient scale)."""
    return F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(target / t, 1), log_target=True,
                    reduction="batchmean") * t * t


def _loss(q: nn.Module, xs: torch.Tensor, ys: torch.Tensor, cfg: DistillConfig) -> float:
    with torch.no_grad():
        total = sum(float(_kl(q(x), y, cfg.temperature)) * len(x)
                    for x, y in zip(batches(xs, cfg.batch_size), batches(ys, cfg.batch_size), strict=True))
    return total / max(len(xs), 1)


def distill(q: nn.Module, fmodel: nn.Module, calib: torch.Tensor, cfg: DistillConfig) -> dict[str, Any]:
    """Tune ``q``'s biases, row scales and activation steps on ``fmodel``'s predictions (in place). Report:
    the loss before and after on the calibration images, what was learned and whether it was kept."""
    dev = torch.device(cfg.device)
    home = next(q.parameters()).device
    xs = calib[: cfg.images].to(dev)
    if cfg.flip and xs.dim() == 4:
        xs = torch.cat([xs, xs.flip(-1)])
    q.to(dev)
    fmodel.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    try:
        with eval_mode(q), eval_mode(fmodel):
            with torch.no_grad():
                ys = torch.cat([fmodel(x) for x in batches(xs, cfg.batch_size)])
            before = _loss(q, xs, ys, cfg)
            state = _Tuned(q, cfg)
            start = state.snapshot()
            groups = state.params(cfg)
            if not groups:  # no quantized layer or activation in the network
                return {"loss_before": before, "loss_after": before, "kept": "start", "layers": 0, "act_groups": 0,
                        "biases": 0, "images": len(xs)}
            opt = torch.optim.Adam(groups)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.steps)))
            learned = {id(t) for g in groups for t in g["params"]}
            frozen = [t for t in q.parameters() if t.requires_grad and id(t) not in learned]
            for t in frozen:  # the weights' codes come from their scales here; no gradient to keep for them
                t.requires_grad_(False)
            try:
                with state.active(), progress.task("ptq distill", total=cfg.steps) as bar:
                    for _ in range(cfg.steps):
                        idx = torch.randint(len(xs), (cfg.batch,), generator=gen).to(dev)
                        loss = _kl(q(xs[idx]), ys[idx], cfg.temperature)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sched.step()
                        bar.advance(loss=f"{loss.item():.4f}")
            finally:
                for t in frozen:
                    t.requires_grad_(True)
                for b in state.biases:
                    b.grad = None
            with state.active():
                after = _loss(q, xs, ys, cfg)
            kept = "tuned" if after < before else "start"
            if kept == "start":
                state.restore(start)
            else:
                state.write_back()
    finally:
        q.to(home)
        fmodel.to(home)
    return {"loss_before": before, "loss_after": after, "kept": kept, "layers": len(state.layers),
            "act_groups": len(state.groups), "biases": len(state.biases), "images": len(xs)}
