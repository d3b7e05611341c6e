"""Per-layer (and per-row-group) sensitivity of every candidate format and bit width.

The unit is the KL divergence of the model's output distribution from the FP32
model's on calibration images — the loss a quantization choice adds.

* ``hessian`` (HAWQ): ``S = 1/2 · Σ_rows tr(H_row)/n_row · ‖ΔW_row‖²``, with the trace of
  each row's block of the Hessian of that KL at the FP32 weights (the Gauss-Newton /
  Fisher matrix, positive semi-definite) estimated by Hutchinson's method
  (``E[vᵀHv]``, Rademacher ``v``), per output row, so a mixed layer's SP2 rows and
  fixed-point rows are weighed by their own curvature.
* ``measured``: the KL itself with only that layer's weights quantized (no model is
  mutated: the weights are substituted with ``torch.func.functional_call``).

Activations are always measured: the KL with only that layer's input fake-quantized
(per-tensor min-max scale over the batch). The search adds the terms of all
layers (the usual additive approximation).

Every KL is taken at a temperature ``T`` (both distributions' logits divided by it): 1 for a classifier whose
logits spread up to :data:`LOGIT_SPREAD` (per-sample standard deviation, mean over the images: CNV 4.8,
MobileNetV2 2.9), else the one that brings them to it. A model whose logits spread in the thousands (the ONNX model
zoo's MNIST CNN on raw 0-255 pixels: 2,453) has a saturated softmax: no curvature, every KL 0, so every option
looked free and the search picked 2-bit weights (22% top-1, where uniform W4A4 keeps 98.5%).

Results are cached as JSON under ``cache_dir`` keyed by a hash of the model's
weights, the calibration images and the settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mixq import progress
from mixq.algorithms.msq import row_advantage
from mixq.algorithms.search.space import SearchSpace, act_format, sp2_rows, weight_formats
from mixq.errors import MixqError
from mixq.formats import NumberFormat
from mixq.io import atomic_write_json
from mixq.modes import eval_mode
from mixq.quant import compute_scale, fake_quant, quantize_weight

METHODS = ("hessian", "measured")  # the first is the default
LOGIT_SPREAD = 8.0  # the logits' spread (per-sample std) above which the KLs are taken at a temperature


@dataclass(frozen=True)
class SensitivityConfig:
    """``method``: one of :data:`METHODS` (``hessian``: ``hutchinson_samples`` Hutchinson probes, drawn
    with ``seed``), on the first ``images`` calibration images."""

    method: str = METHODS[0]
    images: int = 32
    hutchinson_samples: int = 8
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MixqError(f"sensitivity.method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.images < 1 or self.hutchinson_samples < 1 or self.batch_size < 1:
            raise MixqError("sensitivity: images, hutchinson_samples and batch_size must be >= 1")


@dataclass(frozen=True)
class Sensitivity:
    """``weight[layer]["w{bits}r{rho}"]`` and ``act[layer]["a{bits}"]`` in KL (nats)."""

    weight: dict[str, dict[str, float]]
    act: dict[str, dict[str, float]]
    method: str
    key: str = ""
    traces: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0  # of every KL (see the module doc)

    def of(self, layer: str, wbits: int, abits: int, rho: float) -> float:
        return self.weight[layer][wkey(wbits, rho)] + self.act[layer][f"a{abits}"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wkey(wbits: int, rho: float) -> str:
    return f"w{wbits}r{round(100 * rho)}"


def compute_weights(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def cache_key(model_name: str, model: nn.Module, calib: torch.Tensor, space: SearchSpace,
              cfg: SensitivityConfig, signed: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([model_name, asdict(space), asdict(cfg), sorted(signed), LOGIT_SPREAD],
                        sort_keys=True).encode())  # the temperature rule's constant: older caches had none
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(calib[: cfg.images].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def temperature(logits: torch.Tensor) -> float:
    """The temperature of the KLs for a model whose FP32 logits on the sensitivity images are ``logits`` (dim 1 the
    classes): ``max(1, spread / LOGIT_SPREAD)``, the spread the per-sample standard deviation averaged.

    >>> temperature(torch.tensor([[0.0, 4.0], [1.0, -1.0]]))
    1.0
    >>> temperature(torch.tensor([[0.0, 4000.0], [-800.0, 0.0]]))
    212.13203...
    """
    if logits.dim() < 2 or logits.shape[1] < 2:
        return 1.0
    spread = float(logits.detach().double().std(dim=1).mean())
    return max(1.0, spread / LOGIT_SPREAD) if spread == spread else 1.0


def _kl(logits_ref: torch.Tensor, logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    p = F.log_softmax(logits_ref / t, dim=1)
    return F.kl_div(F.log_softmax(logits / t, dim=1), p, log_target=True, reduction="batchmean")


def row_groups(rows: int, wbits: int, rho: float, advantage: torch.Tensor | None
               ) -> list[tuple[NumberFormat, list[int]]]:
    """The option ``(wbits, rho)``'s rows by weight format: ``[(fixed, rows), (sp2, rows)]``, the SP2 rows chosen
    by MSQ's rule (:func:`~mixq.algorithms.search.space.sp2_rows`); a group may be empty."""
    fixed, sp2 = weight_formats(wbits)
    if rho >= 1.0:
        return [(fixed, []), (sp2, list(range(rows)))]
    if rho > 0.0 and advantage is None:
        raise MixqError(f"search: option rho={rho} needs the layer's SP2-vs-fixed row advantage")
    sp = set(sp2_rows(advantage, rho)) if rho > 0.0 and advantage is not None else set()
    return [(fixed, [r for r in range(rows) if r not in sp]), (sp2, sorted(sp))]


def quantized_weight(w: torch.Tensor, wbits: int, rho: float, advantage: torch.Tensor | None) -> torch.Tensor:
    """``w`` fake-quantized per row as the option ``(wbits, rho)`` would (SP2 rows chosen by MSQ's rule)."""
    wq = torch.empty_like(w)
    for fmt, rows in row_groups(w.shape[0], wbits, rho, advantage):
        if rows:
            wq[rows] = quantize_weight(w[rows], fmt)
    return wq


def format_code_sum(w: torch.Tensor, fmt: NumberFormat) -> int:
    """The largest sum of a row's weight code magnitudes with the rows of ``w`` in ``fmt`` at per-row min-max
    scales: times the largest input code, the integer engine's worst-case accumulator before the bias
    (:mod:`mixq.engine.convert`). 0 for no rows."""
    if not len(w):
        return 0
    x = w.detach().reshape(w.shape[0], -1)
    scale = compute_scale(x, fmt, "channel", "minmax").reshape(-1, 1).to(x.dtype)
    return int(fmt.quantize(x / scale, 1.0).abs().sum(1).max())


def weight_code_sum(w: torch.Tensor, wbits: int, rho: float, advantage: torch.Tensor | None) -> int:
    """:func:`format_code_sum` of ``w`` quantized as the option ``(wbits, rho)`` (:func:`row_groups`, as
    :func:`quantized_weight`)."""
    return max(format_code_sum(w[rows], fmt) for fmt, rows in row_groups(w.shape[0], wbits, rho, advantage))


def accumulator_bits(code_sum: int, abits: int, signed_input: bool) -> int:
    """Signed bits of an accumulator of rows whose weight codes sum to ``code_sum`` in magnitude
    (:func:`weight_code_sum`) on ``abits``-bit input codes."""
    act = act_format(abits, signed_input)
    return (code_sum * max(abs(int(act.qmin)), abs(int(act.qmax)))).bit_length() + 1  # the engine's signed_bits


def check_acc_bits(where: str, acc_bits: int) -> None:
    """Refuse an accumulator budget the integer engine would refuse (``engine.acc_bits``: 2..63 bits)."""
    if isinstance(acc_bits, bool) or not isinstance(acc_bits, int) or not 2 <= acc_bits <= 63:
        raise MixqError(f"{where}.acc_bits: must be an integer in [2, 63], got {acc_bits!r}")


def engine_refuses(code_sum: int, abits: int, signed_input: bool, acc_bits: int) -> bool:
    """Whether rows whose weight codes sum to ``code_sum`` take the worst-case accumulator within a bit of the
    integer engine's budget ``acc_bits`` (the bit: the bias, which calibration sets): the engine, and so `verify`
    and the RTL, would refuse the layer (:mod:`mixq.engine.convert`). The one rule of the ILP and the greedy."""
    return accumulator_bits(code_sum, abits, signed_input) >= acc_bits


def _hutchinson(model: nn.Module, names: list[str], x: torch.Tensor, ref: torch.Tensor,
                samples: int, seed: int, t: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-row Hessian trace of the output KL w.r.t. each layer's weight (dim 0 = rows)."""
    mods = compute_weights(model)
    params: list[torch.Tensor] = [mods[n].weight for n in names]
    was = [bool(p.requires_grad) for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        loss = _kl(ref, model(x), t)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        gen = torch.Generator().manual_seed(seed)
        acc = [torch.zeros(p.shape[0], dtype=torch.float64) for p in params]
        for i in range(samples):
            vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype) for p in params]
            hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=i < samples - 1)
            for j, (v, h) in enumerate(zip(vs, hv, strict=True)):
                acc[j] += (v * h).detach().reshape(v.shape[0], -1).sum(1).double()
    finally:
        for p, w in zip(params, was, strict=True):
            p.requires_grad_(w)
    return {n: (a / samples).clamp_min(0.0) for n, a in zip(names, acc, strict=True)}


@torch.no_grad()
def _act_sensitivity(model: nn.Module, names: list[str], x: torch.Tensor, ref: torch.Tensor,
                     abits: Sequence[int], signed: set[str], t: float = 1.0) -> dict[str, dict[str, float]]:
    mods = compute_weights(model)
    out: dict[str, dict[str, float]] = {}
    for n in names:
        out[n] = {}
        for a in abits:
            fmt = act_format(a, n in signed)

            def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], fmt: Any = fmt) -> tuple[torch.Tensor]:
                t = inp[0]
                return (fake_quant(t, fmt, compute_scale(t, fmt, "tensor", "minmax")),)

            h = mods[n].register_forward_pre_hook(hook)
            try:
                out[n][f"a{a}"] = max(float(_kl(ref, model(x), t)), 0.0)
            finally:
                h.remove()
    return out


def sensitivity(model: nn.Module, calib: torch.Tensor, space: SearchSpace, signed: Sequence[str] = (),
                cfg: SensitivityConfig | None = None, model_name: str = "model",
                cache_dir: str | Path | None = None) -> Sensitivity:
    """Sensitivity of every layer to every weight option and activation width of ``space``.

    ``model`` is the float model as it will be quantized (BN folded); it is not modified.
    """
    cfg = cfg or SensitivityConfig()
    names = list(compute_weights(model))
    if not names:
        raise MixqError(f"sensitivity: model {model_name!r} has no Conv2d/Linear layers")
    key = cache_key(model_name, model, calib, space, cfg, signed)
    path = Path(cache_dir) / f"{model_name}-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        d = json.loads(path.read_text())
        temp = float(d.get("temperature", 1.0))
        hot = {"temperature": round(temp, 3)} if temp > 1.0 else {}
        progress.log("search sensitivity", cached=str(path), layers=len(d["weight"]), **hot)
        return Sensitivity(d["weight"], d["act"], d["method"], d["key"], d.get("traces", {}), temp)
    x = calib[: cfg.images]
    with eval_mode(model):
        with torch.no_grad():
            ref = model(x)
        t = temperature(ref)
        if t > 1.0:
            progress.log("search sensitivity", temperature=round(t, 3),
                         reason=f"logits spread past {LOGIT_SPREAD:g}: a saturated softmax has no curvature")
        mods = compute_weights(model)
        weights = {n: mods[n].weight.detach() for n in names}
        adv = {n: row_advantage(weights[n], *weight_formats(4)) for n in names}
        keys = space.weight_keys()
        abits = sorted(set(space.abits))
        wsens: dict[str, dict[str, float]] = {n: {} for n in names}
        asens: dict[str, dict[str, float]] = {}
        traces: dict[str, float] = {}
        with progress.task("search sensitivity", total=len(names)) as task:
            tr = _hutchinson(model, names, x, ref, cfg.hutchinson_samples, cfg.seed, t) \
                if cfg.method == "hessian" else {}
            for n in names:  # one layer at a time: its weight options, then its activation widths
                w = weights[n]
                if cfg.method == "hessian":
                    per_row = w[0].numel()
                    traces[n] = float(tr[n].sum())
                    for wb, rho in keys:
                        d2 = (quantized_weight(w, wb, rho, adv[n]) - w).reshape(w.shape[0], -1).pow(2).sum(1)
                        wsens[n][wkey(wb, rho)] = float(0.5 * (tr[n] / per_row * d2.double()).sum())
                else:
                    with torch.no_grad():
                        for wb, rho in keys:
                            wq = quantized_weight(w, wb, rho, adv[n])
                            logits = functional_call(model, {f"{n}.weight": wq}, (x,))
                            wsens[n][wkey(wb, rho)] = max(float(_kl(ref, logits, t)), 0.0)
                asens.update(_act_sensitivity(model, [n], x, ref, abits, set(signed), t))
                task.advance(layer=n, method=cfg.method)
    out = Sensitivity(wsens, asens, cfg.method, key, traces, t)
    if path is not None:
        atomic_write_json(path, out.to_dict())
    return out
