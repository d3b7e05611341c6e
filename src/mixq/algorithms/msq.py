"""MSQ: row-wise mixed schemes ("Mix and Match", Chang et al., HPCA 2021).

Within a layer a fraction ρ of the weight rows (output channels) use SP2 (two shifts and an
add on a LUT core) and the rest fixed point (a DSP core); ρ is set so both cores finish
together. SP2's levels are dense near zero, so it fits Gaussian-like rows; fixed point
fits uniform-like rows. A row goes to SP2 when SP2's quantization error is lowest
*relative* to fixed point's: rows are ranked by ``log(mse_sp2 / mse_fixed)`` (each with
its own per-row scale) and the ``round(ρ·rows)`` best get SP2.

In a :class:`~mixq.plan.QuantPlan` the primary format ``weight`` is fixed point,
``weight_alt`` SP2, ``alt_ratio`` the requested ρ; :func:`assign_rows` writes the chosen
rows into ``alt_rows``. ρ comes from the plan, or from the caller (a number, or one per
layer, e.g. from the hardware model). ``scope="global"`` spends one budget over all mixed
layers instead: the rows with the largest advantage anywhere, until a fraction ρ of the
multiply-accumulates (or rows, without MAC counts) is in SP2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq.errors import MixqError, PlanError
from mixq.formats import NumberFormat, parse_format
from mixq.graph import fold_bn
from mixq.graph.ops import signed_input_layers
from mixq.plan import LayerPlan, QuantPlan
from mixq.plan.build import with_sign
from mixq.quant import row_scheme_scores

SCOPES = ("layer", "global")


def row_advantage(w: torch.Tensor, primary: NumberFormat, alt: NumberFormat, observer: str = "minmax") -> torch.Tensor:
    """``log(mse_alt / mse_primary)`` of every row (dim 0): the more negative, the more ``alt`` fits.

    >>> from mixq.formats import FixedPoint, SumOfPowers
    >>> g = torch.Generator().manual_seed(0)
    >>> w = torch.stack([torch.randn(512, generator=g), torch.rand(512, generator=g) * 2 - 1])
    >>> adv = row_advantage(w, FixedPoint(4, narrow=True), SumOfPowers(4))
    >>> bool(adv[0] < adv[1])  # the Gaussian row suits SP2 better than the uniform row
    True
    """
    sc = row_scheme_scores(w.detach(), alt, primary, observer=observer, axis=0)
    return torch.log(sc.ratio)


def choose_rows(advantage: torch.Tensor, count: int) -> tuple[int, ...]:
    """The ``count`` rows with the lowest advantage score, ascending by index (ties: lower index first)."""
    n = advantage.numel()
    count = max(0, min(int(count), n))
    if count == 0:
        return ()
    order = sorted(range(n), key=lambda i: (float(advantage[i]), i))
    return tuple(sorted(order[:count]))


def scheme_from_errors(errors: torch.Tensor, count: int | None) -> torch.Tensor:
    """Row scheme (0: first format, 1: second) from each row's error in both formats, ``errors``
    (2, R): the ``count`` rows where the second format adds the least error, or with ``count=None``
    exactly the rows where it is smaller (ties stay in the first format).

    >>> e = torch.tensor([[1.0, 2.0, 3.0], [2.0, 1.0, 2.5]])
    >>> scheme_from_errors(e, None).tolist(), scheme_from_errors(e, 1).tolist()
    ([0, 1, 1], [0, 1, 0])
    """
    if count is None:
        return (errors[1] < errors[0]).long()
    scheme = torch.zeros(errors.shape[1], dtype=torch.long)
    rows = choose_rows(errors[1] - errors[0], count)
    if rows:
        scheme[torch.tensor(rows, dtype=torch.long)] = 1
    return scheme


AUTO = "auto"


def _ratio_for(name: str, lp: LayerPlan, ratio: float | Mapping[str, float] | None) -> float:
    if ratio is None:
        r = float(lp.alt_ratio)
    elif isinstance(ratio, Mapping):
        r = float(ratio.get(name, lp.alt_ratio))
    else:
        r = float(ratio)
    if not 0.0 <= r <= 1.0:
        raise PlanError(f"layers.{name}.alt_ratio: must be in [0, 1], got {r}")
    return r


def _weights(model: nn.Module, fold: bool) -> dict[str, torch.Tensor]:
    if fold and any(isinstance(m, _BatchNorm) for m in model.modules()):
        model = fold_bn(model)
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def assign_rows(model: nn.Module, plan: QuantPlan, ratio: float | str | Mapping[str, float] | None = None, *,
                scope: str = "layer", macs_per_row: Mapping[str, float] | None = None,
                fold: bool = True) -> QuantPlan:
    """A copy of ``plan`` whose mixed layers (those with ``weight_alt``) have ``alt_rows`` assigned.

    ``model`` is the float model the plan is for; its BatchNorms are folded first (``fold``),
    since the folded weights are the ones quantized. ``ratio`` overrides the plan's ρ (one
    number, or per layer). ``scope="global"``: ρ is a fraction of all mixed layers' work, counted
    with ``macs_per_row`` (layer → MACs of one row per input) or else one per row; each
    layer's ``alt_ratio`` becomes its actual fraction. ``ratio="auto"``: every row whose SP2 error
    is below its fixed-point error gets SP2 (the accuracy-first assignment: no row is worse off than
    in either single-format plan); each layer's ``alt_ratio`` becomes its actual fraction.
    """
    if scope not in SCOPES:
        raise MixqError(f"msq.scope: {scope!r} is not one of {', '.join(SCOPES)}")
    weights = _weights(model, fold)
    mixed = [(n, lp) for n, lp in plan.items() if lp.weight is not None and lp.weight_alt is not None]
    for n, _ in mixed:
        if n not in weights:
            raise PlanError(f"layers.{n}: the model has no Conv2d/Linear layer of that name")
    adv: dict[str, torch.Tensor] = {}
    for n, lp in mixed:
        assert lp.weight is not None and lp.weight_alt is not None
        adv[n] = row_advantage(weights[n], lp.weight, lp.weight_alt, lp.weight_observer)
    out = plan
    if isinstance(ratio, str):
        if ratio != AUTO:
            raise MixqError(f"msq.ratio: {ratio!r} is neither a number in [0, 1] nor {AUTO!r}")
        for n, lp in mixed:
            rows = tuple(int(i) for i in torch.nonzero(adv[n] < 0).flatten().tolist())
            out = out.with_layer(n, lp.with_(alt_rows=rows, alt_ratio=len(rows) / max(adv[n].numel(), 1)))
        return out.with_meta(msq={"scope": "layer", "ratio": AUTO})
    if scope == "layer":
        for n, lp in mixed:
            r = _ratio_for(n, lp, ratio)
            rows = choose_rows(adv[n], round(r * adv[n].numel()))
            out = out.with_layer(n, lp.with_(alt_rows=rows, alt_ratio=r))
        return out.with_meta(msq={"scope": scope, "ratio": ratio if not isinstance(ratio, Mapping) else dict(ratio)})
    if isinstance(ratio, Mapping):
        raise MixqError("msq: scope='global' takes one ratio, not one per layer")
    target = float(ratio) if ratio is not None else _mean_ratio(mixed)
    cand: list[tuple[float, str, int, float]] = []
    total = 0.0
    for n, _ in mixed:
        cost = float(macs_per_row[n]) if macs_per_row is not None and n in macs_per_row else 1.0
        total += cost * adv[n].numel()
        cand.extend((float(a), n, i, cost) for i, a in enumerate(adv[n].tolist()))
    cand.sort(key=lambda c: (c[0], c[1], c[2]))
    chosen: dict[str, list[int]] = {n: [] for n, _ in mixed}
    spent = 0.0
    for _, n, i, cost in cand:
        if spent + cost / 2 > target * total:
            continue  # closest total without going over by more than half a row
        chosen[n].append(i)
        spent += cost
    for n, lp in mixed:
        rows = tuple(sorted(chosen[n]))
        out = out.with_layer(n, lp.with_(alt_rows=rows, alt_ratio=len(rows) / max(adv[n].numel(), 1)))
    return out.with_meta(msq={"scope": scope, "ratio": target, "achieved": spent / max(total, 1e-12)})


def _mean_ratio(mixed: list[tuple[str, LayerPlan]]) -> float:
    return sum(lp.alt_ratio for _, lp in mixed) / max(len(mixed), 1)


@dataclass(frozen=True)
class MSQConfig:
    """How :func:`msq_plan` builds a plan: ``bits``-bit fixed point (narrow) rows beside ``bits``-bit SP2
    rows at ratio ρ; ``first_last`` gives the first and last layer one format (e.g. ``fixed8n``;
    ``None``: they are mixed like the others); ``act`` the activation format (signedness is set per
    layer from a sample)."""

    bits: int = 4
    ratio: float = 0.5
    scope: str = "layer"
    act: str = "ufixed8"
    first_last: str | None = "fixed8n"
    weight_observer: str = "mse"
    act_observer: str = "minmax"
    granularity: str = "channel"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise MixqError(f"msq.ratio: must be in [0, 1], got {self.ratio}")
        if self.scope not in SCOPES:
            raise MixqError(f"msq.scope: {self.scope!r} is not one of {', '.join(SCOPES)}")


def msq_plan(model_name: str, model: nn.Module, sample: torch.Tensor, cfg: MSQConfig | None = None,
             ratio: float | Mapping[str, float] | None = None) -> QuantPlan:
    """A plan with MSQ on every Conv/Linear layer (rows assigned), the first/last policy applied.

    ``ratio`` (one number or per layer, e.g. from the hardware model) overrides ``cfg.ratio``.
    """
    cfg = cfg or MSQConfig()
    fixed = parse_format(f"fixed{cfg.bits}n")
    sp2 = parse_format(f"sp2_{cfg.bits}")
    act = parse_format(cfg.act)
    order, signed = signed_input_layers(model, sample)
    if not order:
        raise MixqError(f"model {model_name!r} has no Conv2d or Linear layer to quantize")
    edge = {order[0], order[-1]} if cfg.first_last is not None else set()
    layers: dict[str, LayerPlan] = {}
    for n in order:
        a = with_sign(act, n in signed)
        if n in edge:
            assert cfg.first_last is not None
            layers[n] = LayerPlan(weight=parse_format(cfg.first_last), weight_granularity=cfg.granularity,
                                  weight_observer=cfg.weight_observer, act=a, act_observer=cfg.act_observer)
        else:
            base = ratio if isinstance(ratio, float | int) else cfg.ratio
            r = float(ratio.get(n, base)) if isinstance(ratio, Mapping) else float(base)
            layers[n] = LayerPlan(weight=fixed, weight_alt=sp2, alt_ratio=r, weight_granularity=cfg.granularity,
                                  weight_observer=cfg.weight_observer, act=a, act_observer=cfg.act_observer)
    plan = QuantPlan(model=model_name, layers=layers, meta={"made_by": "mixq.algorithms.msq.msq_plan"})
    return assign_rows(model, plan, ratio if ratio is not None else None, scope=cfg.scope)
