"""QAT's side of the training checkpoints (:mod:`mixq.training.checkpoint` holds the format, the
position, the RNG states and the lineage records): the plan record a QAT checkpoint carries and the
check that a checkpoint's `QatConfig` continues this run's trajectory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixq.algorithms.qat.config import QatConfig, QatError
from mixq.plan import QuantPlan, plan_to_dict
from mixq.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    READABLE_VERSIONS,
    Position,
    data_difference,
    data_fingerprint,
    nonfinite_tensors,
    read_checkpoint,
)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "READABLE_VERSIONS", "Position", "check_config",
           "data_difference", "data_fingerprint", "nonfinite_tensors", "plan_record", "read_checkpoint"]


def plan_record(plan: QuantPlan) -> str:
    """The part of a `QuantPlan` that shapes training (model name and layers; not ``meta``), as JSON."""
    d = plan_to_dict(plan)
    return json.dumps({"model": d["model"], "layers": d["layers"]})  # layers in the plan's (forward) order


def check_config(cfg: QatConfig) -> Callable[[Path, dict[str, Any]], None]:
    """The resume check of a run with ``cfg``: raises `QatError` when a checkpoint's config would take
    another trajectory (fields of ``RESUME_FREE`` may differ)."""
    def check(path: Path, saved_dict: dict[str, Any]) -> None:
        saved = QatConfig.from_dict(dict(saved_dict), source=f"{path}: config", device=cfg.device)
        diff = cfg.trajectory_diff(saved)
        if diff:
            parts = ", ".join(f"{k} (checkpoint {saved.to_dict()[k]!r}, now {cfg.to_dict()[k]!r})" for k in diff)
            raise QatError(f"{path}: checkpoint was made with a different config: {parts}")

    return check
