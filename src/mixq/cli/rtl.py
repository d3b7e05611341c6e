"""`mixq rtl generate|simulate|synth|build`: layer engines and the whole accelerator (wrappers over :mod:`mixq.rtl`).

The layer comes from a zoo model quantized under ``--config`` (see ``CONFIGS``: weight and
activation formats, and MSQ's second row format with rows assigned by
:func:`mixq.algorithms.msq.assign_rows`), or — ``--from FOLDER`` instead of ``--model`` — from
the quantized model of a ``mixq quantize --out FOLDER`` artifact as it is; either is converted to
the integer model. ``build`` writes the whole streaming accelerator (:mod:`mixq.rtl.network`) and
simulates it on real images (:mod:`mixq.rtl.netsim`), calibrated on the model's default data; it takes
``NETWORK_CONFIGS`` (``CONFIGS`` and the low-bit ``w2a1`` and ``w1a1``, XNOR-popcount lanes) or
``--plan FILE`` (a ``plan.json``, e.g. the searched plan ``mixq search`` writes, at its folding), or
``--from`` an artifact at the folding its plan carries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mixq.cli._common import (
    FROM,
    INPUT_SHAPE,
    MODEL_HELP,
    WEIGHTS,
    choice,
    count,
    emit,
    exclusive_with_from,
    out_dir,
    real,
    resolve_model,
    resolve_source,
)

DEFAULT_CONFIG = "msq4"

CONFIGS = {  # name -> (weight, act, weight_alt, alt_ratio)
    "msq4": ("fixed4n", "ufixed4", "sp2_4", 0.5),
    "fixed8": ("fixed8", "ufixed8", None, 0.0),
    "pot4": ("fixed4n", "ufixed4", "pot4", 0.5),  # power-of-two rows (shift lanes) beside fixed point
    "ternary4": ("ternary", "ufixed4", None, 0.0),  # TWN weights {-1, 0, +1} on select lanes
}

# ``mixq rtl build`` also takes low-bit networks: 2-bit narrow weights ({-1, 0, +1}) on LUT multipliers, and
# binary weights ({-1, +1}, XNOR-popcount lanes; the first layer's ternary selects), each with 1-bit unsigned
# activations and the first layer's input at 8 bits (FINN's CNV-W1A1 keeps it too; its input is signed, and a
# signed fixed-point format needs 2 bits at least).
NETWORK_CONFIGS = {**CONFIGS, "w2a1": ("fixed2n", "ufixed1", None, 0.0), "w1a1": ("binary", "ufixed1", None, 0.0)}
FIRST_ACT = {"w2a1": "fixed8", "w1a1": "fixed8"}  # config -> the first layer's input format, if not the config's


def build_int_model(model: str, weight: str, act: str, alt: str | None = None, ratio: float = 0.0,
                    size: int | None = None, seed: int = 0, batch: int = 2,
                    blocks: int | None = None, layer: str | None = None) -> tuple[Any, dict[str, Any], Any]:
    """(IntModel, the engine's integers for a batch of ``batch`` inputs, the input batch).

    Real weights when the zoo has them, else a seeded random init; inputs are seeded
    uniform noise in [0, 1) at the zoo's input shape (``size`` overrides H and W).
    ``blocks`` keeps only the first ``blocks`` modules of ``model.features`` (the real
    layers of a large network, quickly; layer names lose the ``features.`` prefix).
    """
    import torch

    from mixq import api, zoo
    from mixq.algorithms.msq import assign_rows
    from mixq.errors import ModelError
    from mixq.formats import parse_format

    torch.manual_seed(seed)
    try:
        m = zoo.load(model, pretrained=True)
    except (ModelError, OSError, ImportError, FileNotFoundError):
        torch.manual_seed(seed)
        m = zoo.load(model, pretrained=False)
    m.eval()
    if blocks:
        m = torch.nn.Sequential(*list(m.features)[:blocks]).eval()  # type: ignore[union-attr, arg-type]
    x = _noise(model, size, seed, batch)
    plan = api.default_plan(model, m, x, weight=parse_format(weight), act=parse_format(act),
                            weight_alt=parse_format(alt) if alt else None, alt_ratio=ratio if alt else 0.0)
    if alt:
        plan = assign_rows(m, plan)
    _check_layer(layer, plan, model)
    return _integers(api.quantize(m, plan, x), x, batch)


def _check_layer(layer: str | None, plan: Any, where: str) -> None:
    """``--layer``, checked against the plan's compute layers before any work (one line naming it)."""
    if layer is not None and layer not in plan.layers:
        from mixq.errors import MixqError

        names = list(plan.layers)
        more = ", ..." if len(names) > 8 else ""
        raise MixqError(f"--layer {layer!r}: {where} has no compute layer of that name "
                        f"({', '.join(names[:8])}{more})")


def _noise(model: Any, size: int | None, seed: int, batch: int) -> Any:
    """Seeded uniform noise in [0, 1) at the model's input shape (a zoo name or a
    :class:`~mixq.zoo.source.ModelSource`; ``size`` overrides H and W)."""
    import torch

    from mixq import zoo

    c, h, w = zoo.input_shape(model) if isinstance(model, str) else model.shape()
    if size:
        h = w = size
    g = torch.Generator().manual_seed(seed)
    return torch.rand(max(batch, 2), c, h, w, generator=g)


def _integers(qmodel: Any, x: Any, batch: int) -> tuple[Any, dict[str, Any], Any]:
    from mixq.engine.convert import to_integer
    from mixq.engine.runner import IntEngine

    im = to_integer(qmodel, x[:1])
    res = IntEngine(im)(x[:batch], keep=True)
    return im, res.values, x


def artifact_int_model(folder: Path, size: int | None = None, seed: int = 0,
                       batch: int = 2, layer: str | None = None) -> tuple[Any, dict[str, Any], Any]:
    """:func:`build_int_model` for the quantized model of a ``mixq quantize`` artifact, used as it is."""
    from mixq.artifact import load_artifact, read_checkpoint

    _check_layer(layer, read_checkpoint(folder).plan, str(folder))
    art = load_artifact(folder)
    return _integers(art.qmodel, _noise(art.source if art.source is not None else art.model_name, size, seed, batch),
                     batch)


def prepare(model: str, layer: str, config: str, pe: int, simd: int, core: str = "auto",
            size: int | None = None, seed: int = 0, blocks: int | None = None,
            from_: Path | None = None) -> Any:
    """The :class:`~mixq.rtl.layout.Layout` of ``layer`` of ``model`` under ``config`` (see ``CONFIGS``),
    or of the quantized model of the artifact ``from_`` (``model`` and ``config`` then unused)."""
    from mixq.errors import MixqError
    from mixq.rtl.layerdata import layer_data
    from mixq.rtl.layout import plan_layout

    if from_ is not None:
        im, values, _ = artifact_int_model(from_, size, seed, layer=layer)
    else:
        if config not in CONFIGS:
            raise MixqError(f"rtl config {config!r} is not one of {', '.join(CONFIGS)}")
        w, a, alt, rho = CONFIGS[config]
        im, values, _ = build_int_model(model, w, a, alt, rho, size, seed, blocks=blocks, layer=layer)
    return plan_layout(layer_data(im, values, layer), pe, simd, core)


def network_plan(model: str, m: Any, cal: Any, config: str) -> Any:
    """The :class:`~mixq.plan.QuantPlan` of ``config`` (:data:`NETWORK_CONFIGS`) for ``m``, MSQ rows assigned."""
    import dataclasses

    from mixq import api
    from mixq.algorithms.msq import assign_rows
    from mixq.errors import MixqError
    from mixq.formats import parse_format

    if config not in NETWORK_CONFIGS:
        raise MixqError(f"--config {config!r} is not one of {', '.join(NETWORK_CONFIGS)}")
    w, a, alt, rho = NETWORK_CONFIGS[config]
    first = FIRST_ACT.get(config)
    plan = api.default_plan(model, m, cal, weight=parse_format(w), act=parse_format(first or a),
                            weight_alt=parse_format(alt) if alt else None, alt_ratio=rho if alt else 0.0)
    if first:
        names = list(plan.layers)
        layers = {k: dataclasses.replace(v, act=parse_format(a)) if k != names[0] else v
                  for k, v in plan.layers.items()}
        plan = dataclasses.replace(plan, layers=layers)
    return assign_rows(m, plan) if alt else plan


def plan_folding(plan_file: Path) -> dict[str, tuple[int, int]] | None:
    """The folding a plan.json carries (its layers' ``mapping`` pe, simd: e.g. what ``mixq search`` chose), or
    None when it sets none (every mapping the default), as :func:`mixq.hw.estimate.estimate` reads it."""
    from mixq.plan.jsonio import load_plan
    from mixq.plan.plan import HwMapping

    plan = load_plan(plan_file)
    if all(lp.mapping == HwMapping() for lp in plan.layers.values()):
        return None
    return {k: (int(lp.mapping.pe), int(lp.mapping.simd)) for k, lp in plan.layers.items()}


def network_int_model(model: Any, config: str, images: int, from_: Path | None = None,
                      plan_file: Path | None = None, size: int | None = None,
                      blocks: int | None = None, residual_bits: int | None = None) -> tuple[Any, dict[str, Any], Any]:
    """(IntModel, the engine's integers on ``images`` real inputs (``keep=True``), those inputs) for
    ``mixq rtl build``: the model (a zoo name or a :class:`~mixq.zoo.source.ModelSource`: zoo, builder, model
    file) with its real weights quantized under ``config`` (or the plan of
    ``plan_file``, a ``plan.json`` such as ``mixq run`` writes: MSQ rows as it assigns them, or assigned here)
    and calibrated on its default data (CNV: the bundled Fashion-MNIST), or the quantized model of the
    artifact ``from_``. ``blocks`` keeps the first modules of the zoo model's ``features`` (a slice of a large
    network, e.g. MobileNetV2's first inverted residual blocks), ``size`` its input H = W (real photos resized);
    ``residual_bits`` sets the plan's (:mod:`mixq.graph.residual`)."""
    import dataclasses

    import torch

    from mixq import api
    from mixq.algorithms.msq import assign_rows
    from mixq.engine.convert import to_integer
    from mixq.engine.runner import IntEngine
    from mixq.errors import MixqError, ModelError
    from mixq.tasks.data import artifact_inputs, default_inputs

    n = max(images, 1)
    if from_ is not None:
        from mixq.artifact import load_artifact

        art = load_artifact(from_)
        x = artifact_inputs(art, n)
        if x is None:
            x, _ = default_inputs(art.source if art.source is not None else art.model_name, None, n, calib=False)
        qmodel = art.qmodel
    else:
        from mixq.tasks.models import load_model
        from mixq.zoo.source import ModelSource

        src = model if isinstance(model, ModelSource) else ModelSource(model)
        model = src.name if src.kind == "zoo" else src
        try:
            m = load_model(src, pretrained=True)
        except (ModelError, OSError, ImportError, FileNotFoundError):
            if src.kind != "zoo":
                raise
            torch.manual_seed(0)
            m = load_model(src, pretrained=False)
        m.eval()
        if blocks:
            if not isinstance(getattr(m, "features", None), torch.nn.Sequential):
                raise MixqError(f"--blocks: {model} has no `features` sequence to slice")
            m = torch.nn.Sequential(*list(m.features)[:blocks]).eval()  # type: ignore[union-attr, arg-type]
        x, cal = default_inputs(model, size, n)
        cal = cal[:64]
        if plan_file is not None:
            from mixq.plan.jsonio import load_plan

            plan = load_plan(plan_file)
            if plan.model != src.name:
                raise MixqError(f"--plan {plan_file}: a plan for {plan.model!r}, not {src.name!r}")
            if any(lp.weight_alt is not None and lp.alt_rows is None for lp in plan.layers.values()):
                plan = assign_rows(m, plan)
        else:
            plan = network_plan(src.name, m, cal, config)
        if residual_bits is not None:
            plan = dataclasses.replace(plan, residual_bits=residual_bits)
        qmodel = api.quantize(m, plan, cal)
    if x.shape[0] < n:
        raise MixqError(f"--images {images}: only {x.shape[0]} inputs are available")
    x = x[:n]
    im = to_integer(qmodel, x[:1])
    return im, IntEngine(im)(x, keep=True).values, x


_MODEL = typer.Option(None, help="zoo model, e.g. cnv (or --from)")
_LAYER = typer.Option(..., help="conv / linear layer name")
_CONFIG = choice(None, f"layer configuration (default {DEFAULT_CONFIG}; not with --from)", tuple(CONFIGS))
_PE = count(None, "processing elements (output rows in parallel; default: the --from artifact's plan folding for "
                  "the layer, else 4)")
_SIMD = count(None, "lanes per PE (inputs in parallel; default: the --from artifact's plan folding, else 8)")
#: A layer engine's folding when neither the options nor an artifact's plan give one.
LAYER_PE, LAYER_SIMD = 4, 8


def planned_folding(plan: Path | None, from_: Path | None) -> dict[str, tuple[int, int]] | None:
    """The folding a ``--plan`` file carries, else the ``--from`` artifact's plan (a searched plan quantized
    carries the search's), else None (:func:`plan_folding`)."""
    path = plan if plan is not None else (from_ / "plan.json" if from_ is not None else None)
    return plan_folding(path) if path is not None and path.is_file() else None


def layer_folding(from_: Path | None, layer: str, pe: int | None, simd: int | None) -> tuple[int, int]:
    """``(pe, simd)`` of one layer engine: the options where given, else the folding the ``--from`` artifact's
    plan sets for ``layer`` (a searched plan quantized), else 4 x 8."""
    ppe, psimd = (planned_folding(None, from_) or {}).get(layer, (LAYER_PE, LAYER_SIMD))
    return pe if pe is not None else ppe, simd if simd is not None else psimd
_CORE = choice("auto", "fixed-point rows on DSPs (auto) or LUTs", ("auto", "dsp", "lut"))
_SIZE = count(0, "input H=W (0: the zoo's)", 0)
_WEIGHTS = choice("auto", "weight memories", ("auto", "rom", "lutram", "block"))


def register(app: typer.Typer) -> None:
    rtl = typer.Typer(help="Verilog layer engines: generate, co-simulate against the integer engine, synthesize.")
    app.add_typer(rtl, name="rtl")

    def _model(ctx: typer.Context, model: str | None, from_: Path | None, config: str | None) -> str:
        name = resolve_model(model, from_, "--model", ctx=ctx)
        exclusive_with_from(from_, config=config is not None)
        return name

    def _layout(model: str, from_: Path | None, layer: str, config: str | None, pe: int | None, simd: int | None,
                core: str, size: int) -> Any:
        return prepare(model, layer, config or DEFAULT_CONFIG, *layer_folding(from_, layer, pe, simd), core,
                       size or None, from_=from_)

    @rtl.command("generate")
    def generate_cmd(ctx: typer.Context, model: str | None = _MODEL, from_: Path | None = FROM, layer: str = _LAYER,
                     config: str | None = _CONFIG, pe: int | None = _PE, simd: int | None = _SIMD, core: str = _CORE,
                     size: int = _SIZE, weights: str = _WEIGHTS,
                     out: Path | None = typer.Option(None, help="output folder (default runs/rtl-MODEL)")) -> None:
        """Write the layer engine's Verilog and memory files."""
        name = _model(ctx, model, from_, config)
        folder = out_dir(out, "rtl", name)
        from mixq.rtl.cosim import write_sources
        from mixq.rtl.layer import generate_layer

        lay = _layout(name, from_, layer, config, pe, simd, core, size)
        top = "layer_" + layer.replace(".", "_")
        paths = write_sources(generate_layer(lay, top, weights=weights), folder)
        emit({"out": str(folder), "top": top, "files": [str(p) for p in paths]},
             [f"wrote {len(paths)} files to {folder} (top {top})"])

    @rtl.command("simulate")
    def simulate_cmd(ctx: typer.Context, model: str | None = _MODEL, from_: Path | None = FROM, layer: str = _LAYER,
                     config: str | None = _CONFIG, pe: int | None = _PE, simd: int | None = _SIMD, core: str = _CORE,
                     size: int = _SIZE, pixels: int = count(8, "output pixels to simulate"),
                     out: Path | None = typer.Option(None, help="simulation folder (default runs/rtl-sim-MODEL)"),
                     ) -> None:
        """Co-simulate the layer engine in Icarus Verilog against the integer engine (exit 3 on a mismatch)."""
        name = _model(ctx, model, from_, config)
        folder = out_dir(out, "rtl-sim", name)
        from mixq.errors import CheckFailed
        from mixq.rtl.cosim import cosimulate, default_pixels

        lay = _layout(name, from_, layer, config, pe, simd, core, size)
        r = cosimulate(lay, folder, default_pixels(lay, pixels))
        emit(r.to_dict(), [json.dumps(r.to_dict())])
        if not r.ok:
            raise CheckFailed(f"rtl simulate {name} {layer}: the Verilog engine differs from the integer engine "
                              f"(see {folder})")

    @rtl.command("build")
    def build_cmd(ctx: typer.Context,
                  model: str | None = typer.Argument(None, metavar="MODEL", help=MODEL_HELP + "; or --from"),
                  from_: Path | None = FROM,
                  weights_file: str | None = WEIGHTS,
                  input_shape: Any = INPUT_SHAPE,
                  config: str | None = choice(None, "quantization (default fixed8: W8A8; w1a1: binary weights on "
                                              "XNOR lanes, w2a1: 2-bit {-1, 0, 1} weights, each with 1-bit "
                                              "activations and an 8-bit input; not with --from)",
                                              tuple(NETWORK_CONFIGS)),
                  plan: Path | None = typer.Option(None, "--plan", help="a plan.json, e.g. from `mixq search` "
                                                   "(its folding too, if it sets one; not with --config)"),
                  folding: Path | None = typer.Option(None, "--folding", help="the folding: {layer: [pe, simd]} "
                                                      "or an estimate.json (mixq estimate --out); wins over a "
                                                      "--plan's and the PE / SIMD caps"),
                  pe: int = count(16, "PEs per layer at most (pe = min(rows, PE); a --plan's or --from artifact's "
                                      "own folding wins)"),
                  simd: int = count(32, "lanes per PE at most (simd = min(row length, SIMD))"),
                  core: str = _CORE, part: str = typer.Option("xc7z020", help="FPGA part the layouts are costed on"),
                  size: int = _SIZE,
                  blocks: int = count(0, "keep the first N modules of the model's `features` (0: all), e.g. "
                                      "MobileNetV2's first inverted residuals", 0),
                  images: int = count(2, "Fashion-MNIST / default test images to simulate (0: write the build only)",
                                      0),
                  residual_bits: int | None = count(None, "residual streams quantized to this many bits (2..16; "
                                                    "default exact, as wide as the sums; not with --from: the "
                                                    "artifact's plan says)", 2, "--residual-bits", maximum=16),
                  simulator: str = choice("verilator", "simulator", ("verilator", "icarus")),
                  seed: int = count(1, "seed of the randomized tvalid / tready", 0),
                  valid: float = real(0.75, "probability the testbench offers an input beat", 0.0, 1.0),
                  ready: float = real(0.5, "probability of m_axis_tready", 0.0, 1.0),
                  out: Path | None = typer.Option(None, help="output folder (default runs/rtl-build-MODEL)"),
                  ) -> None:
        """Write the whole streaming accelerator (Verilog, memories, files.f, testbench, README, build.json) and
        simulate it on real images against the integer engine (exit 3 on a mismatch)."""
        src = resolve_source(model, from_, weights_file, input_shape, ctx=ctx)
        name = src.name if src is not None else resolve_model(None, from_, "MODEL", ctx=ctx)
        exclusive_with_from(from_, config=config is not None, plan=plan is not None, size=size != 0,
                            blocks=blocks != 0, residual_bits=residual_bits is not None)
        if plan is not None and config is not None:
            from mixq.errors import OptionError

            raise OptionError("--plan and --config are exclusive (the plan sets the formats)")
        folder = out_dir(out, "rtl-build", name)
        from mixq.errors import CheckFailed
        from mixq.rtl.build import SimOptions, build_and_check, load_folding

        cfg = config or "fixed8"
        fold = load_folding(folding) if folding is not None else None
        im, values, _ = network_int_model(src or name, cfg, images, from_, plan, size or None, blocks or None,
                                          residual_bits)
        # the folding: --folding, else the plan's (a --plan file, or the --from artifact's: e.g. a searched plan
        # quantized; before, an artifact's was dropped and the PE / SIMD caps built a slower design), else the caps
        b = build_and_check(im, values, name, folder, images, fold or planned_folding(plan, from_),
                            pe, simd, core, part, SimOptions(simulator, seed, valid, ready),
                            meta={"config": None if from_ or plan else cfg, "plan": str(plan) if plan else None,
                                  "from": str(from_) if from_ else None, "size": size or None,
                                  "blocks": blocks or None})
        res, r = {**b.summary, "out": str(folder)}, b.sim
        lines = [f"wrote {len(b.net.sources)} Verilog files and {len(b.net.mems)} memories to {folder} "
                 f"(top {b.net.top})",
                 f"estimator: {res['estimator_cycles_per_frame']:,} cycles/frame; this design's model: "
                 f"{res['design_cycles_per_frame']:,}, latency at most {res['design_latency_cycles']:,}",
                 f"buffers: {res['buffer_memory_bits'] / 1e6:.2f} Mbit ("
                 f"{sum('rows' in x for x in res['buffers'])} rings of rows, "
                 f"{sum('banks' in x for x in res['buffers'])} frame buffers, "
                 f"{max(x.get('banks', 2) for x in res['buffers'])} banks at most)"]
        if r is not None:
            lines.append(f"{simulator}: {images} images, {r.elements} output elements, {r.mismatches} mismatches, "
                         f"{r.missing} missing, {r.extra} extra; measured "
                         + (f"{r.interval_cycles:,.0f} cycles/frame, " if images > 1 else "")
                         + f"latency {r.latency_cycles:,} cycles")
        emit(res, lines)
        if not b.ok:
            raise CheckFailed(f"rtl build {name}: the simulated accelerator differs from the integer engine "
                              f"(see {folder / 'build.json'})")

    @rtl.command("synth")
    def synth_cmd(ctx: typer.Context, model: str | None = _MODEL, from_: Path | None = FROM, layer: str = _LAYER,
                  config: str | None = _CONFIG, pe: int | None = _PE, simd: int | None = _SIMD, core: str = _CORE,
                  size: int = _SIZE, weights: str = _WEIGHTS) -> None:
        """Synthesize the layer engine with yosys synth_xilinx and compare with the hardware model."""
        from mixq.rtl.layer_synth import synth_layer

        name = _model(ctx, model, from_, config)
        lay = _layout(name, from_, layer, config, pe, simd, core, size)
        res = synth_layer(lay, weights=weights).to_dict()
        emit(res, [json.dumps(res, indent=1)])
