"""What every command shares: option types checked at parse time, the output folder, result printing.

Options are validated by the parser (``typer``) before any work starts, so a bad value
is a usage error (exit 2) naming the option. Everything here is cheap to import: no
torch, no mixq subpackage that imports torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import typer

#: The one default plan of every command that builds one (verify, export, estimate, run, quantize).
DEFAULT_WEIGHT = "fixed8"
DEFAULT_ACT = "ufixed8"

_state: dict[str, Any] = {"json": False, "resume_hint": None}


# ---------------------------------------------------------------- option factories (validated at parse time)

def _check(ok: Callable[[Any], bool], what: str) -> Callable[[Any], Any]:
    def callback(value: Any) -> Any:
        if value is not None and not ok(value):
            raise typer.BadParameter(f"must be {what}, got {value!r}")
        return value

    return callback


def _finite(v: float) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def count(default: int | None, help: str, minimum: int = 1, *names: str, maximum: int | None = None) -> Any:
    """An integer option that must be ``>= minimum`` (and ``<= maximum`` when given; ``None`` allowed as 'not
    given')."""
    what = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    return typer.Option(default, *names, help=help,
                        callback=_check(lambda v: v >= minimum and (maximum is None or v <= maximum), what))


def real(default: float | None, help: str, low: float = 0.0, high: float = math.inf, *names: str,
         low_open: bool = True, high_open: bool = False) -> Any:
    """A finite float option in ``(low, high]`` (by default: finite and > 0)."""
    def ok(v: float) -> bool:
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return _finite(v) and above and below

    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    what = f"a finite number in {lo}{low:g}, {high:g}{hi}" if math.isfinite(high) else (
        f"a finite number {'>' if low_open else '>='} {low:g}")
    return typer.Option(default, *names, help=help, callback=_check(ok, what))


def choice(default: str | None, help: str, choices: Sequence[str], *names: str) -> Any:
    """A string option with a fixed set of values."""
    allowed = tuple(choices)
    return typer.Option(default, *names, help=f"{help} ({' | '.join(allowed)})",
                        callback=_check(lambda v: v in allowed, f"one of {', '.join(allowed)}"))


def choices(help: str, allowed: Sequence[str], *names: str) -> Any:
    """A repeatable string option (a list, ``None`` when not given), each value one of ``allowed``."""
    allowed = tuple(allowed)
    check = _check(lambda v: v in allowed, f"one of {', '.join(allowed)}")
    return typer.Option(None, *names, help=f"{help} ({' | '.join(allowed)})",
                        callback=lambda values: [check(v) for v in values] if values else values)


def device_option(default: str = "cpu", help: str = "where the model trains: cpu, cuda or cuda:N") -> Any:
    """A torch device option: ``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has it is checked by
    the command, before any work)."""
    return typer.Option(default, help=help,
                        callback=_check(lambda v: re.fullmatch(r"cpu|cuda(:[0-9]+)?", v) is not None,
                                        "cpu, cuda or cuda:N"))


def check_device(device: str) -> None:
    """``--device`` names one this machine has (checked before any work): one line naming it if not."""
    if device == "cpu":
        return
    from mixq.errors import OptionError
    from mixq.training.config import device_problem

    problem = device_problem(device)
    if problem is not None:
        raise OptionError(f"--device {device}: {problem}")


def out_option(what: str = "output folder") -> Any:
    return typer.Option(None, "--out", help=f"{what} (default runs/<command>-<model>)")


#: ``--from FOLDER``: the quantized model (and its plan) of a ``mixq quantize --out`` folder, used as it is.
FROM = typer.Option(None, "--from", help="artifact folder written by mixq quantize: its quantized model and plan, "
                                         "as they are (no re-calibration), instead of MODEL")


# ---------------------------------------------------------------- outputs

def out_dir(out: Path | None, command: str, model: str | None = None) -> Path:
    """The output folder of a command: ``--out`` or ``runs/<command>-<model>``, checked writable now.

    Nothing is created here (a failed command leaves nothing behind); the folder is
    created by the first atomic write.
    """
    from mixq.validate import writable_dir

    path = out if out is not None else Path("runs") / (f"{command}-{_slug(model)}" if model else command)
    writable_dir(path, "--out")
    return path


def _slug(name: str) -> str:
    base = os.path.basename(str(name).rstrip("/")) or "model"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base)


# ---------------------------------------------------------------- results

def set_json(enabled: bool) -> None:
    _state["json"] = enabled


def json_mode() -> bool:
    return bool(_state["json"])


def emit(result: dict[str, Any], lines: Iterable[str] = ()) -> None:
    """Print a command's result: human ``lines`` normally, one JSON document with ``--json``."""
    if json_mode():
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    for line in lines:
        typer.echo(line)


def say(line: str) -> None:
    """A human line (suppressed with ``--json``, where stdout carries only the JSON result)."""
    if not json_mode():
        typer.echo(line)


def set_resume_hint(hint: str | None) -> None:
    """What to tell the user when this command is interrupted (e.g. the resumable checkpoint)."""
    _state["resume_hint"] = hint


def resume_hint() -> str | None:
    hint = _state["resume_hint"]
    return str(hint) if hint else None


# ---------------------------------------------------------------- inputs

def _shape(value: str | None) -> tuple[int, ...] | None:
    """``--input-shape C,H,W`` checked at parse time (a bad value is a usage error)."""
    if value is None:
        return None
    from mixq.errors import OptionError
    from mixq.zoo.source import parse_shape

    try:
        return parse_shape(value, "input shape")
    except OptionError:
        raise typer.BadParameter(f"must be C,H,W with three integers >= 1 (e.g. 3,32,32), got {value!r}") from None


#: ``--weights FILE``: a state dict (``torch.save(model.state_dict())``) loaded strictly into MODEL.
WEIGHTS = typer.Option(None, "--weights", help="state dict file (torch.save(model.state_dict(), FILE)) loaded "
                                               "strictly into MODEL (a zoo model or a builder)")
#: ``--input-shape C,H,W``: the input of a builder model (zoo models know theirs).
INPUT_SHAPE = typer.Option(None, "--input-shape", help="input shape C,H,W of a builder MODEL, e.g. 3,32,32 "
                                                       "(default: its input_shape attribute; zoo models know theirs)",
                           callback=_shape)


def _size(value: str | None) -> tuple[int, int] | None:
    """``--input-size H`` or ``HxW`` (checked at parse time: a bad value is a usage error)."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", value)
    if m is None or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise typer.BadParameter(f"must be H or HxW with integers >= 1, got {value!r}")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def _values(value: str | None) -> tuple[float, ...] | None:
    """``--mean`` / ``--std``: comma-separated finite numbers, one per channel."""
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value.split(","))
    except ValueError:
        vals = ()
    if not vals or not all(math.isfinite(v) for v in vals):
        raise typer.BadParameter(f"must be comma-separated finite numbers (one per channel), got {value!r}")
    return vals


#: The image preprocessing options (`mixq.data.sources.Preprocess`) of the commands that read images.
INPUT_SIZE = typer.Option(None, "--input-size", help="images resized to H or HxW (default: the model's input)",
                          callback=_size)
MEAN = typer.Option(None, "--mean", help="per-channel mean, a,b,c (default: ImageNet for RGB, Fashion-MNIST for "
                                         "gray)", callback=_values)
STD = typer.Option(None, "--std", help="per-channel std, a,b,c", callback=_values)
GRAY = typer.Option(None, "--grayscale/--rgb", help="color mode the model takes (default: its input channels)")


#: The MODEL argument's help where a builder is accepted.
MODEL_HELP = ("zoo model name (cnv, resnet18, mobilenet_v2, ...), a model file (.onnx, TorchScript .pt/.ts, "
              "torch.export .pt2), or a builder FILE.py:FUNCTION or package.module:FUNCTION")


def model_source(model: str, weights: str | None = None, input_shape: Any = None) -> Any:
    """The :class:`mixq.zoo.source.ModelSource` of MODEL (a zoo name or a builder), ``--weights`` and
    ``--input-shape``, checked now: a builder's input shape must be known (one-line error otherwise)."""
    from mixq.zoo.source import ModelSource

    src = ModelSource(model, weights, input_shape)
    src.shape()
    return src


def resolve_source(model: str | None, from_: Path | None, weights: str | None = None, input_shape: Any = None,
                   ctx: Any = None) -> Any:
    """:func:`resolve_model` for the commands that take a builder: the :class:`ModelSource` of MODEL, or the
    one the ``--from`` artifact records (``--weights`` / ``--input-shape`` then refused)."""
    resolve_model(model, from_, ctx=ctx, check=False)
    if from_ is not None:
        exclusive_with_from(from_, weights=weights is not None, input_shape=input_shape is not None)
        from mixq.artifact import read_checkpoint

        return read_checkpoint(from_).source
    assert model is not None
    return model_source(model, weights, input_shape)


def zoo_model(name: str) -> str:
    """``name`` if it is a zoo model, else a one-line error listing the models."""
    from mixq import zoo
    from mixq.errors import ModelError

    if name not in zoo.available():
        raise ModelError(f"model {name!r} is not a zoo model ({', '.join(zoo.available())})")
    return name


def resolve_model(model: str | None, from_: Path | None, what: str = "MODEL", ctx: Any = None,
                  check: bool = True) -> str:
    """The zoo model a command works on: ``model`` (checked against the zoo) or the one the ``--from``
    artifact holds. Exactly one of them: neither is a usage error (exit 2; ``ctx``, the command's
    ``typer.Context``, names the command), both an :class:`OptionError`."""
    from mixq.errors import OptionError

    if model is not None and from_ is not None:
        raise OptionError(f"give either {what} or --from ARTIFACT, not both ({what} {model!r}, --from {from_})")
    if from_ is not None:
        if not check:
            return ""
        from mixq.artifact import read_checkpoint

        return read_checkpoint(from_).model_name
    if model is None:
        raise typer.BadParameter("none given; give a zoo model name or --from ARTIFACT (a mixq quantize --out "
                                 "folder)", ctx=ctx, param_hint=what)
    return zoo_model(model) if check else model


def exclusive_with_from(from_: Path | None, **given: bool) -> None:
    """``--from`` brings the quantized model and its plan: refuse the options that would build another
    (``given``: option name -> whether it was given)."""
    if from_ is None:
        return
    bad = [f"--{k.replace('_', '-')}" for k, v in given.items() if v]
    if bad:
        from mixq.errors import OptionError

        raise OptionError(f"--from {from_} brings its own quantized model and plan; drop {', '.join(bad)}")


def formats(**named: str | None) -> dict[str, Any]:
    """Parse format options (``weight='fixed8'``...) before any work, naming the option on error."""
    from mixq.errors import FormatError
    from mixq.formats import parse_format

    out: dict[str, Any] = {}
    for opt, spec in named.items():
        if spec is None:
            out[opt] = None
            continue
        try:
            out[opt] = parse_format(spec)
        except FormatError as e:
            raise FormatError(f"--{opt.replace('_', '-')}: {e}") from None
    return out
