"""Block reconstruction (BRECQ, Li et al., ICLR 2021) with QDrop's random activation dropping (Wei et
al., ICLR 2022): the rounding of every weight and the step of every activation quantizer of a block,
learned together on the block's output error.

**Blocks** come from :mod:`mixq.algorithms.ptq.blocks` (single-entry, single-exit regions of the graph).

**Reconstruction.** Blocks are processed in forward order. A block's input ``x_q`` comes from the
quantized model with the earlier blocks already reconstructed, its target is the float block's output
on the float input (the same modules with their quantizers off). With ``lo``/``gap`` the neighbouring
levels of every weight (any format, MSQ rows included; :func:`~mixq.algorithms.ptq.adaround.rounding_grid`)
and AdaRound's rectified sigmoid ``h(V)``, Adam minimises ::

    ‖block(x_q; lo + h(V)·gap, steps) - block_float(x_fp)‖²  +  λ Σ (1 - |2h(V) - 1|^β)

over ``V`` of every layer of the block and, with ``learn_act``, the step of every activation quantizer
inside it (LSQ's straight-through rounding). With ``drop > 0`` each activation quantizer passes
each element unquantized with that probability during the optimisation (QDrop), which flattens the
loss surface the rounding is learned on. At the end every weight is written back as ``s · level``
(its own fake quantizer reproduces the chosen level exactly) and every learned step becomes the
quantizer's frozen scale — unless the block's output error came out higher than at the start (a block
already near its optimum, or too few iterations), in which case the block keeps its starting weights and
scales (``kept: "start"`` in the report).

**Fisher-weighted error** (``fisher`` > 0): BRECQ's own second-order view of the block output error.
The KL between the float and the quantized prediction is, near the float point, ``½ Δzᵀ F Δz`` for a block
output change ``Δz``, ``F`` the Fisher information of the float prediction at that output; with its
diagonal (:func:`~mixq.algorithms.ptq.blocks.fisher_weights`: squared gradients of the log-likelihood
of labels drawn from the float network's own softmax, one backward pass per draw giving every block's
at once) each output element's squared error is weighted by ``(1 - fisher) + fisher · F_ii / mean(F)``.
Unlike BRECQ's reference code, which takes the gradient of the current KL, this needs no labels and is
not zero where the quantized prediction still agrees.

**MSQ rows in a block** (``msq_rows="block"``; the ``brecq`` stage sets it when the recipe's MSQ rows are
free, ``msq_rows="output_auto"``): before a block is reconstructed, the rows of its two-format layers are
chosen on the block's output error (:func:`choose_block_rows`: the rows as given, all in the first
format, all in the second, then layer by layer), so a block never starts worse than either format alone.

**Windows** (``crop``): translation equivariance lets a block with a large input map learn on random
``crop`` x ``crop`` windows of it, the output pixels a window's zero padding spoils left out (the margin
is measured on the float block, :func:`_crop_geometry`); on MobileNetV2 at 224 px this makes a step of
the first blocks 4-16x cheaper on a CPU.

Data: the calibration set only (the first ``images``). Device: ``device`` (``"cuda"`` where one is
available); the model is moved there for the stage and back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixq import progress
from mixq.algorithms.ptq._common import as_tensor, batches, require_positive
from mixq.algorithms.ptq.adaround import RoundingConfig, beta_at, init_logits, rectified_sigmoid, rounding_grid
from mixq.algorithms.ptq.blocks import Block, QLayer, find_blocks, fisher_weights, float_block, float_weight
from mixq.errors import MixqError
from mixq.modes import eval_mode
from mixq.nn import QAct
from mixq.quant.lsq import lsq_quant

__all__ = ["BRECQ_BUDGETS", "BrecqConfig", "brecq", "brecq_budget", "choose_block_rows", "reconstruct_block"]


@dataclass(frozen=True)
class BrecqConfig(RoundingConfig):
    """Block reconstruction settings (and :class:`~mixq.algorithms.ptq.adaround.RoundingConfig`'s): ``iterations`` Adam
    steps per block on mini-batches of ``batch`` of the first ``images`` calibration images; ``lr`` for the rounding
    logits, ``act_lr`` for the activation steps; AdaRound's regularizer (``reg_weight``, ``beta_start`` →
    ``beta_end`` after ``warmup``); ``drop``: QDrop's probability of passing an activation unquantized (0: BRECQ);
    ``max_layers``: compute layers merged into one block; ``batch_size``: images per forward outside the
    optimisation; ``crop``: when > 0, each Adam step of a block whose input map is larger runs it on one random
    ``crop`` x ``crop`` window of the batch and compares the output the window determines (the border margin found
    on the float block), so early high-resolution blocks cost a fraction of a whole image per step (translation
    equivariance; 0: whole inputs); ``msq_rows``: ``block`` chooses the rows of a block's two-format (MSQ) layers on
    the block's output error before its reconstruction (:func:`choose_block_rows`, on ``row_images`` images),
    ``keep`` leaves them; ``start_hardness``: where the soft rounding starts, ``h = rest + k·(round(rest) - rest)``
    — 0 is AdaRound's start (the weights as given, e.g. float), 1 the rounded weights themselves (e.g. GPTQ's
    levels, whose compensated weights are only consistent once every earlier column is rounded); ``fisher``: the
    share of each output element's error weight that comes from the diagonal Fisher information of the float
    network's prediction at that element (``blocks.fisher_weights``, ``fisher_samples`` labels drawn per image), the
    rest uniform (0: the plain output error); ``scale_lr``: when > 0, each weight row's scale is learned too (a
    factor on the row's grid, Adam at this rate; 0: the scales as given)."""

    iterations: int = 400
    batch: int = 32
    images: int = 256
    lr: float = 1e-2
    act_lr: float = 4e-5
    learn_act: bool = True
    drop: float = 0.5
    max_layers: int = 2
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"
    crop: int = 0
    msq_rows: str = "keep"
    row_images: int = 32
    start_hardness: float = 0.0
    fisher: float = 0.0
    fisher_samples: int = 4
    scale_lr: float = 0.0

    def __post_init__(self) -> None:
        require_positive(self, "brecq", ("iterations", "batch", "images", "max_layers", "batch_size"),
                         ("lr", "act_lr"))
        if self.msq_rows not in ("keep", "block"):
            raise MixqError(f"brecq.msq_rows: {self.msq_rows!r} is not one of keep, block")
        if self.row_images < 1:
            raise MixqError(f"brecq.row_images: must be >= 1, got {self.row_images!r}")
        if not 0.0 <= self.start_hardness <= 1.0:
            raise MixqError(f"brecq.start_hardness: must be in [0, 1], got {self.start_hardness!r}")
        if not 0.0 <= self.fisher <= 1.0:
            raise MixqError(f"brecq.fisher: must be in [0, 1] (0: plain output error), got {self.fisher!r}")
        if self.scale_lr < 0:
            raise MixqError(f"brecq.scale_lr: must be >= 0 (0: weight scales fixed), got {self.scale_lr!r}")
        if self.fisher_samples < 1:
            raise MixqError(f"brecq.fisher_samples: must be >= 1, got {self.fisher_samples!r}")
        if self.crop < 0:
            raise MixqError(f"brecq.crop: must be >= 0 (0: whole inputs), got {self.crop!r}")
        if not 0.0 <= self.drop < 1.0:
            raise MixqError(f"brecq.drop: must be in [0, 1), got {self.drop!r}")
        self._check_warmup("brecq")


#: Named budgets of :class:`BrecqConfig` (fields over its defaults). ``full``: the published recipe's scale, the
#: dataclass defaults (400 Adam steps of 32 images, whole inputs), sized for a GPU. ``cpu``: 100 steps of 16
#: images on 56-px windows of 128 images, the budget benchmarks/ptq_mobilenetv2.py --lowbit measures on one CPU
#: thread (MobileNetV2 W4A8: 85.0% vs 85.6% agreement for ``full``'s 400 steps, at a quarter of the time).
BRECQ_BUDGETS: dict[str, dict[str, int]] = {
    "full": {},
    "cpu": {"iterations": 100, "batch": 16, "images": 128, "crop": 56},
}


def brecq_budget(name: str, **fields: Any) -> BrecqConfig:
    """``BrecqConfig`` at the named budget of :data:`BRECQ_BUDGETS`, then ``fields``."""
    if name not in BRECQ_BUDGETS:
        raise MixqError(f"brecq budget: {name!r} is not one of {', '.join(BRECQ_BUDGETS)}")
    return BrecqConfig(**{**BRECQ_BUDGETS[name], **fields})


class _Soft:
    """The learnable state of one block: rounding logits per layer, a step per activation quantizer."""

    def __init__(self, block: Block, model: nn.Module, cfg: BrecqConfig) -> None:
        self.cfg = cfg
        self.layers: list[QLayer] = [model.get_submodule(n) for n in block.layers]  # type: ignore[misc]
        self.grids = []
        self.logits = []
        for ly in self.layers:
            lo, gap, rest = rounding_grid(ly.weight.cpu(), ly.formats, ly.row_scheme.cpu(), ly.w_scales.cpu())
            self.grids.append((lo.to(ly.weight), gap.to(ly.weight)))
            rest = rest + cfg.start_hardness * (rest.round() - rest)
            self.logits.append(init_logits(rest.to(ly.weight), cfg.zeta, cfg.gamma).requires_grad_(True))
        self.acts = block.acts
        self.steps = [nn.Parameter(a.scale.detach().clone().float()) for a in self.acts]
        # a factor per weight row on its grid, only where the row scales are learned (scale_lr > 0)
        self.row_factors = [torch.ones((ly.weight.shape[0],) + (1,) * (ly.weight.dim() - 1), device=ly.weight.device,
                                       dtype=ly.weight.dtype, requires_grad=True)
                            for ly in self.layers] if cfg.scale_lr > 0 else []
        self.drop = 0.0

    def h(self, i: int) -> torch.Tensor:
        return rectified_sigmoid(self.logits[i], self.cfg.zeta, self.cfg.gamma)

    def scaled(self, i: int, w: torch.Tensor) -> torch.Tensor:
        """``w`` on layer ``i``'s grid times the row factors, where they are learned."""
        return self.row_factors[i] * w if self.row_factors else w

    def regularizer(self, beta: float) -> torch.Tensor:
        total = torch.zeros((), device=self.logits[0].device)
        for i, (_, gap) in enumerate(self.grids):
            h = self.h(i)
            total = total + ((1.0 - (2.0 * h - 1.0).abs().pow(beta)) * (gap > 0)).sum()
        return total

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Layers use ``lo + h(V)·gap``; activation quantizers the learnable steps (and QDrop)."""
        try:
            for i, ly in enumerate(self.layers):
                lo, gap = self.grids[i]
                ly.__dict__["quantized_weight"] = lambda i=i, lo=lo, gap=gap: self.scaled(i, lo + self.h(i) * gap)
            for a, step in zip(self.acts, self.steps, strict=True):
                a.__dict__["forward"] = self._act(a, step)
            yield
        finally:
            for m in [*self.layers, *self.acts]:
                m.__dict__.pop("quantized_weight", None)
                m.__dict__.pop("forward", None)

    def _act(self, a: QAct, step: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            s = step if self.cfg.learn_act else step.detach()
            q = lsq_quant(x, s.abs().clamp(min=1e-12), a.fmt, 1.0)
            if self.drop > 0:
                keep = torch.rand_like(x) < self.drop
                q = torch.where(keep, x, q)
            return q
        return forward

    @torch.no_grad()
    def write_back(self) -> None:
        for i, ly in enumerate(self.layers):
            lo, gap = self.grids[i]
            up = (self.h(i) >= 0.5) & (gap > 0)
            ly.weight.copy_(self.scaled(i, lo + up.to(lo.dtype) * gap))
            if self.row_factors:  # every format's scale of the row
                ly.w_scales = ly.w_scales * self.row_factors[i].detach().to(ly.w_scales).unsqueeze(0)
        if self.cfg.learn_act:
            for a, step in zip(self.acts, self.steps, strict=True):
                a.scale = step.detach().abs().clamp(min=1e-12).reshape(a.scale.shape).to(a.scale)


# ---------------------------------------------------------------------------------------------- loop
def _sq_error(out: torch.Tensor, tgt: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Per image, the squared output error summed over its outputs (each element weighted by ``w`` where given)."""
    e = (out - tgt).pow(2)
    return (e if w is None else e * w).flatten(1).sum(1)


def _error(module: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor],
           ws: list[torch.Tensor] | None = None) -> tuple[float, list[torch.Tensor]]:
    """Mean over images of the (weighted) squared output error summed over each image's outputs, and the outputs."""
    total, n = 0.0, 0
    outs = []
    with torch.no_grad():
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            outs.append(module(x))
            total += float(_sq_error(outs[-1], y, None if ws is None else ws[i]).sum())
            n += x.shape[0]
    return total / max(n, 1), outs


def _crop_geometry(block: Block, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   crop: int) -> tuple[int, int] | None:
    """``(stride, margin)`` when the block may be optimised on ``crop`` x ``crop`` windows of its input:
    a spatial map larger than ``crop`` in and out, an integer stride ``S`` dividing ``crop``, and a margin
    ``m`` (output pixels) beyond which the float block's output on a window equals the window of its
    output on the whole input — checked here on two images at an interior window (not derived from the
    layer shapes, so a block with a global operation, whose output no window reproduces, gets ``None``;
    ``y`` only for its shape)."""
    if x.dim() != 4 or y.dim() != 4 or min(x.shape[-2:]) <= crop:
        return None
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % int(y.shape[-2]) or w % int(y.shape[-1]) or h // int(y.shape[-2]) != w // int(y.shape[-1]):
        return None
    s = h // int(y.shape[-2])
    if crop % s or h % s or w % s:
        return None
    top, left = (h - crop) // 2 // s * s, (w - crop) // 2 // s * s
    c = crop // s
    with torch.no_grad(), float_block(block, model):
        out = block.module(x[:2, :, top : top + crop, left : left + crop])
        whole = block.module(x[:2])
    if out.shape[-2:] != (c, c) or whole.shape != y[:2].shape:
        return None
    ref = whole[:, :, top // s : top // s + c, left // s : left // s + c]
    tol = 1e-4 * float(ref.abs().max().clamp(min=1e-12))
    for m in range(1, c // 4 + 1):
        if float((out[..., m : c - m, m : c - m] - ref[..., m : c - m, m : c - m]).abs().max()) <= tol:
            return s, m
    return None


def _cropped_step(block: Block, x: torch.Tensor, y: torch.Tensor, crop: int, geo: tuple[int, int],
                  gen: torch.Generator, elem_w: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]:
    """The block on a random ``crop`` window of ``x`` (stride-aligned, one per batch), the part of its
    output the window determines (the margin dropped where the window's edge is not the image's), that
    part of the target, the weight that scales the window's error to a whole image's, and that part of the
    element weights ``elem_w`` (where given)."""
    s, m = geo
    h, w = int(x.shape[-2]), int(x.shape[-1])
    top = int(torch.randint(0, (h - crop) // s + 1, (1,), generator=gen)) * s
    left = int(torch.randint(0, (w - crop) // s + 1, (1,), generator=gen)) * s
    c = crop // s
    t0, t1 = (0 if top == 0 else m), (c if top + crop == h else c - m)
    l0, l1 = (0 if left == 0 else m), (c if left + crop == w else c - m)
    out = block.module(x[:, :, top : top + crop, left : left + crop])[..., t0:t1, l0:l1]
    window = (..., slice(top // s + t0, top // s + t1), slice(left // s + l0, left // s + l1))
    return (out, y[window], float(y.shape[-2] * y.shape[-1]) / float((t1 - t0) * (l1 - l0)),
            None if elem_w is None else elem_w[window])


def _schemes(layers: list[QLayer]) -> list[torch.Tensor]:
    return [ly.row_scheme.clone() for ly in layers]


def _set_schemes(layers: list[QLayer], schemes: list[torch.Tensor]) -> None:
    for ly, sc in zip(layers, schemes, strict=True):
        ly.row_scheme = sc.clone()


def choose_block_rows(block: Block, model: nn.Module, xq: list[torch.Tensor], target: list[torch.Tensor],
                      images: int = 32) -> dict[str, float] | None:
    """MSQ row choice inside a block, on the block's output error (round-to-nearest weights, activation
    steps as they are): over the block's two-format layers, the assignment as given (per row, from the
    layer's own output error, e.g. ``msq_rows="output_auto"``), every row in the primary format and every
    row in the second format are compared jointly; from the best of the three, each layer in turn takes
    whichever of its three assignments lowers the block's error further (one sweep). The result is never
    worse on these images than either format alone, nor than the rows as given. Sets ``row_scheme`` in
    place; returns the errors (``None`` when the block has no two-format layer)."""
    layers = [ly for ly in (model.get_submodule(n) for n in block.layers)
              if isinstance(ly, QLayer) and len(ly.formats) == 2]  # type: ignore[misc, arg-type]
    if not layers:
        return None
    xs, ys = list(xq), list(target)
    x, y = torch.cat(xs)[:images], torch.cat(ys)[:images]

    def err(schemes: list[torch.Tensor]) -> float:
        _set_schemes(layers, schemes)  # type: ignore[arg-type]
        with torch.no_grad():
            return float((block.module(x) - y).pow(2).flatten(1).sum(1).mean())

    given = _schemes(layers)  # type: ignore[arg-type]
    cands = {"given": given, "primary": [torch.zeros_like(g) for g in given],
             "alt": [torch.ones_like(g) for g in given]}
    errs = {k: err(v) for k, v in cands.items()}
    best_key = min(errs, key=lambda k: errs[k])
    best, best_err = list(cands[best_key]), errs[best_key]
    for i in range(len(layers)):
        for cand in cands.values():
            if torch.equal(best[i], cand[i]):
                continue
            trial = [*best[:i], cand[i], *best[i + 1 :]]
            e = err(trial)
            if e < best_err:
                best, best_err = trial, e
    _set_schemes(layers, best)  # type: ignore[arg-type]
    return {**errs, "chosen": best_err, "alt_rows": float(sum(int(b.sum()) for b in best)),
            "rows": float(sum(b.numel() for b in best))}


def reconstruct_block(block: Block, model: nn.Module, xq: list[torch.Tensor], target: list[torch.Tensor],
                      cfg: BrecqConfig, weights: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """Learn one block's rounding and activation steps (in place); the output error before and after (each
    output element weighted by ``weights``, batched as ``target``, where given), and (``"outputs"``) the
    block's outputs on ``xq`` as it is left."""
    rows = choose_block_rows(block, model, xq, target, cfg.row_images) if cfg.msq_rows == "block" else None
    before, out_before = _error(block.module, xq, target, weights)
    soft = _Soft(block, model, cfg)
    with torch.no_grad():  # the start on its grid (a GPTQ start's weights are its compensated, unrounded ones)
        start = ([ly.quantized_weight().detach().clone() for ly in soft.layers], [a.scale.clone() for a in soft.acts],
                 [ly.w_scales.clone() for ly in soft.layers])
    x_all, y_all = torch.cat(xq), torch.cat(target)
    w_all = None if weights is None else torch.cat(weights)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam([{"params": soft.logits, "lr": cfg.lr},
                            {"params": soft.steps, "lr": cfg.act_lr},
                            *([{"params": soft.row_factors, "lr": cfg.scale_lr}] if soft.row_factors else [])])
    n = x_all.shape[0]
    geo = _crop_geometry(block, model, x_all, y_all, cfg.crop) if cfg.crop else None
    torch.manual_seed(cfg.seed)  # QDrop's masks
    with soft.active(), torch.enable_grad():
        soft.drop = cfg.drop
        for step in range(cfg.iterations):
            idx = torch.randint(0, n, (min(cfg.batch, n),), generator=gen).to(x_all.device)
            w = None if w_all is None else w_all[idx]
            if geo is None:
                out, tgt, weight = block.module(x_all[idx]), y_all[idx], 1.0
            else:
                out, tgt, weight, w = _cropped_step(block, x_all[idx], y_all[idx], cfg.crop, geo, gen, w)
            loss = weight * _sq_error(out, tgt, w).mean()
            beta = beta_at(step, cfg)
            if beta is not None:
                loss = loss + cfg.reg_weight * soft.regularizer(beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        soft.drop = 0.0
    soft.write_back()
    after, out_after = _error(block.module, xq, target, weights)
    if after > before:  # the learned point is worse than the start (a block already near its optimum): keep the start
        with torch.no_grad():
            for ly, w, ws in zip(soft.layers, start[0], start[2], strict=True):
                ly.weight.copy_(w)
                ly.w_scales = ws
            for a, sc in zip(soft.acts, start[1], strict=True):
                a.scale = sc
    return {"layers": len(block.layers), "rec_before": before, "rec_after": min(after, before),
            "rec_learned": after, "kept": "start" if after > before else "learned",
            "crop": None if geo is None else {"stride": geo[0], "margin": geo[1]},
            "outputs": out_before if after > before else out_after, **({"msq_rows": rows} if rows else {})}


def brecq(qmodel: nn.Module, calib: torch.Tensor, cfg: BrecqConfig | None = None,
          fmodel: nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """Block reconstruction of every block of ``qmodel`` (in place; activation quantizers calibrated
    already). ``fmodel``: the float model ``qmodel`` was converted from (BN folded, same layer names),
    whose weights make the float target; without it the target runs on ``qmodel``'s own weights, which
    must then still be the float ones (not, e.g., GPTQ's). Returns per block (named by its first layer)
    the output error before and after."""
    cfg = cfg or BrecqConfig()
    data = as_tensor(calib)[: cfg.images]
    dev = torch.device(cfg.device)
    home = next(qmodel.parameters()).device
    report: dict[str, dict[str, Any]] = {}
    qmodel.to(dev)
    try:
        with eval_mode(qmodel):
            blocks = find_blocks(qmodel, cfg.max_layers)
            fw = None if fmodel is None else {n: float_weight(fmodel, n).to(dev) for b in blocks for n in b.layers}
            xq = [b.to(dev) for b in batches(data, cfg.batch_size)]
            xf = list(xq)
            fish = (fisher_weights(blocks, qmodel, xf, cfg.fisher_samples, cfg.seed, fw)
                    if cfg.fisher > 0 else [None] * len(blocks))
            with progress.task("ptq brecq", total=len(blocks)) as task:
                for block, fb in zip(blocks, fish, strict=True):
                    with torch.no_grad(), float_block(block, qmodel, fw):
                        yf = [block.module(x) for x in xf]
                    ws = None if fb is None else [(1.0 - cfg.fisher) + cfg.fisher * w for w in fb]
                    rep = reconstruct_block(block, qmodel, xq, yf, cfg, ws)
                    xq = rep.pop("outputs")  # the next block's input: this block's output as it is left
                    report[block.layers[0]] = rep
                    xf = yf
                    task.advance(layer=block.layers[0])
    finally:
        qmodel.to(home)
    return report

