"""The integer-model file: ``<name>.json`` (graph, attributes, formats) + ``<name>.npz`` (arrays).

Read back by the engine and by the RTL generator; no torch, no pickle. JSON layout::

    {"format": "mixq-int-model", "version": 1, "arrays": "<name>.npz",
     "input_shape": [C, H, W], "output": "<node>", "meta": {...},
     "nodes": [{"name", "op", "inputs", "shape", "bound", "source", "attrs", "arrays": [keys]}]}

Arrays live in the npz under ``"<node>::<key>"`` (weight codes in the narrowest
integer type that holds them), the node's grid under ``"<node>::scale"`` (float64).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mixq.engine.model import INT_MODEL_VERSION, IntModel, IntNode
from mixq.errors import DataError, ModelError
from mixq.io import atomic_write_bytes, atomic_write_text

FORMAT = "mixq-int-model"


def _narrow(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind != "i" or a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return a.astype(dt)
    return a


def save_int_model(model: IntModel, path: str | Path) -> Path:
    """Write ``path`` (``.json``) and its ``.npz`` beside it; returns the JSON path."""
    p = Path(path)
    if p.suffix != ".json":
        p = p.with_suffix(".json")
    npz = p.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for n in model.nodes:
        arrays[f"{n.name}::scale"] = np.asarray(n.scale, dtype=np.float64)
        for k, a in n.arrays.items():
            arrays[f"{n.name}::{k}"] = _narrow(np.asarray(a))
        nodes.append({"name": n.name, "op": n.op, "inputs": list(n.inputs), "shape": list(n.shape),
                      "bound": int(n.bound), "source": n.source, "attrs": dict(n.attrs),
                      "arrays": sorted(n.arrays)})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(npz, buf.getvalue())
    doc = {"format": FORMAT, "version": INT_MODEL_VERSION, "arrays": npz.name,
           "input_shape": list(model.input_shape), "output": model.output, "meta": dict(model.meta), "nodes": nodes}
    atomic_write_text(p, json.dumps(doc, indent=1) + "\n")
    return p


def load_int_model(path: str | Path) -> IntModel:
    """Read an integer model written by :func:`save_int_model`; :class:`DataError` names a bad file or field."""
    p = Path(path)
    try:
        doc: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot read the integer model ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{p}: not a mixq integer model (format != {FORMAT!r})")
    if doc.get("version") != INT_MODEL_VERSION:
        raise DataError(f"{p}: integer model version {doc.get('version')!r} (this mixq reads {INT_MODEL_VERSION})")
    npz = p.parent / str(doc.get("arrays", p.with_suffix(".npz").name))
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{npz}: cannot read the integer model arrays ({e})") from e
    nodes = []
    try:
        for d in doc["nodes"]:
            name = d["name"]
            arr = {k: _widen(arrays[f"{name}::{k}"]) for k in d["arrays"]}
            nodes.append(IntNode(name, d["op"], tuple(d["inputs"]), tuple(d["shape"]), arrays[f"{name}::scale"],
                                 int(d["bound"]), d["attrs"], arr, d.get("source", "")))
        return IntModel(tuple(nodes), tuple(doc["input_shape"]), doc["output"], doc.get("meta", {}))
    except KeyError as e:
        raise DataError(f"{p}: missing field or array {e}") from e
    except ModelError as e:
        raise DataError(f"{p}: {e}") from e


def _widen(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) if a.dtype.kind == "i" else a
