"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model and optimizer state, the schedule, the position
(epoch, step inside the epoch, global step), the RNG states of torch, numpy and
Python, the history so far and the accumulated training time. It is written
atomically (:func:`mixq.io.atomic_write_torch`), so a run killed at any moment
leaves the previous complete checkpoint behind, and read with
:func:`mixq.validate.read_torch` (``weights_only``: no code from a file).

It also records what the run trains on, so a resume refuses a run that would
mix two trainings: the plan (``plan``, a JSON string the caller makes, e.g. the
layers of a `QuantPlan`) and a fingerprint of the training data (``data``: the
number of samples, their shape, a SHA-256 of an evenly strided sample of the
inputs and of all labels, plus whatever the caller adds, e.g. the dataset name).
Version 1 checkpoints (without these records) still resume; they cannot be checked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq import progress, validate
from mixq.io import atomic_write_torch
from mixq.training.config import TrainError

#: the envelope's format name (kept from the first QAT checkpoints, which still resume)
CHECKPOINT_FORMAT = "mixq-qat-checkpoint"
CHECKPOINT_VERSION = 2
#: versions :func:`read_checkpoint` accepts (1: no plan / data records)
READABLE_VERSIONS = (1, 2)
#: inputs hashed by :func:`data_fingerprint` (evenly spaced over the set)
FINGERPRINT_SAMPLES = 1024


@dataclass
class Position:
    """Where training stands: ``step`` batches of ``epoch`` are done (``step == 0``: none)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    train_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore_position(obj: dict[str, Any]) -> Position:
    p = obj["position"]
    return Position(epoch=int(p["epoch"]), step=int(p["step"]), global_step=int(p["global_step"]),
                    loss_sum=float(p["loss_sum"]), seen=int(p["seen"]), train_time_s=float(p["train_time_s"]),
                    history=list(p["history"]))


def rng_state(cuda: bool = False) -> dict[str, Any]:
    """The global RNG states of torch, numpy and Python as tensors and plain lists (``cuda``: those of
    every CUDA device too, as CPU byte tensors)."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if cuda and torch.cuda.is_available():
        out["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; the CUDA states best effort (only where this machine has the same number
    of CUDA devices; a checkpoint written on the CPU or read without CUDA leaves them as they are)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def data_fingerprint(x: torch.Tensor, y: torch.Tensor, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies a training set cheaply: sample count, input shape, SHA-256 of up to
    :data:`FINGERPRINT_SAMPLES` evenly spaced inputs and of all labels, and ``meta`` (JSON values the
    caller adds, e.g. ``{"dataset": "fmnist"}``)."""
    n = int(x.shape[0])
    idx = torch.linspace(0, max(n - 1, 0), min(n, FINGERPRINT_SAMPLES)).round().long() if n else torch.zeros(0).long()
    hx = hashlib.sha256(str(x.dtype).encode())
    hx.update(x[idx].detach().cpu().contiguous().numpy().tobytes())
    hy = hashlib.sha256(str(y.dtype).encode())
    hy.update(y.detach().cpu().contiguous().numpy().tobytes())
    out: dict[str, Any] = {"samples": n, "shape": [int(s) for s in x.shape[1:]],
                           "inputs_sha256": hx.hexdigest()[:16], "labels_sha256": hy.hexdigest()[:16]}
    if meta:
        out["meta"] = json.loads(json.dumps(meta, sort_keys=True, default=str))
    return out


def first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first (path, a-value, b-value) where two JSON values differ (dicts in ``a``'s key order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{path}.{k}", a.get(k, "<absent>"), b.get(k, "<absent>")
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d is not None:
                return d
        return None
    return None if a == b else (path, a, b)


def short(v: Any, limit: int = 60) -> str:
    """``repr(v)``, cut to ``limit`` characters."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def data_difference(saved: dict[str, Any] | None, now: dict[str, Any] | None) -> str | None:
    """What differs between two :func:`data_fingerprint` records, in words naming the field (None: the
    same, or either record missing)."""
    if not saved or not now or dict(saved) == now:
        return None
    diff = first_difference(dict(saved), now, "data") or ("data", "?", "?")
    what = {"data.samples": "another number of training samples (--max-train?)",
            "data.shape": "another input shape (--dataset / --model?)",
            "data.inputs_sha256": "other training inputs (--dataset / --data-root?)",
            "data.labels_sha256": "other training labels (--dataset / --data-root?)"}.get(diff[0], "other data")
    return f"{what}: field '{diff[0]}' is {short(diff[1])} in the checkpoint, {short(diff[2])} now"


def check_lineage(path: Path, obj: dict[str, Any], *, plan: str | None, data: dict[str, Any] | None) -> None:
    """Raise `TrainError` when the checkpoint was made for another plan or other training data.

    ``plan`` is this run's plan record (a JSON string; None: the run has no plan, e.g. float
    fine-tuning); ``data`` is :func:`data_fingerprint` of this run's training set. A version 1
    checkpoint has neither record: it resumes unchecked (a line says so).
    """
    if obj.get("version") == 1:
        progress.log(f"{path}: version 1 checkpoint, the plan and the training data cannot be checked")
        return
    saved_plan = obj.get("plan")
    if (saved_plan is None) != (plan is None):
        raise TrainError(f"{path}: checkpoint was made {'with' if saved_plan is not None else 'without'} a plan, "
                         f"this run has {'one' if plan is not None else 'none'} (field 'plan')")
    if saved_plan is not None and plan is not None and saved_plan != plan:
        old, new = json.loads(saved_plan), json.loads(plan)
        diff = first_difference(old, new, "plan") or ("plan", "?", "?")
        raise TrainError(f"{path}: checkpoint was made for a different plan: {diff[0]} "
                         f"(checkpoint {short(diff[1])}, now {short(diff[2])}); "
                         "resume with the same plan or start a new run folder")
    what = data_difference(obj.get("data"), data)
    if what is not None:
        raise TrainError(f"{path}: checkpoint was made on different training data, this run has {what}; "
                         "resume with the same data or start a new run folder")


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` holding a NaN or an Inf."""
    return validate.nonfinite(module.state_dict())


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside (dicts — their type and attributes such as a state dict's
    ``_metadata`` kept —, lists, tuples) moved to the CPU (CPU tensors as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for k, v in obj.items():
            out[k] = to_cpu(v)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: Path, *, config: dict[str, Any], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, pos: Position, world_size: int,
                    extra: dict[str, Any] | None = None, plan: str | None = None,
                    data: dict[str, Any] | None = None, cuda_rng: bool = False) -> None:
    """Write the training state atomically to ``path`` (``config``: the run's settings as plain values;
    ``plan`` / ``data``: see :func:`check_lineage`; ``cuda_rng``: record the CUDA RNG states too).

    Every tensor is written as a CPU tensor (model, optimizer state), so a checkpoint written on a GPU
    resumes on the CPU and the other way round: :func:`mixq.training.fit` loads it into the model on
    its device, and ``Optimizer.load_state_dict`` moves the state to the parameters' device."""
    atomic_write_torch(path, {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "plan": plan,
        "data": data,
        "world_size": world_size,
        "model": to_cpu(model.state_dict()),
        "optimizer": to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "position": pos.to_dict(),
        "rng": rng_state(cuda=cuda_rng),
        "extra": extra or {},
    })


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check the envelope of a checkpoint; `TrainError` naming the file when it is not one."""
    if not path.is_file():
        raise TrainError(f"{path}: checkpoint not found")
    obj = validate.read_torch(path, what="readable checkpoint", error=TrainError)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a mixq training checkpoint (field 'format')")
    if obj.get("version") not in READABLE_VERSIONS:
        raise TrainError(f"{path}: checkpoint version {obj.get('version')!r} is not one of "
                         f"{', '.join(map(str, READABLE_VERSIONS))} (field 'version')")
    return obj


def load_model_state(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` with a `TrainError` naming the file and the first mismatching key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise TrainError(f"{path}: checkpoint does not match the model ({what}; field 'model')")
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise TrainError(f"{path}: checkpoint tensor model.{k} has shape {tuple(state[k].shape)}, "
                             f"the model's has {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)
