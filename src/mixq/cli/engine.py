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

from mixq.cli._common import (
    DEFAULT_ACT,
    DEFAULT_WEIGHT,
    FROM,
    INPUT_SHAPE,
    MODEL_HELP,
    WEIGHTS,
    choice,
    count,
    emit,
    exclusive_with_from,
    formats,
    load_model,
    out_dir,
    resolve_source,
    say,
)

EXPORT_FORMATS = {"int": ".json", "qonnx": ".onnx", "qdq": ".onnx"}


def builder_inputs(source: Any, size: int | None, images: int, calib: bool = True) -> tuple[Any, Any]:
    """(evaluation inputs, calibration inputs or None) for a builder model, by its input channels: 1 -> the
    shipped Fashion-MNIST test / train images, 3 -> the bundled photos (ImageNet statistics), at its H x W
    (``size`` overrides both)."""
    from mixq.data.sources import Preprocess, load_images
    from mixq.errors import OptionError

    c, h, w = source.shape()
    try:
        pre = Preprocess.for_input((c, h, w), size=(size, size) if size else None)
    except OptionError as e:
        raise OptionError(f"{source.spec}: no default data for a {c}-channel input (1 gray or 3 RGB): {e}") from None
    if c == 1:
        x = load_images("shipped-test", pre, images, name=f"{source.name}: shipped-test").x
        cal = load_images("shipped", pre, 512, name=f"{source.name}: shipped").x if calib else None
    else:
        x = load_images("photos", pre, max(images, 1), seed=1, name=f"{source.name}: photos").x
        cal = load_images("photos", pre, 64, seed=0, name=f"{source.name}: photos").x if calib else None
    return x[:images], cal


def inputs(model: Any, size: int | None, images: int, calib: bool = True) -> tuple[Any, Any]:
    """(evaluation inputs, calibration inputs or None) for a zoo model (a name or a zoo
    :class:`~mixq.zoo.source.ModelSource`) or a builder's (:func:`builder_inputs`)."""
    import torch

    from mixq import data, zoo
    from mixq.errors import MixqError

    if not isinstance(model, str):
        if model.kind != "zoo":
            return builder_inputs(model, size, images, calib)
        model = model.name
    if model == "cnv":
        from mixq.run import RunConfig, _load_eval_data

        xe, _, shipped = _load_eval_data(RunConfig(calib_images=512))
        return xe[:images], shipped
    c, h, _ = zoo.input_shape(model)
    s = size or h
    if c != 3:
        raise MixqError(f"{model}: only CNV and 3-channel ImageNet models have data here")
    cal = data.calibration_set(64, size=s, seed=0) if calib else None
    try:
        imgs, _ = data.foolbox_samples("imagenet")
        x = torch.stack([data.imagenet_preprocess(i, resize=max(s * 256 // 224, s), crop=s) for i in imgs])
    except MixqError:
        x = data.calibration_set(max(images, 1), size=s, seed=1)
    return x[:images], cal


def artifact_inputs(art: Any, images: int) -> Any:
    """Inputs for an artifact's checks from the data it records: its ``--eval`` source, else its calibration
    source, with its preprocessing (a 1-D model's .npz signals as they are); ``None`` when it records none."""
    from mixq.cli.quantize import load_source, recorded_data

    calib, evalsrc, pre = recorded_data(art.summary)
    source = evalsrc or calib
    if source is None or art.source is None:
        return None
    shape = tuple(art.source.shape())
    if pre is None and len(shape) >= 3:
        return None
    return load_source(source, pre, images, f"--from {art.folder}:", shape).x[:images]


def prepare(model: Any, plan_path: Path | None, weight: str, act: str, size: int | None,
            images: int, from_: Path | None = None) -> tuple[Any, Any]:
    """(fake-quant model, evaluation inputs): the ``--from`` artifact's model as it is, or ``model`` (a
    :class:`~mixq.zoo.source.ModelSource` or a zoo name) under ``--plan`` / the default plan for
    ``weight`` / ``act``, calibrated with min-max."""
    if from_ is not None:
        from mixq.artifact import load_artifact

        art = load_artifact(from_)
        recorded = artifact_inputs(art, images) if size is None else None
        if recorded is not None:
            return art.qmodel, recorded
        x, _ = inputs(art.source if art.source is not None else art.model_name, size, images, calib=False)
        return art.qmodel, x

    import torch

    from mixq import api
    from mixq.cli._common import load_checked_plan, model_source
    from mixq.graph.bnfold import fold_bn
    from mixq.graph.capture import capture

    src = model_source(model) if isinstance(model, str) else model
    fmts = formats(weight=weight, act=act)
    torch.manual_seed(0)
    m = load_model(src, pretrained=True)
    folded = fold_bn(m.eval())
    x, calib = inputs(src, size, images)
    if plan_path is not None:
        c, h, w = src.shape()
        plan = load_checked_plan(plan_path, src.name, capture(folded, (c, size or h, size or w)))
    else:
        plan = api.default_plan(src.name, folded, calib[:64], weight=fmts["weight"], act=fmts["act"])
    return api.quantize(folded, plan, calib, fold=False), x


def _layer_rows(layers: list[dict[str, Any]]) -> list[str]:
    head = f"{'layer':28s} {'acc bits':>9s} {'differ':>7s} {'code flips':>10s} {'local':>7s}"
    rows = [head]
    for s in layers:
        rows.append(f"{s['layer'][:28]:28s} {s['acc_bits']:>4d}/{s['acc_budget']:<4d} {s['mismatches']:>7d} "
                    f"{100 * s['code_flip_rate']:>9.3f}% {s['local_max_diff_lsb']:>7.3f}")
    return rows


_PLAN = typer.Option(None, "--plan", help="quantization plan (JSON); default: --weight/--act")
_WEIGHT = typer.Option(DEFAULT_WEIGHT, help="weight format of the default plan")
_ACT = typer.Option(DEFAULT_ACT, help="activation format of the default plan")
_SIZE = count(None, "input resolution of ImageNet and builder models (default: the model's)", 8)


def _no_plan_options(from_: Path | None, plan: Path | None, weight: str, act: str) -> None:
    exclusive_with_from(from_, plan=plan is not None, weight=weight != DEFAULT_WEIGHT, act=act != DEFAULT_ACT)


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify_cmd(
        ctx: typer.Context,
        model: str | None = typer.Argument(None, metavar="MODEL", help=f"{MODEL_HELP}; or --from"),
        from_: Path | None = FROM,
        weights: str | None = WEIGHTS,
        input_shape: str | None = INPUT_SHAPE,
        plan: Path | None = _PLAN,
        weight: str = _WEIGHT,
        act: str = _ACT,
        images: int = count(256, "inputs to compare on"),
        size: int | None = _SIZE,
        batch_size: int = count(32, "inputs per engine batch"),
        mult_bits: int = count(16, "width of the dyadic requantization multipliers", 2),
        acc_bits: int = count(32, "accumulator width the hardware provides", 2),
        overflow: str = choice("error", "accumulator overflow policy", ("error", "saturate")),
        out: Path | None = typer.Option(None, "--out", help="output folder for verify.json "
                                                            "(default runs/verify-MODEL)"),
    ) -> None:
        """Compare fake quant, hardware-faithful fake quant and the integer engine (of MODEL, or of a --from
        artifact as it is); exit 3 unless exact."""
        from mixq.engine.verify import verify
        from mixq.errors import CheckFailed
        from mixq.io import atomic_write_json

        src = resolve_source(model, from_, weights, input_shape, ctx=ctx)
        name = src.name
        _no_plan_options(from_, plan, weight, act)
        folder = out_dir(out, "verify", name)
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
        emit({k: v for k, v in rep.items() if k != "layers"} | {"out": str(folder)}, lines)
        if not rep["exact"]:
            raise CheckFailed(f"verify {name}: the integer engine differs from hardware-faithful fake quant in "
                              f"{rep['mismatching_outputs']} of {rep['total_outputs']} outputs")

    @app.command("export")
    def export_cmd(
        ctx: typer.Context,
        model: str | None = typer.Argument(None, metavar="MODEL", help=f"{MODEL_HELP}; or --from"),
        from_: Path | None = FROM,
        weights: str | None = WEIGHTS,
        input_shape: str | None = INPUT_SHAPE,
        fmt: str = choice("int", "export format: integer model (json+npz), QONNX, ONNX QDQ (8-bit)",
                          tuple(EXPORT_FORMATS), "--format"),
        out: Path | None = typer.Option(None, "--out", help="output folder (default runs/export-MODEL); the "
                                                            "model is written as model.onnx or model.json"),
        plan: Path | None = _PLAN,
        weight: str = _WEIGHT,
        act: str = _ACT,
        size: int | None = _SIZE,
        check: bool = typer.Option(False, help="run the export in its runtime and compare with mixq"),
        images: int = count(16, "inputs for --check"),
    ) -> None:
        """Export a quantized zoo model (or a --from artifact, as it is) as QONNX, ONNX QDQ or the integer model."""
        src = resolve_source(model, from_, weights, input_shape, ctx=ctx)
        name = src.name
        _no_plan_options(from_, plan, weight, act)
        folder = out_dir(out, "export", name)
        from mixq.engine import to_integer
        from mixq.export import EXPORTERS
        from mixq.export.check import check_export

        qmodel, x = prepare(src, plan, weight, act, size, images, from_)
        im = to_integer(qmodel, x)
        path = EXPORTERS[fmt](im, folder / f"model{EXPORT_FORMATS[fmt]}")
        say(f"wrote {path}" + (f" and {path.with_suffix('.npz')}" if fmt == "int" else ""))
        result: dict[str, Any] = {"out": str(folder), "file": str(path), "format": fmt}
        if from_ is not None:
            result["artifact"] = str(from_)
        if check:
            res = check_export(fmt, path, qmodel, im, x)
            result["check"] = res
            say(f"check ({res['runtime']}): max |difference| {res['max_abs_diff']:.4g}, "
                f"argmax agreement {100 * res['argmax_agreement']:.2f}% on {res['images']} inputs")
        emit(result)
