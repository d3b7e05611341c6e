"""``mixq verify`` and ``mixq export``: the integer engine and the exports from the command line.

MODEL is a zoo name or a builder (``FILE.py:FUNCTION``, ``package.module:FUNCTION``; ``--weights``,
``--input-shape``). The quantization plan comes from ``--plan plan.json`` or is the
default plan for ``--weight`` / ``--act``, calibrated with min-max. Or, instead of MODEL,
``--from FOLDER`` takes the quantized model of a ``mixq quantize --out FOLDER`` artifact as it
is (its recipe's weights, scales and rows; no re-calibration). Data: CNV uses the shipped
Fashion-MNIST calibration and test images; ImageNet models use real photos for calibration and
the foolbox ImageNet samples (or more photos) for evaluation, at ``--size``; a builder the shipped
Fashion-MNIST images (1 channel) or the bundled photos (3 channels) at its input size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mixq.cli import _common as cli

EXPORT_FORMATS = {"int": ".json", "qonnx": ".onnx", "qdq": ".onnx"}


def prepare(model: Any, plan_path: Path | None, weight: str, act: str, size: int | None,
            images: int, from_: Path | None = None) -> tuple[Any, Any]:
    """:func:`mixq.tasks.models.quantized` with the ``--weight`` / ``--act`` options parsed (naming them on error)."""
    from mixq.tasks.models import quantized

    fmts = cli.formats(weight=weight, act=act) if from_ is None else {"weight": None, "act": None}
    return quantized(model, plan_path, fmts["weight"], fmts["act"], size, images, from_)


def _layer_rows(layers: list[dict[str, Any]]) -> list[str]:
    head = f"{'layer':28s} {'acc bits':>9s} {'differ':>7s} {'code flips':>10s} {'local':>7s}"
    rows = [head]
    for s in layers:
        rows.append(f"{s['layer'][:28]:28s} {s['acc_bits']:>4d}/{s['acc_budget']:<4d} {s['mismatches']:>7d} "
                    f"{100 * s['code_flip_rate']:>9.3f}% {s['local_max_diff_lsb']:>7.3f}")
    return rows


_MODEL = typer.Argument(None, metavar="MODEL", help=f"{cli.MODEL_HELP}; or --from")
_PLAN = typer.Option(None, "--plan", help="quantization plan (JSON); default: --weight/--act")
_WEIGHT = typer.Option(cli.DEFAULT_WEIGHT, help="weight format of the default plan")
_ACT = typer.Option(cli.DEFAULT_ACT, help="activation format of the default plan")
_SIZE = cli.count(None, "input resolution of ImageNet and builder models (default: the model's)", 8)


def _checked(ctx: typer.Context, command: str, model: str | None, from_: Path | None, weights: str | None,
             input_shape: str | None, plan: Path | None, weight: str, act: str, out: Path | None) -> tuple[Any, Path]:
    """(model source, output folder), every option checked before any work: MODEL or ``--from`` (which
    refuses the options that would build another model or plan), the output folder writable."""
    src = cli.resolve_source(model, from_, weights, input_shape, ctx=ctx)
    cli.exclusive_with_from(from_, plan=plan is not None, weight=weight != cli.DEFAULT_WEIGHT,
                            act=act != cli.DEFAULT_ACT)
    return src, cli.out_dir(out, command, src.name)


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify_cmd(
        ctx: typer.Context,
        model: str | None = _MODEL,
        from_: Path | None = cli.FROM,
        weights: str | None = cli.WEIGHTS,
        input_shape: str | None = cli.INPUT_SHAPE,
        plan: Path | None = _PLAN,
        weight: str = _WEIGHT,
        act: str = _ACT,
        images: int = cli.count(256, "inputs to compare on"),
        size: int | None = _SIZE,
        batch_size: int = cli.count(32, "inputs per engine batch"),
        mult_bits: int = cli.count(16, "width of the dyadic requantization multipliers", 2),
        acc_bits: int = cli.count(32, "accumulator width the hardware provides", 2, maximum=63),
        overflow: str = cli.choice("error", "accumulator overflow policy", ("error", "saturate")),
        out: Path | None = typer.Option(None, "--out", help="output folder for verify.json "
                                                            "(default runs/verify-MODEL)"),
    ) -> None:
        """Compare fake quant, hardware-faithful fake quant and the integer engine (of MODEL, or of a --from
        artifact as it is); exit 3 unless exact."""
        from mixq.engine.verify import verify
        from mixq.errors import CheckFailed
        from mixq.io import atomic_write_json

        src, folder = _checked(ctx, "verify", model, from_, weights, input_shape, plan, weight, act, out)
        qmodel, x = prepare(src, plan, weight, act, size, images, from_)
        rep = verify(qmodel, x, batch_size=batch_size, mult_bits=mult_bits, acc_bits=acc_bits, overflow=overflow)
        if from_ is not None:
            rep = {"artifact": str(from_), **rep}
        atomic_write_json(folder / "verify.json", rep)
        lines = _layer_rows(rep["layers"]) + [
            f"integer engine vs hardware-faithful fake quant: {'EXACT' if rep['exact'] else 'MISMATCH'} "
            f"({rep['mismatching_outputs']} of {rep['total_outputs']} outputs differ, {rep['images']} inputs)",
            f"vs ordinary fake quant: argmax agreement {100 * rep['argmax_agreement']:.2f}%, "
            f"max |difference| {rep['max_abs_diff_fakequant']:.4g} (outputs up to "
            f"{rep['max_abs_output_fakequant']:.4g})"]
        if rep["saturated"]:
            lines.append(f"saturated accumulators: {json.dumps(rep['saturated'])}")
        lines.append(f"wrote {folder / 'verify.json'}")
        cli.emit({k: v for k, v in rep.items() if k != "layers"} | {"out": str(folder)}, lines)
        if not rep["exact"]:
            raise CheckFailed(f"verify {src.name}: the integer engine differs from hardware-faithful fake quant in "
                              f"{rep['mismatching_outputs']} of {rep['total_outputs']} outputs")

    @app.command("export")
    def export_cmd(
        ctx: typer.Context,
        model: str | None = _MODEL,
        fmt: str = cli.choice("int", "export format: integer model (json+npz), QONNX, ONNX QDQ (8-bit)",
                              tuple(EXPORT_FORMATS), "--format"),
        from_: Path | None = cli.FROM,
        weights: str | None = cli.WEIGHTS,
        input_shape: str | None = cli.INPUT_SHAPE,
        out: Path | None = typer.Option(None, "--out", help="output folder (default runs/export-MODEL); the "
                                                            "model is written as model.onnx or model.json"),
        plan: Path | None = _PLAN,
        weight: str = _WEIGHT,
        act: str = _ACT,
        size: int | None = _SIZE,
        check: bool = typer.Option(False, help="run the export in its runtime and compare with mixq"),
        images: int = cli.count(16, "inputs for --check"),
    ) -> None:
        """Export MODEL under a plan (or a --from artifact, as it is) as QONNX, ONNX QDQ or the integer model."""
        src, folder = _checked(ctx, "export", model, from_, weights, input_shape, plan, weight, act, out)
        from mixq.engine import to_integer
        from mixq.export import EXPORTERS
        from mixq.export.check import check_export

        qmodel, x = prepare(src, plan, weight, act, size, images, from_)
        im = to_integer(qmodel, x)
        path = EXPORTERS[fmt](im, folder / f"model{EXPORT_FORMATS[fmt]}")
        cli.say(f"wrote {path}" + (f" and {path.with_suffix('.npz')}" if fmt == "int" else ""))
        result: dict[str, Any] = {"out": str(folder), "file": str(path), "format": fmt}
        if from_ is not None:
            result["artifact"] = str(from_)
        if check:
            res = check_export(fmt, path, qmodel, im, x)
            result["check"] = res
            cli.say(f"check ({res['runtime']}): max |difference| {res['max_abs_diff']:.4g}, "
                    f"argmax agreement {100 * res['argmax_agreement']:.2f}% on {res['images']} inputs")
        cli.emit(result)
