"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model and optimizer state, the schedule, the position
(epoch, step inside the epoch, global step), the RNG states of torch, numpy and
Python, the history so far and the accumulated training time. It is written
atomically (``torch.save`` to memory, then :func:`mixq.io.atomic_write_bytes`),
so a run killed at any moment leaves the previous complete checkpoint behind,
and it is read with ``weights_only=True`` (no arbitrary code from a file).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq.algorithms.qat.config import QatConfig, QatError
from mixq.io import atomic_write_bytes

CHECKPOINT_FORMAT = "mixq-qat-checkpoint"
CHECKPOINT_VERSION = 1


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
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                "loss_sum": self.loss_sum, "seen": self.seen, "train_time_s": self.train_time_s,
                "history": list(self.history)}


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch, numpy and Python as tensors and plain lists."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(path: Path, *, cfg: QatConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, pos: Position, world_size: int, extra: dict[str, Any] | None = None) -> None:
    """Write the training state atomically to ``path``."""
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
        "world_size": world_size,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "position": pos.to_dict(),
        "rng": rng_state(),
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check the envelope of a checkpoint; `QatError` naming the file when it is not one."""
    if not path.is_file():
        raise QatError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types on corrupt files
        raise QatError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise QatError(f"{path}: not a mixq QAT checkpoint (field 'format')")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise QatError(f"{path}: checkpoint version {obj.get('version')!r} is not {CHECKPOINT_VERSION} "
                       "(field 'version')")
    return obj


def check_compatible(path: Path, obj: dict[str, Any], cfg: QatConfig, world_size: int) -> None:
    """Raise `QatError` when the checkpoint was made by a run with a different trajectory."""
    saved = QatConfig.from_dict(dict(obj["config"]), source=f"{path}: config")
    diff = cfg.trajectory_diff(saved)
    if diff:
        parts = ", ".join(f"{k} (checkpoint {saved.to_dict()[k]!r}, now {cfg.to_dict()[k]!r})" for k in diff)
        raise QatError(f"{path}: checkpoint was made with a different config: {parts}")
    if int(obj["world_size"]) != world_size:
        raise QatError(f"{path}: checkpoint was made with {obj['world_size']} processes, now {world_size} "
                       "(field 'world_size')")


def load_model_state(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` with a `QatError` naming the file and the first mismatching key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise QatError(f"{path}: checkpoint does not match the model ({what}; field 'model')")
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise QatError(f"{path}: checkpoint tensor model.{k} has shape {tuple(state[k].shape)}, "
                           f"the model's has {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)


def restore_position(obj: dict[str, Any]) -> Position:
    p = obj["position"]
    return Position(epoch=int(p["epoch"]), step=int(p["step"]), global_step=int(p["global_step"]),
                    loss_sum=float(p["loss_sum"]), seen=int(p["seen"]), train_time_s=float(p["train_time_s"]),
                    history=list(p["history"]))
