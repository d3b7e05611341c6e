"""The streaming folding optimizer's optimum, pinned (issue 19: a faster optimizer must find the same design).

``tests/golden/hw/fold_optimum.json`` holds, for CNV, ResNet-18 and MobileNetV2 at W8A8, MSQ W4A4 and W2A2, on
four parts, with DDR weights never / auto, threshold requantizers, two parts and a target frame rate: whether the
design fits, its frames/s, resources, every layer's folding and the layers with DDR weights — written by the
optimizer before its layer caches (the optimizer files of 393ce18, on the cost model of the time). Any change of
an optimum fails here; a deliberate one (a refit cost model, a new pricing rule) rewrites the file:
``.venv/bin/python tests/test_hw_fold_optimum.py``. Rewritten in session 22, when exact residual streams began to
be priced at the integer engine's width of the sum (up to 40 bits) instead of the activation width, and a join's
skip FIFO became the branch's delay from the fork in the skip's own codes (`hw.lower._skip_fifo`): 68 optima
moved, none of CNV's (no adds); e.g. MobileNetV2 W8A8 on the XCZU9EG 1,661 -> 1,476 FPS, ResNet-18 MSQ W4A4 on the
XCZU9EG with DDR weights 119 -> 88 FPS.

Beside it: the layer caches kept across estimates change nothing (every case with them cleared before each call
equals the case with them warm), and a layer's price reads nothing outside its :func:`mixq.hw.units.layer_key`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from mixq import zoo
from mixq.errors import HardwareError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph.capture import capture
from mixq.graph.spec import LayerSpec
from mixq.hw import ArchOptions, estimate
from mixq.plan import QuantPlan, uniform_plan

GOLDEN = Path(__file__).resolve().parent / "golden" / "hw" / "fold_optimum.json"
MODELS = ("cnv", "resnet18", "mobilenet_v2")
PARTS = ("xc7z020", "xc7z045", "xczu9eg", "xcvu9p")


@cache
def specs_of(model: str) -> list[LayerSpec]:
    return capture(zoo.load(model), zoo.input_shape(model))


def plan_of(model: str, label: str) -> QuantPlan:
    names = [s.name for s in specs_of(model) if s.is_compute]
    a8, a4, a2 = FixedPoint(8, signed=False), FixedPoint(4, signed=False), FixedPoint(2, signed=False)
    if label == "W8A8":
        return uniform_plan(model, names, FixedPoint(8), a8, signed_inputs=names[:1])
    if label == "MSQ W4A4":
        return uniform_plan(model, names, FixedPoint(4), a4, signed_inputs=names[:1], weight_alt=SumOfPowers(4),
                            alt_ratio=0.5)
    return uniform_plan(model, names, FixedPoint(2), a2, signed_inputs=names[:1])


def cases() -> list[str]:
    """``model|plan|part|options|parts|target fps``: the 48 cases of ``benchmarks/hw_fold_speed.py`` and variants."""
    out = []
    for m in MODELS:
        for label in ("W8A8", "MSQ W4A4"):
            for part in PARTS:
                out += [f"{m}|{label}|{part}|never|1|-", f"{m}|{label}|{part}|auto|1|-"]
            for part in ("xc7z020", "xczu9eg"):
                out += [f"{m}|{label}|{part}|thresh|1|-", f"{m}|{label}|{part}|never|2|-",
                        f"{m}|{label}|{part}|auto|1|100", f"{m}|{label}|{part}|never|1|3000"]
        out += [f"{m}|W2A2|xc7z045|never|1|-", f"{m}|W2A2|xc7z045|auto|1|-"]
    return out


OPTIONS = {"never": ArchOptions(), "auto": ArchOptions(ddr_weights="auto"), "thresh": ArchOptions(requant="thresh")}


def run_case(case: str) -> dict[str, Any]:
    """The optimum of one case as plain data (floats exact through JSON)."""
    model, label, part, opt, parts, fps = case.split("|")
    try:
        e = estimate(specs_of(model), plan_of(model, label), part, "streaming", options=OPTIONS[opt],
                     parts=int(parts), target_fps=None if fps == "-" else float(fps))
    except HardwareError as err:
        return {"error": str(err)}
    return {"fits": e.fits, "fps": e.fps, "resources": list(e.resources),
            "folding": " ".join(f"{ly.pe},{ly.simd}" for ly in e.layers if ly.macs > 0 and ly.pe > 0),
            "ddr_weights": list(e.ddr_weights), "segments": [len(s) for s in e.partition]}


def _diff(want: dict[str, Any], got: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {want.get(k)!r} -> {got.get(k)!r}" for k in sorted(set(want) | set(got))
                     if want.get(k) != got.get(k))


@pytest.mark.parametrize("model", MODELS)
def test_optimum_is_the_pinned_one(model: str) -> None:
    golden = json.loads(GOLDEN.read_text())
    mine = [c for c in cases() if c.startswith(model + "|")]
    assert set(mine) <= set(golden), "case list changed: rewrite the golden file (see the module docstring)"
    bad = {c: _diff(golden[c], got) for c in mine if (got := run_case(c)) != golden[c]}
    assert not bad, (f"{len(bad)} optimum(s) moved (if the cost model changed on purpose, rewrite "
                     f"{GOLDEN.name}: .venv/bin/python tests/test_hw_fold_optimum.py): "
                     + " | ".join(f"{c}: {d}" for c, d in bad.items()))


def test_layer_caches_change_nothing() -> None:
    """Every case of MobileNetV2 (the one with the most shared layer descriptions) and a few others: the full
    estimate with the layer caches cleared before the call equals the estimate with them warm."""
    from mixq.hw.units import clear_caches

    chosen = [c for c in cases() if c.startswith("mobilenet_v2|")] + [c for c in cases() if "|thresh|" in c]
    for c in chosen:
        model, label, part, opt, parts, fps = c.split("|")

        def full() -> dict[str, Any]:
            try:
                return estimate(specs_of(model), plan_of(model, label), part, "streaming",  # noqa: B023
                                options=OPTIONS[opt], parts=int(parts),  # noqa: B023
                                target_fps=None if fps == "-" else float(fps)).to_dict()  # noqa: B023
            except HardwareError as err:
                return {"error": str(err)}

        clear_caches()
        fresh = full()
        assert full() == fresh, c  # warm: every layer's candidates and engines from the caches


def test_a_layer_price_reads_only_its_key() -> None:
    """A compute engine's figures depend on nothing of the layer outside :func:`layer_key` (its name, padding,
    neighbours, plan mapping, note; the stride and the output shape are in the key, the window sequencer's reads
    depend on them): otherwise the caches would share figures that differ."""
    from mixq.hw.cost import CostModel
    from mixq.hw.lower import lower
    from mixq.hw.parts import get_part
    from mixq.hw.units import clear_caches, compute_engine, engine_grid, layer_key

    part, cm = get_part("xczu9eg"), CostModel.default()
    for label in ("W8A8", "MSQ W4A4"):
        layers = [ly for ly in lower(specs_of("mobilenet_v2"), plan_of("mobilenet_v2", label), part) if ly.is_compute]
        for ly in layers[::4]:
            other = dataclasses.replace(
                ly, spec=dataclasses.replace(ly.spec, name=ly.spec.name + "_x", padding=(5, 5),
                                             bias=not ly.spec.bias, params=1, macs=1, inputs=("a", "b"),
                                             outputs=()),
                mapping=dataclasses.replace(ly.mapping, pe=7, simd=5), note="n", fifo_bits=99)
            assert layer_key(other) == layer_key(ly)
            for opts, ext in ((ArchOptions(), False), (ArchOptions(requant="thresh"), True)):
                pes, simds = [1, 2, 4, 8, 16, 32], [1, 3, 8, 9, 16, 64]
                a = engine_grid(ly, pes, simds, part, cm, opts, ext)
                b = engine_grid(other, pes, simds, part, cm, opts, ext)
                assert all((x == y).all() for x, y in zip(a, b, strict=True)), ly.name
                clear_caches()
                e1 = compute_engine(ly, 4, 8, part, cm, opts, ext)
                clear_caches()
                e2 = compute_engine(other, 4, 8, part, cm, opts, ext)
                assert (e1, e1.detail) == (e2, e2.detail), ly.name


def write_golden() -> None:
    out = {c: run_case(c) for c in cases()}
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{GOLDEN}: {len(out)} cases")


if __name__ == "__main__":
    sys.exit(write_golden())
