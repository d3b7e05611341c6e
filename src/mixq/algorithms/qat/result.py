"""What a QAT or pruning run leaves behind, and how later stages read it.

A run folder holds:

* ``plan.json``   the `QuantPlan` the model was trained for (with provenance in ``meta``);
* ``model.pt``    the state dict of the plain quantized model (`QConv2d`/`QLinear`/`QAct`,
                  BN folded, learned scales in ``w_scales`` and ``input_quant.scale``);
* ``result.json`` accuracy, size, time, history and the config;
* ``checkpoint.pt`` the training state (``--resume`` continues from it).

:func:`load_result` rebuilds the quantized model from the float model, the
plan and ``model.pt``: exactly ``to_quantized(fold_bn(model), plan)`` with the
trained state loaded, which is what the integer engine and the hardware model read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mixq.algorithms.qat.config import QatError
from mixq.graph.bnfold import fold_bn
from mixq.graph.convert import to_quantized
from mixq.io import atomic_write_json, atomic_write_torch
from mixq.nn import QAct
from mixq.plan import QuantPlan, load_plan, save_plan
from mixq.validate import read_torch

PLAN_FILE = "plan.json"
MODEL_FILE = "model.pt"
RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"


def save_result(out_dir: Path, model: nn.Module, plan: QuantPlan, summary: dict[str, Any]) -> dict[str, Path]:
    """Write ``plan.json``, ``model.pt`` and ``result.json`` atomically; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"model": out_dir / MODEL_FILE, "plan": out_dir / PLAN_FILE, "result": out_dir / RESULT_FILE}
    atomic_write_torch(paths["model"], {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()})
    save_plan(plan, paths["plan"])
    atomic_write_json(paths["result"], summary)
    return paths


def load_quantized(float_model: nn.Module, plan: QuantPlan, state_path: Path) -> nn.Module:
    """``to_quantized(fold_bn(float_model), plan)`` with the state dict at ``state_path`` (eval mode)."""
    if not state_path.is_file():
        raise QatError(f"{state_path}: model file not found")
    state = read_torch(state_path, what="readable state dict", error=QatError)
    if not isinstance(state, dict):
        raise QatError(f"{state_path}: holds a {type(state).__name__}, not a state dict")
    q = to_quantized(fold_bn(float_model), plan)
    own = q.state_dict()
    for k, v in own.items():
        if k not in state:
            raise QatError(f"{state_path}: no tensor {k!r}: the file does not match the plan and model")
        if tuple(state[k].shape) != tuple(v.shape):
            raise QatError(f"{state_path}: tensor {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    extra = sorted(set(state) - set(own))
    if extra:
        raise QatError(f"{state_path}: unexpected tensor {extra[0]!r}: the file does not match the plan and model")
    q.load_state_dict(state, strict=True)
    for m in q.modules():
        if isinstance(m, QAct):
            m.mode, m.calibrated = "quant", True
    return q.eval()


def load_result(out_dir: str | Path, float_model: nn.Module) -> tuple[nn.Module, QuantPlan]:
    """The trained quantized model and its plan from a run folder."""
    d = Path(out_dir)
    plan = load_plan(d / PLAN_FILE)
    return load_quantized(float_model, plan, d / MODEL_FILE), plan
