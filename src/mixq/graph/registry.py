"""Which layers of a model mixq quantizes, which it cannot, and why: the one table of compute modules.

Every stage that looks for "the compute layers" (``default_plan``, ``to_quantized``, ``capture``,
the module swap, signed-input detection) asks this module instead of checking types itself.

:data:`COMPUTE_MODULES` lists every module type that computes a convolution or a matrix product
(checked with ``isinstance``, so subclasses are covered):

===================================  ================================================================
type                                 handling
===================================  ================================================================
``nn.Conv2d``                        quantized (``QConv2d``)
``nn.Linear``                        quantized (``QLinear``)
``nn.Conv1d``                        quantized as the 1 x k Conv2d :mod:`mixq.graph.normalize` writes
``nn.ConvTranspose2d``               quantized as the Conv2d after zero insertion that normalize writes
``nn.Conv3d``                        not supported yet
``nn.ConvTranspose1d/3d``            not supported yet
``nn.Bilinear``                      not supported yet
``nn.MultiheadAttention``            not supported yet (its projections are used as tensors)
``nn.RNNBase`` (RNN / LSTM / GRU)    not supported yet
===================================  ================================================================

Capture, ``fold_bn``, ``default_plan`` and ``quantize`` normalize first; a Conv1d or ConvTranspose2d met
un-normalized is refused like the unsupported types.

A subclass of ``nn.Conv2d`` / ``nn.Linear`` is quantized like its base class when

* its ``forward`` (and, for a conv, ``_conv_forward``) is the base class's: it computes exactly the
  base layer, so the quantized layer is built from a plain copy of it; or
* it has its own ``forward`` (a "same"-padding wrapper that pads, then calls ``F.conv2d``) and, on
  the sample data, a plain layer with the same weights computes the same output — with its own
  ``padding``, or with the static symmetric padding TF-"same" gives for the input size seen (odd
  total padding is asymmetric and cannot be reproduced). The plain layer then takes its place, and the
  plan's ``meta["converted_layers"]`` records the padding used. The equivalence holds for the input
  size of the sample; without a sample such a layer is refused.

Anything else that computes — a listed unsupported type, a subclass whose own forward cannot be
reproduced, a functional ``conv*`` / ``linear`` / ``bilinear`` / ``matmul`` call on one of the model's
parameters outside those layers — is refused with a one-line :class:`~mixq.errors.ModelError` naming
the layer, its type and the stage, unless the caller allows float layers; the plan then records them
in ``meta["float_layers"]`` (layer -> reason). Already quantized layers (``QConv2d`` / ``QLinear`` and
their subclasses) are recognised as such.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from mixq.errors import ModelError
from mixq.modes import eval_mode
from mixq.nn import QConv2d, QLinear

# module type -> None (quantized as its QConv2d / QLinear) or why it is not supported yet.
COMPUTE_MODULES: dict[type[nn.Module], str | None] = {
    nn.Conv2d: None,
    nn.Linear: None,
    nn.Conv1d: "not normalized: mixq.graph.normalize writes it as a 1xk Conv2d",
    nn.Conv3d: "no quantized 3-D convolution",
    nn.ConvTranspose1d: "no quantized transposed convolution",
    nn.ConvTranspose2d: "not normalized: mixq.graph.normalize writes it as zero insertion + Conv2d",
    nn.ConvTranspose3d: "no quantized transposed convolution",
    nn.Bilinear: "no quantized bilinear product",
    nn.MultiheadAttention: "its projections are applied as tensors, not as Linear layers",
    nn.RNNBase: "no quantized recurrent layer",
}
QUANTIZABLE: tuple[type[nn.Module], ...] = tuple(t for t, why in COMPUTE_MODULES.items() if why is None)
COMPUTE_TYPES: tuple[type[nn.Module], ...] = tuple(COMPUTE_MODULES)
_QUANTIZED: tuple[type[nn.Module], ...] = (QConv2d, QLinear)

# Functional ops that compute a convolution or matrix product: refused when applied to a parameter of
# the model outside a quantized layer (``capture`` refuses the ones it cannot describe on any operand).
COMPUTE_FUNCTIONS: dict[str, str] = {
    "conv1d": "1-D convolution", "conv2d": "2-D convolution", "conv3d": "3-D convolution",
    "conv_transpose1d": "transposed convolution", "conv_transpose2d": "transposed convolution",
    "conv_transpose3d": "transposed convolution", "linear": "matrix product", "bilinear": "bilinear product",
    "matmul": "matrix product", "mm": "matrix product", "bmm": "matrix product", "einsum": "matrix product",
    "addmm": "matrix product", "baddbmm": "matrix product",
}
# The ones capture has no LayerSpec kind for (conv2d / linear are described as conv / linear).
UNDESCRIBED_FUNCTIONS = frozenset(f for f in COMPUTE_FUNCTIONS if f.startswith(("conv1d", "conv3d", "conv_t"))
                                  ) | {"bilinear"}


@dataclass(frozen=True)
class Verdict:
    """How one module is handled: ``quantize`` (``base`` given), ``quantized`` (already),
    ``probe`` (a Conv2d/Linear subclass with its own forward: decided on data) or ``float``."""

    action: str
    base: type[nn.Module] | None = None
    reason: str = ""


def classify(m: nn.Module) -> Verdict | None:
    """The verdict for a compute module, ``None`` for a module that computes no conv/matrix product itself."""
    if isinstance(m, _QUANTIZED):
        return Verdict("quantized")
    for base, why in COMPUTE_MODULES.items():
        if not isinstance(m, base):
            continue
        if why is not None:
            return Verdict("float", base, why)
        if type(m) is base or _plain_forward(type(m), base):
            return Verdict("quantize", base)
        return Verdict("probe", base, f"a {base.__name__} subclass whose own forward mixq cannot reproduce")
    return None


def is_compute(m: nn.Module) -> bool:
    """A module of the table (quantizable, quantized or not supported): captured and swapped whole."""
    return isinstance(m, COMPUTE_TYPES)


def _plain_forward(cls: type, base: type[nn.Module]) -> bool:
    if cls.forward is not base.forward:  # type: ignore[attr-defined]
        return False
    return base is not nn.Conv2d or cls._conv_forward is nn.Conv2d._conv_forward  # type: ignore[attr-defined]


def plain_layer(m: nn.Module, padding: tuple[int, int] | None = None) -> nn.Module:
    """A plain ``nn.Conv2d`` / ``nn.Linear`` with ``m``'s weights (a conv with ``padding`` if given)."""
    if isinstance(m, nn.Conv2d):
        out: nn.Module = nn.Conv2d(
            m.in_channels, m.out_channels, m.kernel_size,  # type: ignore[arg-type]
            stride=m.stride, padding=padding if padding is not None else m.padding,  # type: ignore[arg-type]
            dilation=m.dilation, groups=m.groups, bias=m.bias is not None,  # type: ignore[arg-type]
            padding_mode=m.padding_mode if padding is None else "zeros",
            device=m.weight.device, dtype=m.weight.dtype)
    elif isinstance(m, nn.Linear):
        out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                        device=m.weight.device, dtype=m.weight.dtype)
    else:
        raise ModelError(f"{type(m).__name__}: no plain Conv2d/Linear equivalent")
    with torch.no_grad():
        out.weight.copy_(m.weight)  # type: ignore[operator]
        if m.bias is not None:
            out.bias.copy_(m.bias)  # type: ignore[union-attr,operator]
    return out.train(m.training)


class _LayerCalls(TorchFunctionMode):
    """Records every ``pad`` and ``conv2d`` / ``linear`` call: ``(name, args, kwargs, result)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any], Any]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        fname = str(getattr(func, "__name__", ""))
        if fname in ("pad", "conv2d", "linear"):
            self.calls.append((fname, tuple(args), dict(kwargs), out))
        return out


def bind_args(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any],
              defaults: dict[str, Any]) -> dict[str, Any]:
    """A call's positional and keyword arguments by parameter name (``names`` in order), over ``defaults``."""
    return {**defaults, **dict(zip(names, args, strict=False)), **kwargs}


@dataclass(frozen=True)
class Effective:
    """What :func:`effective_layer` found: the plain layer and the zero padding (``F.pad`` order: left, right,
    top, bottom) applied to its input before it, ``None`` when there is none."""

    layer: nn.Module
    pads: tuple[int, ...] | None = None


def _one_call(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module, tuple[int, ...] | None] | None:
    """``m(x)``, the plain layer of its one conv2d / linear call and the zero padding before it, or ``None``."""
    mode = _LayerCalls()
    try:
        with mode:
            y = m(x)
    except Exception:  # noqa: BLE001 - a forward that does not take this input: not a plain layer
        return None
    layers = [c for c in mode.calls if c[0] != "pad"]
    pads = [c for c in mode.calls if c[0] == "pad"]
    if len(layers) != 1 or len(pads) > 1 or not isinstance(y, torch.Tensor):
        return None
    fname, args, kwargs, _ = layers[0]
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    a = bind_args(names, args, kwargs, {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    w, b = a["weight"], a["bias"]
    if not isinstance(w, torch.Tensor) or w.shape != m.weight.shape or (  # type: ignore[union-attr]
            b is not None and (not isinstance(b, torch.Tensor) or b.shape != (w.shape[0],))):
        return None
    zero_pad: tuple[int, ...] | None = None
    if pads:
        p = bind_args(("input", "pad", "mode", "value"), pads[0][1], pads[0][2], {"mode": "constant", "value": None})
        if p["input"] is not x or pads[0][3] is not a["input"] or p["mode"] != "constant" or \
                p["value"] not in (None, 0, 0.0) or len(p["pad"]) != 4:
            return None
        zero_pad = tuple(int(v) for v in p["pad"])
    elif a["input"] is not x:
        return None
    w, b = w.detach().clone(), None if b is None else b.detach().clone()
    if fname == "conv2d":
        if not isinstance(m, nn.Conv2d) or isinstance(a["padding"], str):
            return None
        plain: nn.Module = nn.Conv2d(
            m.in_channels, m.out_channels, m.kernel_size, stride=a["stride"],  # type: ignore[arg-type]
            padding=a["padding"], dilation=a["dilation"], groups=a["groups"], bias=b is not None,
            device=w.device, dtype=w.dtype)
    elif isinstance(m, nn.Linear):
        plain = nn.Linear(m.in_features, m.out_features, bias=b is not None, device=w.device, dtype=w.dtype)
    else:
        return None
    plain.weight.copy_(w)  # type: ignore[operator]
    if b is not None:
        plain.bias.copy_(b)  # type: ignore[union-attr,operator]
    return y, plain.train(m.training), zero_pad


@torch.no_grad()
def effective_layer(m: nn.Module, in_shape: tuple[int, ...] | None = None) -> Effective | None:
    """A plain ``nn.Conv2d`` / ``nn.Linear`` computing exactly what the subclass ``m`` computes with its own
    ``forward``, when that forward is one ``conv2d`` / ``linear`` call on a weight (and bias) derived from the
    module's own tensors alone — a pruning mask, a binarized or standardized weight —, optionally after a zero
    ``F.pad`` of its input (a TF-"same" padding, which may be asymmetric); ``None`` otherwise. The weight, bias,
    stride, padding, dilation and groups are the ones its forward passes to that call. ``in_shape``: the
    module's input shape per sample (a padding that depends on the input size is taken for that size only, and
    without it not at all). The plain layer must reproduce ``m`` on random inputs: of that shape, and, where no
    padding depends on the size, of two other sizes (a forward whose weights depend on the input does not)."""
    if not isinstance(m, nn.Conv2d | nn.Linear) or isinstance(m, _QUANTIZED):
        return None
    gen = torch.Generator().manual_seed(0)
    # the recorded shape twice (two inputs: a weight that depends on the input differs between them)
    shapes: list[tuple[int, ...]] = [(2, *in_shape)] * 2 if in_shape is not None else []
    if isinstance(m, nn.Conv2d):
        reach = max((k - 1) * d + 1 for k, d in zip(m.kernel_size, m.dilation, strict=True))
        shapes += [(2, m.in_channels, reach + extra, reach + extra + 1) for extra in (5, 8)]
    else:
        shapes += [(2, m.in_features), (3, m.in_features)]
    found: Effective | None = None
    with eval_mode(m):
        for i, shape in enumerate(shapes):
            x = torch.randn(*shape, generator=gen).to(m.weight.dtype)  # type: ignore[union-attr]
            got = _one_call(m, x)
            if got is None:
                return None
            y, plain, pads = got
            if found is not None and not _same_layer(found.layer, plain):
                return None
            if found is None:
                found = Effective(plain, pads)
            z = plain(F.pad(x, list(pads)) if pads is not None else x)
            if z.shape != y.shape or float((z - y).abs().max()) > 1e-5 * float(y.abs().max()) + 1e-6:
                return None
            if pads is not None and (in_shape is None or i > 1):  # a padding for this size only
                return None
            if pads is not None and i == 1:  # both inputs of the recorded shape agree: no other size applies
                return found
    return found


def _same_layer(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return repr(a) == repr(b) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _same_padding(m: nn.Conv2d, size: tuple[int, int]) -> tuple[int, int] | None:
    """TF-"same" padding for an input of ``size`` (H, W) when it is symmetric, else ``None``."""
    pads = []
    for i, k, s, d in zip(size, m.kernel_size, m.stride, m.dilation, strict=True):
        total = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
        if total % 2:
            return None
        pads.append(total // 2)
    return (pads[0], pads[1])


@dataclass
class Coverage:
    """The compute layers of a model: quantizable (name -> weight rows, registration order), those
    quantized through a plain equivalent (name -> conv padding, ``None``: as it is), and those left in
    float (name -> (type, reason))."""

    layers: dict[str, int] = field(default_factory=dict)
    convert: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    floats: dict[str, tuple[str, str]] = field(default_factory=dict)
    probed: dict[str, str] = field(default_factory=dict)  # subclass with its own forward -> its base's name

    def converted_meta(self) -> dict[str, Any]:
        """``meta["converted_layers"]``: the subclasses with their own forward found equivalent to a plain
        layer, with the padding used (``None``: the layer's own)."""
        return {n: {"as": base, "padding": list(p) if (p := self.convert[n]) is not None else None}
                for n, base in self.probed.items() if n in self.convert}

    def float_meta(self) -> dict[str, str]:
        return {n: f"{t}: {why}" for n, (t, why) in self.floats.items()}

    def accept(self, stage: str, allow_float: bool | Iterable[str] = False) -> dict[str, str]:
        """Raise the one-line :class:`ModelError` for the first float layer not allowed; the float layers."""
        allowed = set() if isinstance(allow_float, bool) else set(allow_float)
        for name, (t, why) in self.floats.items():
            if allow_float is True or name in allowed:
                continue
            raise ModelError(f"{stage}: layer {name!r} ({t}) is not supported yet ({why}); mixq would leave it "
                             "in float (allow_float=True or the layer's name in allow_float accepts that)")
        return self.float_meta()


class _FunctionCalls(TorchFunctionMode):
    """Records compute functions called on a model parameter outside the table's modules."""

    def __init__(self, params: dict[int, str]) -> None:
        super().__init__()
        self.params = params
        self.depth = 0
        self.found: dict[str, str] = {}  # parameter name -> function

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        fname = str(getattr(func, "__name__", "")).strip("_")
        if not self.depth and fname in COMPUTE_FUNCTIONS:
            for a in [*args, *kwargs.values()]:
                if isinstance(a, torch.Tensor) and id(a) in self.params:
                    self.found.setdefault(self.params[id(a)], fname)
        return func(*args, **kwargs)


def coverage(model: nn.Module, sample: torch.Tensor | None = None,
             converted: Mapping[str, Any] | None = None) -> Coverage:
    """The model's compute layers by :func:`classify`; with ``sample`` one forward (eval, no grad) also
    decides the subclasses with their own forward and finds functional compute calls on parameters.
    ``converted`` (a plan's ``meta["converted_layers"]``) gives the padding of such subclasses when no
    sample is given."""
    cov = Coverage()
    probes: dict[str, tuple[nn.Module, Verdict]] = {}
    inside: list[str] = []
    order: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        v = classify(m)
        if v is None:
            continue
        inside.append(name)
        if v.action == "quantize":
            cov.layers[name] = int(m.weight.shape[0])  # type: ignore[index]
            if type(m) is not v.base:
                cov.convert[name] = None
        elif v.action == "float":
            cov.floats[name] = (type(m).__name__, v.reason)
        elif v.action == "probe":
            probes[name] = (m, v)
            cov.layers[name] = int(m.weight.shape[0])  # type: ignore[index]
        order.append(name)
    if sample is not None:
        _run_probes(model, sample, cov, probes)
    else:
        for name, (m, v) in probes.items():
            hint = (converted or {}).get(name)
            pad = hint.get("padding") if isinstance(hint, Mapping) else None
            if isinstance(hint, Mapping) and hint.get("as") == v.base.__name__ and (  # type: ignore[union-attr]
                    pad is None or (isinstance(m, nn.Conv2d) and isinstance(pad, list | tuple) and len(pad) == 2)):
                cov.convert[name] = (int(pad[0]), int(pad[1])) if pad is not None else None
                cov.probed[name] = v.base.__name__  # type: ignore[union-attr]
            else:
                del cov.layers[name]
                cov.floats[name] = (type(m).__name__, v.reason + " (without sample data to check it on)")
    rank = {n: i for i, n in enumerate(order)}
    cov.layers = dict(sorted(cov.layers.items(), key=lambda kv: rank[kv[0]]))
    return cov


@torch.no_grad()
def _run_probes(model: nn.Module, sample: torch.Tensor, cov: Coverage,
                probes: dict[str, tuple[nn.Module, Verdict]]) -> None:
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in probes}
    params = {id(p): n for n, p in model.named_parameters()}
    mode = _FunctionCalls(params)
    handles = []
    names = {id(m): n for n, m in model.named_modules() if n}

    def pre(_m: nn.Module, _a: Any) -> None:
        mode.depth += 1

    def post(m: nn.Module, args: Any, out: Any) -> None:
        mode.depth -= 1
        n = names.get(id(m))
        if n in calls and len(calls[n]) < 4 and args and isinstance(args[0], torch.Tensor) \
                and isinstance(out, torch.Tensor):
            calls[n].append((args[0].detach(), out.detach()))

    for m in model.modules():
        if classify(m) is not None:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with eval_mode(model), mode:
            model(sample[:2])
    except Exception as exc:
        raise ModelError(f"forward of {type(model).__name__} on the sample failed: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
    for name, (m, v) in probes.items():
        seen = calls[name]
        pad = _equivalent(m, seen) if seen else False
        if pad is False:
            del cov.layers[name]
            why = v.reason if seen else v.reason + " (not called on the sample)"
            if seen and isinstance(m, nn.Conv2d) and seen[0][0].dim() == 4:
                size = (int(seen[0][0].shape[-2]), int(seen[0][0].shape[-1]))
                if _same_padding(m, size) is None:
                    why += f"; a 'same' padding of a {size[0]}x{size[1]} input would be asymmetric"
            cov.floats[name] = (type(m).__name__, why)
        else:
            cov.convert[name] = pad  # type: ignore[assignment]
            cov.probed[name] = v.base.__name__  # type: ignore[union-attr]
    for pname, fname in mode.found.items():
        owner = pname.rpartition(".")[0]
        t = type(model.get_submodule(owner)).__name__ if owner else type(model).__name__
        cov.floats.setdefault(owner or pname, (f"{t}, F.{fname} on {pname}", COMPUTE_FUNCTIONS[fname]
                                               + " called on a parameter, not through a Conv2d/Linear layer"))


def _equivalent(m: nn.Module, seen: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, int] | None | bool:
    """The padding with which a plain layer reproduces every recorded call (``None``: its own), else False."""
    candidates: list[tuple[int, int] | None] = [None]
    if isinstance(m, nn.Conv2d) and seen[0][0].dim() == 4:
        same = _same_padding(m, (int(seen[0][0].shape[-2]), int(seen[0][0].shape[-1])))
        if same is not None:
            candidates.append(same)
    for pad in candidates:
        plain = plain_layer(m, pad).eval()
        ok = True
        for x, y in seen:
            try:
                z = plain(x)
            except Exception:  # a shape mismatch: not this candidate
                ok = False
                break
            tol = 1e-4 * float(y.abs().max()) + 1e-6
            if z.shape != y.shape or float((z - y).abs().max()) > tol:
                ok = False
                break
        if ok:
            return pad
    return False
