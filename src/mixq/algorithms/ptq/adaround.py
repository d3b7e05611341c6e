"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020).

Each weight chooses between the level just below and the level just above it instead of
the nearest one. With ``lo``/``hi`` the neighbouring levels of ``w / s`` (any format:
fixed point, SP2 or a per-row mix of them)::

    w̃ = s · (lo + h(V) · (hi - lo)),   h(V) = clamp(sigmoid(V)·(ζ - γ) + γ, 0, 1)

and ``V`` minimizes the layer's reconstruction error on calibration data plus an
annealed regularizer that pushes every ``h`` to 0 or 1::

    ‖W̃ x_q - W x‖² + λ Σ (1 - |2h(V) - 1|^β),   β: 20 → 2 after a warm-up without it

``x_q`` is the layer's input in the partially quantized model (earlier layers already
rounded, its own input quantizer applied) and ``W x`` the float layer's output on the float
model's input (the asymmetric reconstruction of the paper). Layers are processed in
forward order; at the end every weight is written back as ``s · level`` so the
layer's own fake quantizer reproduces the chosen levels exactly (its scales are not
recomputed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mixq.algorithms.ptq._common import (
    as_tensor,
    batches,
    columns,
    grouped_weight,
    groups_of,
    outputs_to_columns,
    quantized_input,
    require_positive,
    weight_layers,
)
from mixq.algorithms.ptq._stream import visit_layers
from mixq.errors import MixqError
from mixq.formats import NumberFormat
from mixq.modes import eval_mode
from mixq.nn import QConv2d, QLinear


@dataclass(frozen=True)
class RoundingConfig:
    """The learned rounding AdaRound and BRECQ share: ``iterations`` Adam steps, the regularizer's weight
    ``reg_weight`` (λ) and exponent ``beta_start`` → ``beta_end`` after the first ``warmup`` fraction of the
    steps (:func:`beta_at`), and the rectified sigmoid's stretch ``zeta`` / ``gamma``
    (:func:`rectified_sigmoid`)."""

    iterations: int = 500
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    zeta: float = 1.1
    gamma: float = -0.1

    def _check_warmup(self, where: str) -> None:
        if not 0.0 <= self.warmup < 1.0:
            raise MixqError(f"{where}.warmup: must be in [0, 1), got {self.warmup!r}")


@dataclass(frozen=True)
class AdaRoundConfig(RoundingConfig):
    """AdaRound settings (and :class:`RoundingConfig`'s). ``columns``: input columns (output positions) kept
    per layer, sampled evenly over at most ``images`` calibration images; ``batch``: columns per Adam step.
    ``max_bits``: layers whose weight formats are all wider are left at round-to-nearest
    (``None``: every layer)."""

    iterations: int = 500
    batch: int = 256
    columns: int = 4096
    images: int = 128
    lr: float = 1e-2
    max_bits: int | None = None
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        require_positive(self, "adaround", ("iterations", "batch", "columns", "images", "batch_size"))
        self._check_warmup("adaround")
        if self.zeta <= 1.0 or self.gamma >= 0.0:
            raise MixqError("adaround.zeta/gamma: need zeta > 1 and gamma < 0 (stretched sigmoid)")


# ---------------------------------------------------------------------------------------------- math
def rounding_grid(w: torch.Tensor, formats: tuple[NumberFormat, ...], row_scheme: torch.Tensor,
                  scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every weight: the level below (``lo``), the gap to the level above (``gap``), both times
    the row's scale, and the rest ``(w/s - lo) / (hi - lo)`` in [0, 1] (0 where ``hi == lo``, i.e.
    clipped weights).

    ``scales`` is ``(len(formats), rows, 1, ...)`` (a quantized layer's ``w_scales``).

    >>> from mixq.formats import FixedPoint
    >>> lo, gap, rest = rounding_grid(torch.tensor([[0.26, -1.0, 5.0]]), (FixedPoint(4, narrow=True),),
    ...                               torch.tensor([0]), torch.tensor([[[0.5]]]))
    >>> lo.tolist(), gap.tolist(), [round(r, 2) for r in rest.flatten().tolist()]
    ([[0.0, -1.0, 3.5]], [[0.5, 0.5, 0.0]], [0.52, 0.0, 0.0])
    """
    w = w.detach().double()
    lo_out = torch.zeros_like(w)
    gap_out = torch.zeros_like(w)
    rest_out = torch.zeros_like(w)
    for k, fmt in enumerate(formats):
        rows = (row_scheme == k).nonzero().flatten()
        if rows.numel() == 0:
            continue
        lv = torch.as_tensor(np.asarray(fmt.levels(), dtype=np.float64))
        s = scales[k].double().index_select(0, rows)
        u = w.index_select(0, rows) / s
        hi_idx = torch.searchsorted(lv, u.contiguous(), right=True).clamp(0, lv.numel() - 1)
        lo_idx = (hi_idx - 1).clamp(min=0)
        below = u < lv[0]
        above = u >= lv[-1]
        lo_idx = torch.where(above, torch.full_like(lo_idx, lv.numel() - 1), lo_idx)
        hi_idx = torch.where(above | below, lo_idx, hi_idx)
        lo = lv[lo_idx]
        gap = lv[hi_idx] - lo
        rest = torch.where(gap > 0, (u - lo) / gap.clamp(min=1e-300), torch.zeros_like(u)).clamp(0.0, 1.0)
        lo_out.index_copy_(0, rows, lo * s)
        gap_out.index_copy_(0, rows, gap * s)
        rest_out.index_copy_(0, rows, rest)
    return lo_out, gap_out, rest_out


def rectified_sigmoid(v: torch.Tensor, zeta: float = 1.1, gamma: float = -0.1) -> torch.Tensor:
    """``clamp(sigmoid(v)·(ζ - γ) + γ, 0, 1)``: reaches exactly 0 and 1, so rounding can settle."""
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def init_logits(rest: torch.Tensor, zeta: float = 1.1, gamma: float = -0.1) -> torch.Tensor:
    """``V`` with ``h(V) = rest`` (the float weight) at the start."""
    p = ((rest - gamma) / (zeta - gamma)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def beta_at(step: int, cfg: RoundingConfig) -> float | None:
    """The regularizer's exponent at ``step`` (None during warm-up: no regularizer)."""
    start = int(cfg.warmup * cfg.iterations)
    if step < start:
        return None
    rel = (step - start) / max(1, cfg.iterations - start)
    return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * max(0.0, 1.0 - rel)


def optimize_rounding(lo: torch.Tensor, gap: torch.Tensor, rest: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      cfg: AdaRoundConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Learn up/down for a grouped layer: ``lo``, ``gap``, ``rest`` are ``(G, Og, Kg)``, ``x`` the input
    columns ``(G, Kg, N)``, ``y`` the target outputs ``(G, Og, N)``. Returns the 0/1 choices ``(G, Og, Kg)``
    and the reconstruction errors (mean over columns of the squared error summed over outputs)
    of nearest rounding and of the learned rounding on all ``N`` columns."""
    gen = torch.Generator().manual_seed(cfg.seed)
    lo32, gap32 = lo.float(), gap.float()
    x, y = x.float().contiguous(), y.float().contiguous()
    n = x.shape[2]
    v = init_logits(rest.float(), cfg.zeta, cfg.gamma).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    movable = gap32 > 0
    for step in range(cfg.iterations):
        idx = torch.randint(0, n, (min(cfg.batch, n),), generator=gen)
        xb, yb = x[:, :, idx], y[:, :, idx]
        h = rectified_sigmoid(v, cfg.zeta, cfg.gamma)
        w = lo32 + h * gap32
        err = torch.bmm(w, xb) - yb
        loss = err.pow(2).sum(dim=(0, 1)).mean()
        beta = beta_at(step, cfg)
        if beta is not None:
            reg = (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()  # clipped weights (gap 0) do not matter
            loss = loss + cfg.reg_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        up = (rectified_sigmoid(v, cfg.zeta, cfg.gamma) >= 0.5) & movable
        nearest = (rest >= 0.5) & movable

        def rec(choice: torch.Tensor) -> float:
            w = lo32 + choice.float() * gap32
            total = 0.0
            for i in range(0, n, 4096):
                total += float((torch.bmm(w, x[:, :, i : i + 4096]) - y[:, :, i : i + 4096]).pow(2).sum())
            return total / max(n, 1)

        info = {"rec_nearest": rec(nearest), "rec_adaround": rec(up)}
    return up, info


# ---------------------------------------------------------------------------------------------- model
def _picks(layer_index: int, batch_index: int, images: int, positions: int, per_image: int,
           seed: int) -> torch.Tensor:
    """The sampled column indices of one batch (image-major, as :func:`columns` orders them);
    deterministic in (seed, layer, batch) so float targets and quantized inputs line up."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + layer_index * 10_007 + batch_index)
    k = min(per_image, positions)
    return torch.cat([i * positions + torch.randperm(positions, generator=gen)[:k] for i in range(images)])


def _positions(y: torch.Tensor) -> int:
    """Output positions per image of a layer output."""
    return int(y.shape[2] * y.shape[3]) if y.dim() == 4 else int(y.numel() // (y.shape[0] * y.shape[-1]))


@torch.no_grad()
def collect_float_targets(fmodel: nn.Module, names: list[str], data: torch.Tensor,
                          cfg: AdaRoundConfig) -> dict[str, torch.Tensor]:
    """Every named float layer's output without bias, ``(G, Og, N)``, at the sampled positions — one
    forward pass over the AdaRound images for all layers."""
    images = data[: cfg.images]
    per_image = max(1, math.ceil(cfg.columns / images.shape[0]))
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    state = {"batch": 0}
    handles = []
    for li, n in enumerate(names):
        layer = fmodel.get_submodule(n)

        def hook(mod: nn.Module, _inp: object, y: torch.Tensor, li: int = li, n: str = n) -> None:
            b = getattr(mod, "bias", None)
            if isinstance(b, torch.Tensor):
                y = y - (b.reshape(1, -1, 1, 1) if y.dim() == 4 else b)
            picks = _picks(li, state["batch"], y.shape[0], _positions(y), per_image, cfg.seed)
            out[n].append(outputs_to_columns(mod, y)[:, :, picks].clone())
        handles.append(layer.register_forward_hook(hook))
    try:
        for bi, xb in enumerate(batches(images, cfg.batch_size)):
            state["batch"] = bi
            fmodel(xb)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v, dim=2) for n, v in out.items()}


@torch.no_grad()
def adaround_layer(layer: QConv2d | QLinear, x: torch.Tensor, y: torch.Tensor,
                   cfg: AdaRoundConfig) -> dict[str, float]:
    """Learn the rounding of one quantized layer from input columns ``x`` and targets ``y`` and write the
    rounded weights (``s · level``) into ``layer.weight``. Returns the reconstruction errors."""
    g = groups_of(layer)
    lo, gap, rest = rounding_grid(layer.weight, layer.formats, layer.row_scheme, layer.w_scales)
    with torch.enable_grad():
        up, info = optimize_rounding(grouped_weight(lo, g), grouped_weight(gap, g), grouped_weight(rest, g),
                                     x, y, cfg)
    w = lo + up.reshape(lo.shape).double() * gap
    layer.weight.copy_(w.to(layer.weight.dtype))
    return info


def adaround(qmodel: nn.Module, fmodel: nn.Module, calib: torch.Tensor,
             cfg: AdaRoundConfig | None = None) -> dict[str, dict[str, float]]:
    """AdaRound every quantized layer of ``qmodel`` (in place), in forward order.

    ``fmodel`` is the float model ``qmodel`` was converted from (same layer names, BN folded,
    after any equalization): it supplies the reconstruction targets. Activation quantizers
    must be calibrated already. Returns per layer the reconstruction error with nearest and
    with learned rounding.
    """
    cfg = cfg or AdaRoundConfig()
    data = as_tensor(calib)
    fmodel = fmodel.eval()
    with eval_mode(qmodel):
        return _adaround(qmodel, fmodel, data, cfg)


def _adaround(qmodel: nn.Module, fmodel: nn.Module, data: torch.Tensor,
              cfg: AdaRoundConfig) -> dict[str, dict[str, float]]:
    report: dict[str, dict[str, float]] = {}
    names = weight_layers(qmodel, data, cfg.max_bits)
    targets = collect_float_targets(fmodel, names, data, cfg)
    index = {n: i for i, n in enumerate(names)}
    images = data[: cfg.images]
    per_image = max(1, math.ceil(cfg.columns / images.shape[0]))

    def visit(name: str, layer: nn.Module, inputs: list[torch.Tensor]) -> None:
        assert isinstance(layer, QConv2d | QLinear)
        xs = []
        for bi, xb in enumerate(inputs):
            cq = columns(layer, quantized_input(layer, xb))
            picks = _picks(index[name], bi, xb.shape[0], cq.shape[2] // xb.shape[0], per_image, cfg.seed)
            xs.append(cq[:, :, picks].clone())
        report[name] = adaround_layer(layer, torch.cat(xs, dim=2), targets.pop(name), cfg)

    # one streamed pass over the model (each layer's input computed once, with the layers before it
    # already rounded); a model FX cannot trace takes one early-stopped forward per layer instead
    visit_layers(qmodel, list(batches(images, cfg.batch_size)), names, visit, desc="ptq adaround")
    return report
