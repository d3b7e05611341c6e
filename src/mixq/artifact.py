"""The artifact folder `mixq quantize` writes, and the quantized model read back from it exactly.

A folder holds ``quantized.pt`` (format ``mixq-ptq``, version 1: the model name, its source — a zoo
name or a builder ``FILE.py:FUNCTION`` recorded with the file's absolute path (files without a source
hold a zoo model) —, the plan as applied, the recipe, the module types and the state dict), ``plan.json``
and ``summary.json``. :func:`load_artifact` rebuilds the structure the recipe produced — the zoo model or
the builder's (random init, no weights file needed),
BN folded, the plan's layers swapped for their quantized versions, any activation or bias a recipe
added (CLE's clipped ReLU6, bias correction on a layer without a bias) — and loads the state dict
strictly, so the model is bit for bit the one `quantize` finished with: no re-calibration.

    save_artifact("runs/q", "cnv", res.plan, res.recipe.to_dict(), res.model, summary)
    art = load_artifact("runs/q")          # art.qmodel: eval mode, ready for verify / export / rtl

Every problem with a folder (missing, not an artifact, newer version, a state dict that does not
fit the rebuilt model) raises a one-line :class:`~mixq.errors.DataError` or
:class:`~mixq.errors.ModelError` naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq import progress, validate, zoo
from mixq.errors import DataError, MixqError, ModelError
from mixq.graph.bnfold import fold_bn
from mixq.graph.convert import act_quantizers, to_quantized
from mixq.graph.normalize import normalize
from mixq.graph.swap import set_submodule
from mixq.io import atomic_write_json, atomic_write_torch
from mixq.plan import QuantPlan, plan_from_dict, plan_to_dict, save_plan, validate_plan
from mixq.validate import read_torch
from mixq.zoo.source import ModelSource

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_VERSION", "CHECKPOINT_FILE", "Artifact", "Checkpoint", "load_artifact",
           "read_checkpoint", "read_summary", "save_artifact"]

ARTIFACT_FORMAT = "mixq-ptq"
ARTIFACT_VERSION = 1
CHECKPOINT_FILE = "quantized.pt"
PLAN_FILE = "plan.json"
SUMMARY_FILE = "summary.json"
ARTIFACT_MAX_ABS = 1e30  # a tensor of the artifact beyond this is taken as corrupt (scales follow activations)


@dataclass(frozen=True)
class Checkpoint:
    """The parsed, checked contents of ``quantized.pt`` (no model built yet)."""

    path: Path
    model_name: str
    plan: QuantPlan
    recipe: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    modules: dict[str, str] = field(default_factory=dict)  # qualified name -> class name ({} in older files)
    version: int = ARTIFACT_VERSION
    source: ModelSource | None = None  # where the model comes from (older files: the zoo name)


@dataclass(frozen=True)
class Artifact:
    """A quantize artifact loaded: its checkpoint, and the fake-quant model exactly as `quantize` left it
    (eval mode)."""

    folder: Path
    checkpoint: Checkpoint
    qmodel: nn.Module
    summary: dict[str, Any]

    @property
    def model_name(self) -> str:
        return self.checkpoint.model_name

    @property
    def plan(self) -> QuantPlan:
        return self.checkpoint.plan

    @property
    def recipe(self) -> dict[str, Any]:
        return self.checkpoint.recipe

    @property
    def source(self) -> ModelSource | None:
        return self.checkpoint.source


def save_artifact(folder: str | os.PathLike[str], model_name: str, plan: QuantPlan, recipe: dict[str, Any],
                  qmodel: nn.Module, summary: dict[str, Any] | None = None,
                  source: ModelSource | None = None) -> list[Path]:
    """Write ``quantized.pt``, ``plan.json`` and (given ``summary``) ``summary.json`` into ``folder``,
    each atomically; returns the paths written. ``source`` (default: the zoo model ``model_name``) is
    recorded so the model can be rebuilt: a builder's file by its absolute path."""
    root = Path(folder)
    src = source if source is not None else ModelSource(model_name)
    if src.name != model_name:
        raise ModelError(f"save_artifact: model name {model_name!r} is not the source's ({src.name!r})")
    ckpt = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "model": model_name, "source": src.to_dict(),
            "plan": plan_to_dict(plan), "recipe": recipe,
            "modules": {n: type(m).__name__ for n, m in qmodel.named_modules() if n},
            "state_dict": qmodel.state_dict()}
    atomic_write_torch(root / CHECKPOINT_FILE, ckpt)
    paths = [root / CHECKPOINT_FILE, save_plan(plan, root / PLAN_FILE)]
    if summary is not None:
        paths.append(atomic_write_json(root / SUMMARY_FILE, summary))
    return paths


def _read(path: Path) -> Any:
    return read_torch(path, what="mixq quantize checkpoint")


def read_checkpoint(folder: str | os.PathLike[str]) -> Checkpoint:
    """Read and check ``folder/quantized.pt`` (safely: ``weights_only``); builds no model."""
    root = Path(folder)
    if not root.exists():
        raise DataError(f"{root}: no such artifact folder (write one with `mixq quantize MODEL --out {root}`)")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (an artifact is the folder `mixq quantize --out` wrote)")
    path = root / CHECKPOINT_FILE
    if not path.is_file():
        raise DataError(f"{path}: file not found ({root} is not a mixq quantize artifact)")
    ck = _read(path)
    if not isinstance(ck, dict) or ck.get("format") != ARTIFACT_FORMAT:
        got = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise DataError(f"{path}: not a mixq quantize checkpoint (format {got!r}, expected {ARTIFACT_FORMAT!r})")
    version = ck.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DataError(f"{path}: field 'version' must be a positive integer, got {version!r}")
    if version > ARTIFACT_VERSION:
        raise DataError(f"{path}: checkpoint version {version} is newer than this mixq reads ({ARTIFACT_VERSION}); "
                        "upgrade mixq")
    name = ck.get("model")
    # a zoo name or a builder (FILE.py:FUNCTION, package.module:FUNCTION); older files: a zoo name only
    source = ModelSource.from_dict(ck["source"], f"{path}: source") if ck.get("source") is not None else None
    if (source is None or source.kind == "zoo") and (not isinstance(name, str) or name not in zoo.available()):
        raise ModelError(f"{path}: model {name!r} is not a zoo model ({', '.join(zoo.available())})")
    if source is None:
        source = ModelSource(str(name))
    if source.name != name:
        raise ModelError(f"{path}: model {name!r} is not the recorded source's ({source.name!r})")
    plan = validate_plan(plan_from_dict(ck.get("plan"), source=f"{path}: plan"), model=name)
    recipe = ck.get("recipe")
    if not isinstance(recipe, dict):
        raise DataError(f"{path}: field 'recipe' must be a dict, got {type(recipe).__name__}")
    state = ck.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise DataError(f"{path}: field 'state_dict' must be a non-empty dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{path}: state_dict entry {key!r} holds a {type(value).__name__}, not a tensor")
    # finite everywhere; the magnitude limit of a user's weights file does not apply: the quantizer scales follow
    # the calibrated activations, which a deep random-init network takes past 1e6 (pytorchcv's PyramidNet-110)
    validate.state_dict(state, str(path), max_abs=ARTIFACT_MAX_ABS)
    modules = ck.get("modules") or {}
    if not isinstance(modules, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in modules.items()):
        raise DataError(f"{path}: field 'modules' must map module names to class names")
    return Checkpoint(path=path, model_name=name, plan=plan, recipe=recipe, state_dict=state, modules=modules,
                      version=version, source=source)


def _replacement(kind: str, name: str, state: dict[str, torch.Tensor]) -> nn.Module | None:
    """The module a recipe put in place of a zoo activation (None: not one mixq makes)."""
    if kind == "ReLU":
        return nn.ReLU()
    if kind == "Identity":
        return nn.Identity()
    if kind == "ClippedReLU" and f"{name}.upper" in state:
        from mixq.algorithms.ptq.cle import ClippedReLU

        return ClippedReLU(state[f"{name}.upper"])  # (its max_val, not in the state dict, from the bounds)
    return None


def _restore_structure(q: nn.Module, ck: Checkpoint) -> None:
    """Make the rebuilt ``q`` hold what the recipe's model held: replaced activations, added biases."""
    have = {n: type(m).__name__ for n, m in q.named_modules() if n}
    for name, kind in ck.modules.items():
        if name not in have:
            raise ModelError(f"{ck.path}: module {name} ({kind}) is not in the rebuilt {ck.model_name}")
        if have[name] == kind:
            continue
        new = _replacement(kind, name, ck.state_dict)
        if new is None:
            raise ModelError(f"{ck.path}: module {name} is a {kind} in the checkpoint but a {have[name]} in the "
                             f"rebuilt {ck.model_name}")
        set_submodule(q, name, new)
    if ck.modules and set(have) - set(ck.modules):
        extra = sorted(set(have) - set(ck.modules))
        raise ModelError(f"{ck.path}: the rebuilt {ck.model_name} has modules the checkpoint lacks: "
                         f"{', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
    for key, value in ck.state_dict.items():
        owner, _, leaf = key.rpartition(".")
        if leaf != "bias":
            continue
        try:
            m = q.get_submodule(owner)
        except AttributeError:
            continue  # reported by the strict load
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is None:  # a recipe added it (bias correction)
            m.bias = nn.Parameter(torch.zeros_like(value), requires_grad=m.weight.requires_grad)


def _load_strict(q: nn.Module, ck: Checkpoint) -> None:
    own = q.state_dict()
    missing = [k for k in own if k not in ck.state_dict]
    unexpected = [k for k in ck.state_dict if k not in own]
    shapes = [f"{k} {tuple(ck.state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in ck.state_dict and ck.state_dict[k].shape != v.shape]
    problems = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    if problems:
        raise ModelError(f"{ck.path}: the state dict does not fit {ck.model_name} under its plan "
                         f"({'; '.join(problems)})")
    try:
        q.load_state_dict(ck.state_dict, strict=True)
    except RuntimeError as e:  # pragma: no cover - the checks above name every case torch refuses
        raise ModelError(f"{ck.path}: the state dict does not fit {ck.model_name}: "
                         f"{' '.join(str(e).split())[:300]}") from None


def build_model(ck: Checkpoint) -> nn.Module:
    """The quantized model of a checked checkpoint: its source's structure (zoo model or builder, without
    weights), BN folded, plan applied, state loaded."""
    source = ck.source if ck.source is not None else ModelSource(ck.model_name)
    with torch.random.fork_rng(devices=[]):  # the random inits (zoo model, swapped layers) leave the caller's RNG
        try:
            shape = source.shape()
            net = normalize(replace(source, weights=None).load(pretrained=False), tuple(shape))
        except MixqError as e:
            raise type(e)(f"{ck.path}: {e}") from None
        try:
            q = to_quantized(fold_bn(net, shape).eval(), ck.plan)
        except MixqError as e:
            raise type(e)(f"{ck.path}: {e}") from None
    _restore_structure(q, ck)
    _load_strict(q, ck)
    for a in act_quantizers(q):  # quantize left every activation quantizer calibrated and quantizing
        a.observer = None
        a.calibrated = True
        a.mode = "quant"
    return q.eval()


def read_summary(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's ``summary.json`` as a dict (``{}`` when there is none); bad JSON is a :class:`DataError`."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    return loaded if isinstance(loaded, dict) else {}


def load_artifact(folder: str | os.PathLike[str]) -> Artifact:
    """The quantized model a `mixq quantize` folder holds, bit for bit as quantize left it (eval mode)."""
    ck = read_checkpoint(folder)
    q = build_model(ck)
    root = Path(folder)
    summary = read_summary(root)
    progress.log("artifact loaded", folder=str(root), model=ck.model_name, recipe=ck.recipe.get("name", "?"),
                 layers=len(ck.plan))
    return Artifact(folder=root, checkpoint=ck, qmodel=q, summary=summary)
