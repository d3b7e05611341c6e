"""Build the whole accelerator of an integer model and check it in simulation: the one step behind
``mixq rtl build`` and the RTL check of ``mixq run``.

:func:`build_and_check` generates the design (:func:`mixq.rtl.network.generate_network`) at a folding,
writes it with its testbench (:func:`mixq.rtl.netsim.write_build`) and, given images, simulates them
against the integer engine's outputs (:func:`mixq.rtl.netsim.simulate`), every output element, with
randomized backpressure; ``build.json`` in the folder holds the result, written atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixq.engine.model import IntModel
from mixq.errors import DataError, ModelError
from mixq.io import atomic_write_json
from mixq.rtl.netsim import SimResult, available, simulate, write_build
from mixq.rtl.network import NetworkRtl, default_folding, generate_network, output_order


@dataclass(frozen=True)
class SimOptions:
    """How the testbench drives the design: simulator, seed and probabilities of tvalid / tready (per 256)."""

    simulator: str = "verilator"
    seed: int = 1
    valid: float = 0.75
    ready: float = 0.5


@dataclass
class BuildResult:
    net: NetworkRtl
    summary: dict[str, Any]  # what build.json holds
    sim: SimResult | None

    @property
    def ok(self) -> bool:
        return self.sim is None or self.sim.ok


def load_folding(path: Path) -> dict[str, tuple[int, int]]:
    """A folding file: ``{layer: [pe, simd]}``, or an ``estimate.json`` (``mixq estimate --out``: its streaming
    ``layers`` with ``name``, ``pe``, ``simd``). One :class:`DataError` naming the file and the entry."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"--folding {path}: cannot read it as JSON ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("layers"), list):
        items = [(ly.get("name"), [ly.get("pe"), ly.get("simd")]) for ly in doc["layers"]  # compute layers, as
                 if isinstance(ly, dict) and ly.get("macs") and ly.get("pe")]  # hw Estimate.folding() takes them
    elif isinstance(doc, dict):
        items = list(doc.items())
    else:
        raise DataError(f"--folding {path}: expected {{layer: [pe, simd]}} or an estimate.json")
    out = {}
    for name, v in items:
        if not (isinstance(name, str) and isinstance(v, list | tuple) and len(v) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)):
            raise DataError(f"--folding {path}: layer {name!r}: expected [pe, simd], two integers >= 1, got {v!r}")
        out[name] = (int(v[0]), int(v[1]))
    return out


def top_name(model: str) -> str:
    """A Verilog module name from a model name (``cnv`` -> ``cnv``, ``3net.onnx`` -> ``net_3net_onnx``)."""
    top = re.sub(r"[^A-Za-z0-9_]", "_", model) or "net"
    return top if top[0].isalpha() else "net_" + top


def build_and_check(im: IntModel, values: Mapping[str, torch.Tensor], model: str, folder: Path, images: int,
                    folding: Mapping[str, tuple[int, int]] | None = None, pe: int = 16, simd: int = 32,
                    core: str = "auto", part: str = "xc7z020", sim: SimOptions | None = None,
                    meta: Mapping[str, Any] | None = None, buffers: str = "ring") -> BuildResult:
    """Write the accelerator of ``im`` to ``folder`` and simulate its first ``images`` inputs (``values``: the
    engine's integers of a batch, ``keep=True``; 0 images: write only). ``folding`` (layer -> (pe, simd)) or the
    default caps ``pe`` / ``simd``; ``meta`` goes into ``build.json`` beside the figures; ``buffers="frame"``: whole
    frame buffers between the stages, no rings (:func:`~mixq.rtl.network.generate_network`)."""
    sim = sim or SimOptions()
    layers = {n.name for n in im.compute_nodes()}
    unknown = sorted(set(folding or {}) - layers)
    if unknown:
        raise ModelError(f"folding: no compute layer {unknown[0]!r} in {model} (layers: {', '.join(sorted(layers))})")
    net = generate_network(im, values, top_name(model), dict(folding or default_folding(im, pe, simd)), core, part,
                           buffers=buffers)
    first = next(n for n in im.nodes if n.inputs == ("input",))
    n = max(images, 1)
    codes = values[first.name].numpy()[:n]
    ref = output_order(net, values[im.output].numpy())[:n]
    write_build(net, folder, codes[:images] if images else codes[:1], ref[:images] if images else None, model)
    est = net.estimate()
    res: dict[str, Any] = {"model": model, **dict(meta or {}), "part": part, "top": net.top, "files": net.sources,
                           "input_stream": {"bits": net.in_width, "beats_per_frame": net.in_pixels},
                           "output_stream": {"bits": net.out_width, "beats_per_frame": net.out_elems},
                           "images": images, **est}
    r = None
    if images:
        r = simulate(net, folder, ref[:images], sim.simulator, sim.seed, max(1, round(sim.valid * 256)),
                     max(1, round(sim.ready * 256)))
        res.update({"simulation": r.to_dict(), "mismatches": r.mismatches, "ok": r.ok,
                    "cycles_per_frame": r.interval_cycles if images > 1 else None,
                    "latency_cycles": r.latency_cycles})
    atomic_write_json(folder / "build.json", res)
    return BuildResult(net, res, r)


def check_summary(b: BuildResult) -> dict[str, Any]:
    """The few figures a report shows of a build: the verdict, images, elements, cycles beside the estimate."""
    s = b.summary
    out: dict[str, Any] = {"verdict": ("RTL = integer engine" if b.ok else "RTL differs from the integer engine"),
                           "images": s["images"], "part": s["part"]}
    if b.sim is not None:
        out.update({"simulator": b.sim.simulator, "output_elements": b.sim.elements,
                    "mismatching_elements": b.sim.mismatches, "missing": b.sim.missing, "extra": b.sim.extra,
                    "backpressure": f"tvalid {b.sim.valid / 256:.2f}, tready {b.sim.ready / 256:.2f}"})
    cpf = s.get("cycles_per_frame")
    out.update({"cycles_per_frame_measured": round(cpf) if cpf else None,
                "cycles_per_frame_estimator": s["estimator_cycles_per_frame"],
                "measured_over_estimator": round(cpf / s["estimator_cycles_per_frame"], 3) if cpf else None,
                "latency_cycles": s.get("latency_cycles")})
    return out


__all__ = ["BuildResult", "SimOptions", "available", "build_and_check", "check_summary", "load_folding", "top_name"]
