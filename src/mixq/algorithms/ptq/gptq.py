"""GPTQ / OBQ rounding (Frantar et al., "Optimal Brain Compression", NeurIPS 2022; "GPTQ", ICLR 2023)
for any per-row grid: fixed point, SP2, power of two, or MSQ's mix of them in one layer.

A layer's output error under a weight change ``Δ`` is, exactly, over the calibration inputs ``x``::

    Σ_rows Δ_r H Δ_rᵀ,      H = Σ x xᵀ   (input columns after the layer's own input quantizer)

GPTQ quantizes the input columns one at a time (largest ``H_jj`` first) and moves the error of
each onto the columns not yet quantized, through the Cholesky factor of ``H⁻¹`` — the optimal
update for that quadratic form. The rows never interact: every row is quantized on its own grid
(its format, its scale), which is what makes the method fit mixed schemes: for an MSQ layer both
formats are run on every row and each row keeps the one with the smaller ``Δ_r H Δ_rᵀ``
(``rows="auto"``), or the requested number of SP2 rows goes to the rows where SP2 costs least
(``rows="count"``) — the exact output-error version of MSQ's row assignment, which the diagonal
approximation of :mod:`~mixq.algorithms.ptq.scales` cannot give (it drops the correlations
between neighbouring pixels and channels).

Layers run in forward order on the partly quantized model (each ``H`` from inputs that the
earlier, already rounded, layers produce); the weights are written back as ``scale · level`` with
each row's chosen scale stored in the layer, so its fake quantizer reproduces the chosen levels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixq.algorithms.msq import scheme_from_errors
from mixq.algorithms.ptq._common import (
    as_tensor,
    batches,
    columns,
    grouped_weight,
    groups_of,
    quantized_input,
    require_positive,
    weight_layers,
)
from mixq.algorithms.ptq._stream import visit_twins
from mixq.errors import MixqError
from mixq.formats import NumberFormat
from mixq.modes import eval_mode
from mixq.nn import QConv2d, QLinear
from mixq.quant import snap
from mixq.quant.observers import ROW_SCALE_FLOOR_BITS, unit_max

ROWS = ("plan", "count", "auto")  # MSQ rows: keep, re-choose the same number, or free per row


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ settings. ``images``: calibration images whose layer inputs build ``H``; ``asymmetric``:
    also try fitting the float model's output (needs the float model; see :func:`gptq`) besides the
    layer's own float weights on its quantized input, each row keeping what generalizes better;
    ``damp``: added to ``H``'s diagonal as a fraction of its mean (for GPTQ's updates);
    ``target_damp``: the same
    for the float target's least-squares weights — a ridge that keeps ``W*`` near ``W`` where the
    calibration images cannot pin it down (the sweep behind the default is in
    benchmarks/results/design_measurements.md, "GPTQ"); ``act_order``: quantize columns by
    decreasing ``H_jj``; ``holdout``: make every row's choices out of sample (see
    :func:`gptq_layer`); ``scale_ratios``: candidate row scales (fractions of the row's largest
    weight) tried beside the layer's own; ``block``: columns per lazy update; ``max_bits``: layers
    whose formats are all wider stay at round-to-nearest (``None``: every layer)."""

    images: int = 128
    asymmetric: bool = True
    damp: float = 0.01
    target_damp: float = 3.0
    act_order: bool = True
    holdout: bool = True
    scale_ratios: tuple[float, ...] = (1.0,)
    block: int = 128
    max_bits: int | None = None
    batch_size: int = 8
    continuous: bool = False

    def __post_init__(self) -> None:
        require_positive(self, "gptq", ("images", "block", "batch_size"), ("target_damp",))
        if not 0.0 <= self.damp < 1.0:
            raise MixqError(f"gptq.damp: must be in [0, 1), got {self.damp!r}")
        if not all(0.0 < r <= 1.0 for r in self.scale_ratios):
            raise MixqError(f"gptq.scale_ratios: each must be in (0, 1], got {self.scale_ratios!r}")


# ---------------------------------------------------------------------------------------------- math
def row_errors(delta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``Δ_r H Δ_rᵀ`` for every row: ``delta`` (G, O, K), ``h`` (G, K, K) -> (G, O).

    >>> row_errors(torch.tensor([[[1.0, -1.0]]]), torch.tensor([[[2.0, 1.0], [1.0, 2.0]]])).tolist()
    [[2.0]]
    """
    return (torch.bmm(delta, h) * delta).sum(dim=2)


def _damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    """``H + λI`` per group, ``λ = damp · mean(diag H)``."""
    mean = h.diagonal(dim1=1, dim2=2).mean(dim=1).clamp(min=1e-12)[:, None, None]
    return h + max(damp, 1e-8) * mean * torch.eye(h.shape[-1], dtype=h.dtype)


def _inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` per group, ``λ = damp · mean(diag H)`` (raised until
    the factorization succeeds)."""
    d = max(damp, 1e-8)
    for _ in range(12):
        chol, info = torch.linalg.cholesky_ex(_damped(h, d))
        if int(info.max()) == 0:
            inv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info.max()) == 0:
                return u
        d *= 10.0
    raise MixqError("gptq: the input Hessian is not positive definite even with damping")


@dataclass(frozen=True)
class Factor:
    """What GPTQ needs of a Hessian, computed once and reused for every grid: the column order
    (``perm``, act-order), the inputs that never fire (``dead``), and the upper Cholesky factor of
    the damped inverse in that order (``u``)."""

    perm: torch.Tensor
    dead: torch.Tensor
    u: torch.Tensor


def factor(h: torch.Tensor, damp: float = 0.01, act_order: bool = True) -> Factor:
    """:class:`Factor` of the input Hessian ``h`` (G, K, K)."""
    h = h.detach().double()
    g, k = h.shape[0], h.shape[-1]
    dead = h.diagonal(dim1=1, dim2=2) == 0
    if bool(dead.any()):
        h = h + torch.diag_embed(dead.double())
    perm = torch.argsort(h.diagonal(dim1=1, dim2=2), dim=1, descending=True) if act_order else \
        torch.arange(k).expand(g, k)
    h = torch.gather(torch.gather(h, 1, perm[:, :, None].expand_as(h)), 2, perm[:, None, :].expand_as(h))
    return Factor(perm, dead, _inverse_factor(h, damp))


def gptq_quantize(w: torch.Tensor, h: torch.Tensor | Factor, quant: Callable[[torch.Tensor], torch.Tensor], *,
                  damp: float = 0.01, act_order: bool = True, block: int = 128,
                  compensated: bool = False) -> torch.Tensor:
    """GPTQ of a grouped weight ``w`` (G, O, K) with input Hessian ``h`` (G, K, K), or its
    :class:`Factor` (``damp`` and ``act_order`` are then already applied); ``quant`` maps a column
    (G, O) to its grid (each row on its own). Returns the quantized weight (G, O, K), or with
    ``compensated`` each column as it was when it was quantized (the earlier columns' errors spread into
    it, not yet rounded: ``quant`` of it is the quantized column).

    Inputs that never fire (``H_jj = 0``) get weight 0. With ``h`` the identity this is round to
    nearest.
    """
    f = h if isinstance(h, Factor) else factor(h, damp, act_order)
    k = w.shape[2]
    w = w.detach().double().masked_fill(f.dead[:, None, :], 0.0)
    w = torch.gather(w, 2, f.perm[:, None, :].expand_as(w))
    u = f.u
    q = torch.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, :, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i]
            qc = quant(col)
            q[:, :, i1 + i] = col if compensated else qc
            e = (col - qc) / u1[:, i, i][:, None]
            w1[:, :, i:] -= e[:, :, None] * u1[:, None, i, i:]
            err1[:, :, i] = e
        if i2 < k:
            w[:, :, i2:] -= torch.bmm(err1, u[:, i1:i2, i2:])
    out = torch.empty_like(q)
    out.scatter_(2, f.perm[:, None, :].expand_as(q), q)
    return out


def row_quantizer(formats: tuple[NumberFormat, ...], scheme: torch.Tensor,
                  scales: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A column quantizer for :func:`gptq_quantize`: row ``r`` snaps to ``formats[scheme[r]]`` at
    ``scales[scheme[r], r]``; ``scheme`` and each ``scales[k]`` are shaped (G, O)."""
    masks = [scheme == i for i in range(len(formats))]

    def quant(col: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(col)
        for fmt, m, s in zip(formats, masks, scales, strict=True):
            if bool(m.any()):
                out = torch.where(m, snap(col, fmt, s), out)
        return out
    return quant


# ---------------------------------------------------------------------------------------------- layer
@dataclass(frozen=True)
class InputStats:
    """A layer's input statistics over some calibration batches: ``h = Σ x xᵀ`` of its (quantized)
    input columns, (G, Kg, Kg) float64, and ``cross = Σ x_f xᵀ`` with the float model's input
    ``x_f`` (None: no float model, symmetric reconstruction)."""

    h: torch.Tensor
    cross: torch.Tensor | None = None

    def __add__(self, other: InputStats) -> InputStats:
        cross = None if self.cross is None or other.cross is None else self.cross + other.cross
        return InputStats(self.h + other.h, cross)


def target_weights(w: torch.Tensor, stats: InputStats, damp: float) -> torch.Tensor:
    """The weights whose output on the quantized input best fits the target: ``w`` itself (symmetric),
    or with ``stats.cross`` the least-squares ``W* = W + W (cross - H)(H + λI)⁻¹`` of the float
    layer's output on the float input — up to a per-row constant the asymmetric error is
    ``(w̃ - W*) H (w̃ - W*)ᵀ`` (AdaRound's asymmetric reconstruction, in closed form)."""
    if stats.cross is None:
        return w
    h = stats.h
    hd = _damped(h, damp)
    rhs = torch.bmm(w, stats.cross - h).transpose(1, 2)  # (G, K, O): W (cross - H), transposed
    chol, info = torch.linalg.cholesky_ex(hd)
    # a general solve where the damped Hessian is not positive definite in float64
    shift = torch.cholesky_solve(rhs, chol) if int(info.max()) == 0 else torch.linalg.solve(hd, rhs)
    return w + shift.transpose(1, 2)


@torch.no_grad()
def gptq_layer(layer: QConv2d | QLinear, stats: InputStats | tuple[InputStats, InputStats], cfg: GPTQConfig,
               rows: str = "plan") -> dict[str, Any]:
    """GPTQ of one quantized layer from its input statistics; writes ``scale · level`` into
    ``layer.weight`` (and the chosen scales into ``layer.w_scales``). Returns the output error
    ``Σ Δ_r H Δ_rᵀ`` (around :func:`target_weights`) of round-to-nearest and of the result.

    Rows are independent, so every row picks its best candidate on that error: GPTQ at the
    layer's scales, GPTQ at each of ``cfg.scale_ratios`` of the row's largest weight (a clipped
    row hands GPTQ errors it cannot spread; design_measurements.md, "GPTQ"), or plain
    round-to-nearest. ``rows`` (layers with two row formats): ``plan`` keeps ``layer.row_scheme``,
    ``count`` re-chooses the same number of second-format rows, ``auto`` gives every row the format
    with the smaller error (the new scheme goes to ``layer.row_scheme``, the rows to ``alt_rows``).

    Given ``stats`` as two halves of the calibration batches the choices are made out of sample
    (candidates fitted on the first half, judged on the second: choosing on fitted data favours
    whatever overfits it); the chosen candidates are then fitted on both halves.
    """
    if rows not in ROWS:
        raise MixqError(f"gptq rows: {rows!r} is not one of {', '.join(ROWS)}")
    fit, held = stats if isinstance(stats, tuple) else (stats, None)
    every = fit + held if held is not None else fit
    judge = held if held is not None else fit
    g = groups_of(layer)
    w0 = grouped_weight(layer.weight.detach().double(), g)
    n_rows, n_fmt = layer.weight.shape[0], len(layer.formats)
    scheme = layer.row_scheme.reshape(g, n_rows // g)
    top = w0.abs().amax(dim=2)
    # candidate scales per format: the layer's own, then the ratios of the largest weight, floored as the
    # observers floor them (a dead row's scale would otherwise blow up its bias on the accumulator grid) at the
    # largest scale any candidate has, so the rows' choices, mixed, stay above the floor of the scales they end with
    cand = [[layer.w_scales[k].double().reshape(g, -1)] + [top * r / unit_max(f) for r in cfg.scale_ratios]
            for k, f in enumerate(layer.formats)]
    lowest = max(float(c.max()) for cs in cand for c in cs) * 2.0**-ROW_SCALE_FLOOR_BITS
    cand = [[c.clamp(min=lowest) for c in cs] for cs in cand]
    nearest = grouped_weight(layer.quantized_weight().detach().double(), g)
    w_judge, w_every = target_weights(w0, judge, cfg.target_damp), target_weights(w0, every, cfg.target_damp)
    # what GPTQ fits: the layer's own weights, and with a float target also the least-squares W*
    # (which can chase upstream errors particular to the calibration images: judged out of sample)
    targets = [(False, w0)] + ([(True, target_weights(w0, fit, cfg.target_damp))] if fit.cross is not None else [])
    plans = [(t, sc) for t, _ in targets for sc in range(len(cand[0]))]  # candidate = (float target?, scale)

    factors: dict[int, Factor] = {}

    def run(jobs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], h: torch.Tensor,
            compensated: bool = False) -> list[torch.Tensor]:
        """GPTQ on one Hessian of several (weights (G, O, K), row formats (G, O), row scales (G, O)) in
        one stacked call: rows never interact, so stacking them only saves Python column loops."""
        if id(h) not in factors:  # one factorization per Hessian, shared by every candidate grid
            factors[id(h)] = factor(h, cfg.damp, cfg.act_order)
        w, fmt, sc = (torch.cat([j[i] for j in jobs], dim=1) for i in range(3))
        quant = row_quantizer(layer.formats, fmt, sc[None].expand(n_fmt, *sc.shape))
        q = gptq_quantize(w, factors[id(h)], quant, block=cfg.block, compensated=compensated)
        return list(q.split([j[0].shape[1] for j in jobs], dim=1))

    formats = range(n_fmt) if rows != "plan" and n_fmt == 2 else sorted({int(i) for i in scheme.unique()})
    rtn = {k: snap(w0, layer.formats[k], cand[k][0][..., None]) for k in formats}  # round-to-nearest
    best_err = torch.full((n_fmt, g, n_rows // g), float("inf"), dtype=torch.float64)
    best_c = torch.zeros((n_fmt, g, n_rows // g), dtype=torch.long)  # 0..len(cand)-1: GPTQ, -1: nearest
    keys = [(k, c) for k in formats for c in range(len(plans))]  # every format's every candidate, fitted at once
    jobs = [(targets[int(plans[c][0])][1], torch.full_like(scheme, k), cand[k][plans[c][1]]) for k, c in keys]
    fitted = dict(zip(keys, run(jobs, fit.h), strict=True))
    for k in formats:
        for c, q in [(-1, rtn[k])] + [(c, fitted[(k, c)]) for c in range(len(plans))]:
            e = row_errors(q - w_judge, judge.h)
            better = e < best_err[k]
            best_err[k] = torch.where(better, e, best_err[k])
            best_c[k] = torch.where(better, torch.full_like(best_c[k], c), best_c[k])
    info: dict[str, Any] = {}
    if rows != "plan" and n_fmt == 2:
        count = int((layer.row_scheme == 1).sum()) if rows == "count" else None
        new = scheme_from_errors(best_err.reshape(2, -1), count)
        scheme = new.reshape(scheme.shape)
        layer.row_scheme = new.to(layer.row_scheme.dtype)
        info["alt_rows"] = [int(i) for i in torch.nonzero(new == 1).flatten().tolist()]
    chosen = torch.gather(best_c, 0, scheme[None]).squeeze(0)  # each row's candidate in its format (-1: nearest)
    # rows left at nearest rounding keep their own scale, floored with the others
    scales = torch.stack([cs[0] for cs in cand]).to(layer.w_scales.dtype)
    q, row_w, row_sc = torch.zeros_like(w0), w0.clone(), torch.ones_like(top)
    for k, c in keys:
        t, sc = plans[c]
        rows_kc = (scheme == k) & (chosen == c)
        scales[k] = torch.where(rows_kc, cand[k][sc].to(scales.dtype), scales[k])
        row_sc = torch.where(rows_kc, cand[k][sc], row_sc)
        row_w = torch.where(rows_kc[..., None], w_every, row_w) if t else row_w
        q = torch.where(rows_kc[..., None], fitted[(k, c)], q)
    if held is not None:  # the chosen candidates fitted again on every batch (one stacked call)
        q = run([(row_w, scheme, row_sc)], every.h)[0]
    nearest_rows = [((scheme == k) & (chosen < 0))[..., None] for k in formats]
    for k, m in zip(formats, nearest_rows, strict=True):
        q = torch.where(m, rtn[k], q)
    out = q
    if cfg.continuous:  # the same fit once more, keeping each column before its rounding
        out = run([(row_w, scheme, row_sc)], every.h if held is not None else fit.h, compensated=True)[0]
        for m in nearest_rows:
            out = torch.where(m, w0, out)
    layer.w_scales = scales.reshape(layer.w_scales.shape)
    info["error_nearest"] = float(row_errors(nearest - w_every, every.h).sum())
    info["error_gptq"] = float(row_errors(q - w_every, every.h).sum())
    info["rows_nearest"] = int((chosen < 0).sum())
    # per candidate index: does it fit the float target? (index -1, round-to-nearest, reads the last: no)
    float_target = torch.tensor([t for t, _ in plans] + [False])
    info["rows_float_target"] = int(float_target[chosen].sum())
    layer.weight.copy_(out.reshape(layer.weight.shape).to(layer.weight.dtype))
    return info


def input_stats(layer: QConv2d | QLinear, inputs: list[torch.Tensor],
                float_inputs: list[torch.Tensor] | None = None) -> tuple[InputStats, InputStats]:
    """:class:`InputStats` of ``layer`` over the even and over the odd input batches (after the
    layer's input quantizer; ``float_inputs``: the float model's input of the same layer)."""
    parts: list[list[torch.Tensor | None]] = [[None, None], [None, None]]
    for b, xb in enumerate(inputs):
        # one batch's products in float32 (faster, 1e-6 relative error; design_measurements.md, "GPTQ"),
        # summed over the batches in float64
        c = columns(layer, quantized_input(layer, xb)).float()
        acc = parts[b % 2]
        terms = [torch.bmm(c, c.transpose(1, 2)).double()]
        if float_inputs is not None:
            terms.append(torch.bmm(columns(layer, float_inputs[b]).float(), c.transpose(1, 2)).double())
        for i, t in enumerate(terms):
            prev = acc[i]
            acc[i] = t if prev is None else prev + t
    halves = [InputStats(h, cross) for h, cross in parts if h is not None]
    if not halves:
        raise MixqError("gptq: no input batches")
    return halves[0], halves[-1]  # a single batch: both halves are it


def gptq(qmodel: nn.Module, calib: torch.Tensor, cfg: GPTQConfig | None = None, rows: str = "plan",
         fmodel: nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """GPTQ every quantized layer of ``qmodel`` (in place) in forward order, each on the inputs the
    already rounded layers before it produce; ``rows`` as in :func:`gptq_layer`. ``fmodel``: the
    float model ``qmodel`` was converted from (BN folded, same layer names); with
    ``cfg.asymmetric`` each layer then fits the float model's output. Activation quantizers must be
    calibrated. Returns per layer the output errors of round-to-nearest and of
    GPTQ (``alt_rows`` where rows were re-chosen)."""
    cfg = cfg or GPTQConfig()
    data = as_tensor(calib)
    if data.shape[0] == 0:
        raise MixqError("gptq: 0 calibration inputs given")
    report: dict[str, dict[str, Any]] = {}

    def visit(name: str, layers: list[nn.Module], inputs: list[list[torch.Tensor]]) -> None:
        layer = layers[0]
        assert isinstance(layer, QConv2d | QLinear)
        halves = input_stats(layer, inputs[0], inputs[1] if len(inputs) > 1 else None)
        report[name] = gptq_layer(layer, halves if cfg.holdout else halves[0] + halves[1], cfg, rows)

    with eval_mode(qmodel):
        names = weight_layers(qmodel, data, cfg.max_bits)
        models = [qmodel] if fmodel is None or not cfg.asymmetric else [qmodel, fmodel.eval()]
        visit_twins(models, list(batches(data[: cfg.images], cfg.batch_size)), names, visit, desc="ptq gptq")
    return report
