"""`mixq rtl generate|simulate|synth`: layer engines from the integer model (thin wrappers over :mod:`mixq.rtl`).

The layer comes from a zoo model quantized with the default plan (``--weight``,
``--act``; ``--alt`` / ``--ratio`` add MSQ's second row format, rows assigned by
:func:`mixq.algorithms.msq.assign_rows`) and converted to the integer model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

CONFIGS = {  # name -> (weight, act, weight_alt, alt_ratio)
    "msq4": ("fixed4n", "ufixed4", "sp2_4", 0.5),
    "fixed8": ("fixed8", "ufixed8", None, 0.0),
    "pot4": ("fixed4n", "ufixed4", "pot4", 0.5),  # power-of-two rows (shift lanes) beside fixed point
}


def build_int_model(model: str, weight: str, act: str, alt: str | None = None, ratio: float = 0.0,
                    size: int | None = None, seed: int = 0, batch: int = 2,
                    blocks: int | None = None) -> tuple[Any, dict[str, Any], Any]:
    """(IntModel, the engine's integers for a batch of ``batch`` inputs, the input batch).

    Real weights when the zoo has them, else a seeded random init; inputs are seeded
    uniform noise in [0, 1) at the zoo's input shape (``size`` overrides H and W).
    ``blocks`` keeps only the first ``blocks`` modules of ``model.features`` (the real
    layers of a large network, quickly; layer names lose the ``features.`` prefix).
    """
    import torch

    from mixq import api, zoo
    from mixq.algorithms.msq import assign_rows
    from mixq.engine.convert import to_integer
    from mixq.engine.run import IntEngine
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
    c, h, w = zoo.input_shape(model)
    if size:
        h = w = size
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(max(batch, 2), c, h, w, generator=g)
    plan = api.default_plan(model, m, x, weight=parse_format(weight), act=parse_format(act),
                            weight_alt=parse_format(alt) if alt else None, alt_ratio=ratio if alt else 0.0)
    if alt:
        plan = assign_rows(m, plan)
    q = api.quantize(m, plan, x)
    im = to_integer(q, x[:1])
    res = IntEngine(im)(x[:batch], keep=True)
    return im, res.values, x


def prepare(model: str, layer: str, config: str, pe: int, simd: int, core: str = "auto",
            size: int | None = None, seed: int = 0, blocks: int | None = None) -> Any:
    """The :class:`~mixq.rtl.layout.Layout` of ``layer`` of ``model`` under ``config`` (see ``CONFIGS``)."""
    from mixq.errors import MixqError
    from mixq.rtl.layerdata import layer_data
    from mixq.rtl.layout import plan_layout

    if config not in CONFIGS:
        raise MixqError(f"rtl config {config!r} is not one of {', '.join(CONFIGS)}")
    w, a, alt, rho = CONFIGS[config]
    im, values, _ = build_int_model(model, w, a, alt, rho, size, seed, blocks=blocks)
    return plan_layout(layer_data(im, values, layer), pe, simd, core)


def register(app: typer.Typer) -> None:
    rtl = typer.Typer(help="Verilog layer engines: generate, co-simulate against the integer engine, synthesize.")
    app.add_typer(rtl, name="rtl")

    def _common(model: str, layer: str, config: str, pe: int, simd: int, core: str, size: int | None) -> Any:
        from mixq.errors import MixqError

        try:
            return prepare(model, layer, config, pe, simd, core, size)
        except MixqError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    @rtl.command("generate")
    def generate_cmd(model: str = typer.Option(..., help="zoo model, e.g. cnv"),
                     layer: str = typer.Option(..., help="conv / linear layer name"),
                     config: str = typer.Option("msq4", help="msq4 | fixed8 | pot4"),
                     pe: int = typer.Option(4), simd: int = typer.Option(8),
                     core: str = typer.Option("auto", help="fixed-point rows on dsp (auto) or lut"),
                     size: int = typer.Option(0, help="input H=W (0: the zoo's)"),
                     weights: str = typer.Option("auto", help="weight memories: auto | rom | lutram | block"),
                     out: Path = typer.Option(Path("rtl_out"), help="output directory")) -> None:
        """Write the layer engine's Verilog and memory files."""
        from mixq.rtl.cosim import write_sources
        from mixq.rtl.layer import generate_layer

        lay = _common(model, layer, config, pe, simd, core, size or None)
        top = "layer_" + layer.replace(".", "_")
        paths = write_sources(generate_layer(lay, top, weights=weights), out)
        typer.echo(f"wrote {len(paths)} files to {out} (top {top})")

    @rtl.command("simulate")
    def simulate_cmd(model: str = typer.Option(...), layer: str = typer.Option(...),
                     config: str = typer.Option("msq4"), pe: int = typer.Option(4), simd: int = typer.Option(8),
                     core: str = typer.Option("auto"), size: int = typer.Option(0),
                     pixels: int = typer.Option(8, help="output pixels to simulate"),
                     out: Path = typer.Option(Path("rtl_sim"))) -> None:
        """Co-simulate the layer engine in Icarus Verilog against the integer engine (exit 1 on a mismatch)."""
        from mixq.rtl.cosim import cosimulate, default_pixels

        lay = _common(model, layer, config, pe, simd, core, size or None)
        r = cosimulate(lay, out, default_pixels(lay, pixels))
        typer.echo(json.dumps(r.to_dict()))
        if not r.ok:
            raise typer.Exit(1)

    @rtl.command("synth")
    def synth_cmd(model: str = typer.Option(...), layer: str = typer.Option(...),
                  config: str = typer.Option("msq4"), pe: int = typer.Option(4), simd: int = typer.Option(8),
                  core: str = typer.Option("auto"), size: int = typer.Option(0),
                  weights: str = typer.Option("auto", help="weight memories: auto | rom | lutram | block")) -> None:
        """Synthesize the layer engine with yosys synth_xilinx and compare with the hardware model."""
        from mixq.rtl.layer_synth import synth_layer

        lay = _common(model, layer, config, pe, simd, core, size or None)
        typer.echo(json.dumps(synth_layer(lay, weights=weights).to_dict(), indent=1))
