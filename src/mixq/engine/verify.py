"""``verify``: the fake-quant model, its hardware-faithful mode and the integer engine, compared.

Three runs over the same inputs:

* the **integer engine** (:class:`~mixq.engine.runner.IntEngine`),
* the **hardware-faithful** fake-quant model (:func:`~mixq.engine.faithful.faithful`),
  which must equal the engine exactly: ``mismatching_outputs == 0`` and zero
  mismatches in every layer is the bit-exactness claim;
* the ordinary **fake-quant** model, which differs from the hardware by design
  (round half up with a dyadic multiplier instead of ``round(x / s)``, a bias on the
  accumulator grid, rescaled residual adds). For it the report gives, per layer,
  the activation codes that differ, the largest difference of the layer outputs,
  and a *local* check: the integer layer run on the fake-quant model's own input
  codes differs from the fake-quant layer (in float64) by at most half an
  accumulator step (the bias rounding) — so every global difference comes from
  rounding decisions that amplify through the network, not from wrong arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.engine.convert import to_integer
from mixq.engine.faithful import FaithfulLayer, faithful, grouped_conv2d
from mixq.engine.kernels import DotProgram
from mixq.engine.model import IntModel
from mixq.engine.runner import IntEngine, dequantize
from mixq.formats import format_from_dict
from mixq.graph.ops import batches
from mixq.modes import eval_mode
from mixq.nn import QConv2d, QLinear


class _Capture:
    """Forward hooks that copy the inputs / outputs of the named modules."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.values: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str) -> Any:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            self.values[name] = (inp[0].detach().clone(), out.detach().clone())
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def verify(qmodel: nn.Module, x: torch.Tensor, *, imodel: IntModel | None = None, batch_size: int = 8,
           products: str = "shift_add", local_images: int = 2, **options: Any) -> dict[str, Any]:
    """Compare fake quant, hardware-faithful fake quant and the integer engine on ``x``; a JSON-able dict.

    ``options`` go to :func:`~mixq.engine.convert.to_integer` when ``imodel`` is not given.
    The local layer check runs on the first ``local_images`` inputs.
    Keys: ``exact`` (engine == faithful everywhere), ``mismatching_outputs``,
    ``argmax_agreement`` (engine vs ordinary fake quant), ``layers`` (per compute layer).
    """
    with eval_mode(qmodel):
        im = imodel if imodel is not None else to_integer(qmodel, x, **options)
        engine = IntEngine(im, products)
        fm = faithful(qmodel, im)
        fq_layers = {n: m for n, m in qmodel.named_modules() if isinstance(m, QConv2d | QLinear)}
        f_layers = {m.int_name: m for m in fm.modules() if isinstance(m, FaithfulLayer)}
        computes = [n for n in im.compute_nodes()]
        keep = {n.name for n in computes} | {n.inputs[0] for n in computes}
        stats: dict[str, dict[str, Any]] = {n.name: _empty(n) for n in computes}
        total = {"outputs": 0, "mismatch": 0, "agree": 0, "agree_faithful": 0, "images": 0, "max_abs": 0.0,
                 "max_ref": 0.0}
        saturated: dict[str, int] = {}
        for xb in batches(x, batch_size):
            cap_fq = _Capture(fq_layers)
            cap_f = _Capture(f_layers)
            try:
                y_fq = qmodel(xb).to(torch.float64)
                y_f = fm(xb)
            finally:
                cap_fq.close()
                cap_f.close()
            r = engine(xb, keep=keep)
            for k, v in r.saturated.items():
                saturated[k] = saturated.get(k, 0) + v
            y_e = r.real()
            total["outputs"] += y_e.numel()
            total["mismatch"] += int((y_e != y_f).sum())
            total["agree"] += int((y_e.argmax(1) == y_fq.argmax(1)).sum())
            total["agree_faithful"] += int((y_e.argmax(1) == y_f.argmax(1)).sum())
            total["images"] += xb.shape[0]
            total["max_abs"] = max(total["max_abs"], float((y_e - y_fq).abs().max()))
            total["max_ref"] = max(total["max_ref"], float(y_fq.abs().max()))
            n_local = max(0, min(local_images - int(total["images"]) + xb.shape[0], xb.shape[0]))
            for node in computes:
                _compare_layer(node, stats[node.name], r.values, cap_f.values.get(node.name),
                               cap_fq.values.get(node.name), engine, f_layers.get(node.name), n_local)
    layers = [_finish(s) for s in stats.values()]
    n_img = max(total["images"], 1)
    return {
        "images": total["images"],
        "exact": total["mismatch"] == 0 and all(s["mismatches"] == 0 for s in layers),
        "mismatching_outputs": total["mismatch"],
        "total_outputs": total["outputs"],
        "argmax_agreement": round(total["agree"] / n_img, 6),
        "argmax_agreement_faithful": round(total["agree_faithful"] / n_img, 6),
        "max_abs_diff_fakequant": total["max_abs"],
        "max_abs_output_fakequant": total["max_ref"],
        "saturated": saturated,
        "rounding": im.meta.get("rounding"),
        "mult_bits": im.meta.get("mult_bits"),
        "layers": layers,
    }


def _empty(node: Any) -> dict[str, Any]:
    return {"layer": node.name, "op": node.op, "acc_bits": int(node.attrs["acc_bits"]),
            "acc_budget": int(node.attrs["acc_budget"]), "mismatches": 0, "input_mismatches": 0,
            "max_diff_lsb": 0, "elements": 0, "code_flips": 0, "codes": 0, "max_code_diff": 0,
            "max_abs_diff_fakequant": 0.0, "max_abs_fakequant": 0.0, "local_max_diff_lsb": 0.0}


def _finish(s: dict[str, Any]) -> dict[str, Any]:
    s["code_flip_rate"] = round(s["code_flips"] / max(s.pop("codes"), 1), 6)
    s["local_max_diff_lsb"] = round(float(s["local_max_diff_lsb"]), 6)
    return s


def _compare_layer(node: Any, s: dict[str, Any], values: dict[str, torch.Tensor],
                   f_val: tuple[torch.Tensor, torch.Tensor] | None,
                   fq_val: tuple[torch.Tensor, torch.Tensor] | None, engine: IntEngine,
                   f_layer: FaithfulLayer | None, n_local: int) -> None:
    acc = values[node.name]
    codes = values[node.inputs[0]]
    grid = torch.from_numpy(np.asarray(node.scale, dtype=np.float64)).unsqueeze(0)
    s["elements"] += acc.numel()
    if f_val is not None and f_layer is not None:  # engine vs hardware-faithful: must be equal
        f_acc = torch.round(f_val[1] / grid).to(torch.int64)
        d = (f_acc - acc).abs()
        s["mismatches"] += int((d != 0).sum())
        s["max_diff_lsb"] = max(s["max_diff_lsb"], int(d.max()))
        f_codes = f_layer.quant.codes(f_val[0])
        s["input_mismatches"] += int((f_codes != codes).sum())
    if fq_val is None:
        return
    x_in, y_fq = fq_val
    qnode = engine.model.input_quantizer(node.name)
    fmt = format_from_dict(qnode.attrs["fmt"])
    fq_codes = fmt.quantize(x_in, torch.tensor(qnode.attrs["act_scale"], dtype=torch.float32))
    d = (fq_codes - codes).abs()
    s["code_flips"] += int((d != 0).sum())
    s["codes"] += d.numel()
    s["max_code_diff"] = max(s["max_code_diff"], int(d.max()))
    y_e = dequantize(acc, node.scale)
    s["max_abs_diff_fakequant"] = max(s["max_abs_diff_fakequant"], float((y_e - y_fq.double()).abs().max()))
    s["max_abs_fakequant"] = max(s["max_abs_fakequant"], float(y_fq.abs().max()))
    if f_layer is None or n_local == 0:
        return
    # local: the integer layer on the fake-quant model's own input codes vs the fake-quant layer in float64
    prog = next(k for n, k in engine.kernels if n.name == node.name)
    assert isinstance(prog, DotProgram)
    fq_codes = fq_codes[:n_local]
    local = prog([fq_codes], {}).to(torch.float64)
    xq = fq_codes.to(torch.float64) * float(qnode.scale)
    bias = torch.from_numpy(node.arrays["bias_float"].astype(np.float64))
    if f_layer.is_conv and f_layer.conv["groups"] > 1:
        ref = grouped_conv2d(xq, f_layer.weight, bias, **f_layer.conv)
    elif f_layer.is_conv:
        ref = torch.nn.functional.conv2d(xq, f_layer.weight, bias, **f_layer.conv)
    else:
        ref = torch.nn.functional.linear(xq, f_layer.weight, bias)
    s["local_max_diff_lsb"] = max(s["local_max_diff_lsb"], float((local - ref / grid).abs().max()))
