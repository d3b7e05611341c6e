"""From a float model and a `QuantPlan` to a model ready for QAT, and plans for low-bit networks.

:func:`prepare_qat` starts QAT from post-training quantization: BN is folded,
the planned layers are swapped in, the activations are calibrated on a few
images and the weight scales computed (both with ``QatConfig.init_observer``);
then every planned layer becomes a `QatConv2d` / `QatLinear` whose steps start
at those scales. With ``bn = "train"`` the layers keep their unfolded weights
and carry their BatchNorm (folded on every forward).

:func:`low_bit_plan` is the default policy for binary, ternary and other
low-bit networks: every compute layer gets the given formats except the first
and the last, which stay at 8 bits (``first_last_bits``; ``None`` disables it).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from mixq.algorithms.qat.config import QatConfig, QatError
from mixq.algorithms.qat.modules import QatAct, QatConv2d, QatLinear
from mixq.formats import FixedPoint, NumberFormat
from mixq.graph import ops
from mixq.graph.bnfold import fold_bn, foldable_pairs
from mixq.graph.convert import calibrate, compute_layer_names, to_quantized
from mixq.graph.residual import ATTR as RESIDUALS
from mixq.graph.residual import stream_readers, tie_residual_scales
from mixq.graph.swap import set_submodule
from mixq.nn import QAct, QConv2d, QLinear
from mixq.plan import LayerPlan, QuantPlan, uniform_plan


def signed_input_layers(model: nn.Module, sample: torch.Tensor) -> set[str]:
    """Compute layers whose input takes negative values on ``sample`` (they need signed activations)."""
    return ops.signed_input_layers(model, sample)[1]


def low_bit_plan(model_name: str, model: nn.Module, sample: torch.Tensor, weight: NumberFormat,
                 act: NumberFormat | None, *, weight_alt: NumberFormat | None = None, alt_ratio: float = 0.0,
                 first_last_bits: int | None = 8, weight_granularity: str = "channel") -> QuantPlan:
    """A uniform plan with the first and last compute layer at ``first_last_bits`` (weights and inputs).

    Activation formats are made signed for layers whose input is signed on
    ``sample`` (e.g. the first layer, fed normalised images).
    """
    names = list(compute_layer_names(model))
    if not names:
        raise QatError(f"model {model_name!r} has no Conv2d or Linear layer to quantize")
    signed = signed_input_layers(model, sample)
    overrides: dict[str, LayerPlan] = {}
    if first_last_bits is not None:
        for name in {names[0], names[-1]}:
            overrides[name] = LayerPlan(weight=FixedPoint(first_last_bits, signed=True, narrow=True),
                                        act=FixedPoint(first_last_bits, signed=name in signed),
                                        weight_granularity="channel")
    return uniform_plan(model_name, names, weight, act, signed_inputs=signed, overrides=overrides,
                        weight_granularity=weight_granularity, weight_alt=weight_alt, alt_ratio=alt_ratio)


def check_rows_assigned(plan: QuantPlan) -> None:
    """Raise `QatError` for a layer with a second row format whose rows are not assigned yet."""
    for name, lp in plan.items():
        if lp.weight_alt is not None and lp.alt_rows is None and 0.0 < lp.alt_ratio < 1.0:
            raise QatError(f"layers.{name}.alt_rows: rows of weight_alt are not assigned "
                           "(assign them with mixq.algorithms.msq before QAT)")


def _init_plan(plan: QuantPlan, observer: str | None) -> QuantPlan:
    if observer is None:
        return plan
    layers = {}
    for name, lp in plan.items():
        w_obs = lp.weight_observer if lp.weight_granularity == "group" else observer
        layers[name] = lp.with_(weight_observer=w_obs, act_observer=observer)
    return dataclasses.replace(plan, layers=layers, meta=dict(plan.meta))


def prepare_qat(model: nn.Module, plan: QuantPlan, calib: torch.Tensor, cfg: QatConfig,
                masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A QAT-ready copy of the float ``model`` under ``plan`` (training mode; ``model`` is not changed).

    ``calib`` (float inputs) calibrates the initial activation scales; ``masks``
    (layer name -> 0/1 tensor of the weight's shape) fixes pruned weights at zero.
    """
    check_rows_assigned(plan)
    streams = plan.residual_bits is not None
    if streams and cfg.bn == "train":
        raise QatError("residual_bits: residual-stream quantizers train with bn='fold' (--bn fold), not 'train': "
                       "they sit on the folded network's graph")
    masks = dict(masks or {})
    unknown = sorted(set(masks) - set(plan))
    if unknown:
        raise QatError(f"masks: layer(s) {', '.join(unknown)} are not in the plan")
    float_model = copy.deepcopy(model).eval()
    folded = fold_bn(float_model)
    q = to_quantized(folded, _init_plan(plan, cfg.init_observer))
    calibrate(q, ops.batches(calib, 256))
    bn_of: dict[str, str] = {}
    if cfg.bn == "train":
        bn_of = dict(foldable_pairs(float_model))
        out = copy.deepcopy(float_model)
    elif streams:  # the graph with the stream quantizers, its layers swapped below
        tie_residual_scales(q)
        out = copy.deepcopy(q)
    else:
        out = copy.deepcopy(folded)
    for name, lp in plan.items():
        if lp.weight is None and lp.act is None:
            continue
        src = q.get_submodule(name)
        bn, raw = None, None
        if name in bn_of:
            bn = copy.deepcopy(float_model.get_submodule(bn_of[name]))
            raw = float_model.get_submodule(name)
            set_submodule(out, bn_of[name], nn.Identity())
        mask = masks.get(name)
        new: QatConv2d | QatLinear
        if isinstance(src, QConv2d):
            new = QatConv2d(src, cfg.weight_quant, cfg.act_quant, bn=bn, mask=mask, raw=raw)  # type: ignore[arg-type]
        elif isinstance(src, QLinear):
            new = QatLinear(src, cfg.weight_quant, cfg.act_quant, bn=bn, mask=mask, raw=raw)  # type: ignore[arg-type]
        else:  # pragma: no cover - to_quantized only makes these two
            raise QatError(f"layers.{name}: {type(src).__name__} cannot be trained")
        new.plan = lp
        set_submodule(out, name, new)
    if streams:
        train_streams(out, cfg.act_quant)
    return out.train()


def train_streams(model: nn.Module, act_quant: str) -> int:
    """Make ``model``'s residual-stream quantizers (:mod:`mixq.graph.residual`) trainable `QatAct`\\ s, in place;
    each shares its learned step with the layers reading it whose input quantizers have its format and scale (as
    `tie_residual_scales` left them), so the trained readers still take the stream's codes with no requantizer.
    Returns the number of streams so tied."""
    holder = getattr(model, RESIDUALS, None)
    if not isinstance(holder, nn.ModuleDict):
        return 0
    for key, m in list(holder.items()):
        if isinstance(m, QAct) and not isinstance(m, QatAct):
            holder[key] = QatAct(m, act_quant)
    tied = 0
    for q, readers in stream_readers(model):
        same = [iq for iq in readers if isinstance(iq, QatAct) and torch.equal(iq.scale, q.scale)]
        for iq in same:
            if isinstance(q, QatAct) and q.log_scale is not None:
                iq.log_scale = q.log_scale  # one parameter: the steps stay equal through training
        tied += bool(same)
    return tied
