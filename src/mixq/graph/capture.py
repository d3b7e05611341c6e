"""Capture a torch model as a list of :class:`LayerSpec` (plain data, forward order).

``capture(model, (C, H, W))`` traces the model with ``torch.fx`` and runs one
real forward of a batch-1 random input through the traced graph to learn every
node's shapes. Each leaf-module call and each functional op on the activation
path becomes one spec:

* a module call is named by the module's qualified name (``layer1.0.conv1``);
  a module called more than once (torchvision's shared ``relu`` in a basic
  block) gets ``name:1``, ``name:2`` ... for its later calls;
* a functional op (``x + identity``, ``torch.cat``, ``torch.flatten``) is named
  by its fx node name (``add``, ``add_1``, ``cat``, ``flatten``);
* the graph input is the spec ``input``.

``inputs`` / ``outputs`` name the producer / consumer specs (a residual ``add``
has two producers). Dropout, Identity, ``contiguous`` and the like are no-ops
at inference: they get no spec and edges pass through them. MACs (per sample)
are counted for conv (``Cout*Hout*Wout*(Cin/groups)*kh*kw``), depthwise conv
and linear (``in*out``); every other kind has 0.

The forward never changes the model: BatchNorm runs with its running
statistics (inference semantics, no statistics update) whatever the model's
mode, Dropout is skipped, and no gradient is recorded.

Fallback: when FX tracing fails (data-dependent control flow, unsupported
Python), the model is captured with forward hooks on its leaf modules plus a
:class:`torch.overrides.TorchFunctionMode` that sees the functional ops called
outside leaf modules (``+``, ``cat``, ``flatten`` ...), on a deep copy in eval
mode. Edges follow tensor identity, so residual adds are found whenever their
operands are tensors produced by recorded ops; what cannot be seen (ops done
through ``.data`` or outside torch) breaks an edge rather than inventing one.
Functional ops are then named ``<op>``, ``<op>_1`` ... in call order. The
input spec's ``extra["capture"]`` says which path ran ("fx" or "hooks").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from mixq.errors import ModelError
from mixq.graph.registry import COMPUTE_FUNCTIONS, COMPUTE_TYPES, UNDESCRIBED_FUNCTIONS, classify
from mixq.graph.spec import LayerSpec

_TRANSPARENT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Identity,
)
_ACT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.PReLU,
    nn.Hardtanh, nn.Mish, nn.Softmax, nn.LogSoftmax,
)
# Module types treated as leaves even when they have children (e.g. a quantized Conv2d subclass): the
# compute modules of `mixq.graph.registry.COMPUTE_MODULES` and BatchNorm.
LEAF_TYPES: tuple[type[nn.Module], ...] = (*COMPUTE_TYPES, _BatchNorm)

# Normalised functional op name -> kind ("?" = decided from shapes / operands, None = no-op).
_OP_KINDS: dict[str, str | None] = {
    "add": "?add", "iadd": "?add", "radd": "?add",
    "cat": "concat", "concat": "concat", "concatenate": "concat",
    "flatten": "flatten", "view": "?flatten", "reshape": "?flatten",
    "relu": "relu", "relu6": "relu6",
    "sigmoid": "act", "tanh": "act", "hardswish": "act", "hardsigmoid": "act", "silu": "act", "gelu": "act",
    "leaky_relu": "act", "elu": "act", "hardtanh": "act", "mish": "act", "softmax": "act",
    "max_pool2d": "maxpool", "adaptive_max_pool2d": "maxpool", "avg_pool2d": "avgpool",
    "adaptive_avg_pool2d": "?pool", "mean": "?mean",
    "conv2d": "conv", "linear": "linear", "batch_norm": "bn",
    "dropout": None, "dropout1d": None, "dropout2d": None, "feature_dropout": None, "alpha_dropout": None,
    "contiguous": None, "clone": None, "detach": None,
}


@dataclass
class _Event:
    """One recorded op, before it becomes a LayerSpec."""

    name: str
    kind: str
    op: str
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    producers: tuple[str, ...]
    module: nn.Module | None = None
    qualname: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    first_call: bool = True


def _op_name(target: Any) -> str:
    """``torch.Tensor.__iadd__`` -> "iadd", ``F.relu_`` -> "relu", "add_" -> "add"."""
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return str(name).strip("_")


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    return (t[0], t[-1]) if t else (1, 1)


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def is_leaf(m: nn.Module) -> bool:
    """A module captured (and swapped) whole: childless, or a compute module / BN (sub)class."""
    return isinstance(m, LEAF_TYPES) or next(m.children(), None) is None


class _Tracer(fx.Tracer):
    """FX tracer that keeps Conv2d/Linear/BN subclasses (quantized layers) and childless modules as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, LEAF_TYPES):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _classify_module(m: nn.Module, out_shape: tuple[int, ...]) -> str | None:
    if isinstance(m, _TRANSPARENT_MODULES):
        return None
    if isinstance(m, nn.Conv2d):
        return "dwconv" if m.groups > 1 and m.groups == m.in_channels == m.out_channels else "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, _BatchNorm):
        return "bn"
    if isinstance(m, nn.ReLU6):
        return "relu6"
    if isinstance(m, nn.ReLU):
        return "relu"
    if isinstance(m, _ACT_MODULES):
        return "act"
    if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return "maxpool"
    if isinstance(m, nn.AvgPool2d):
        return "avgpool"
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return "gap" if out_shape[-2:] == (1, 1) or len(out_shape) < 4 else "avgpool"
    if isinstance(m, nn.Flatten):
        return "flatten"
    return "other"


def _classify_op(
    op: str, n_carrying: int, in_shapes: list[tuple[int, ...]], out: tuple[int, ...]
) -> str | None:
    kind = _OP_KINDS.get(op, "other")
    if kind == "?add":
        return "add" if n_carrying >= 2 else "other"
    if kind == "?flatten":
        return "flatten" if len(out) == 2 and in_shapes and len(in_shapes[0]) > 2 else "other"
    if kind == "?pool":
        return "gap" if out[-2:] == (1, 1) else "avgpool"
    if kind == "?mean":
        return "gap" if len(out) == 2 and in_shapes and len(in_shapes[0]) == 4 else "other"
    return kind


# ----------------------------------------------------------------------------------------------- specs
def _conv_fields(cin: int, cout: int, kernel: tuple[int, int], stride: Any, padding: Any, dilation: Any,
                 groups: int, bias: bool, out: tuple[int, ...]) -> dict[str, Any]:
    if isinstance(padding, str):  # "same" / "valid"
        d = _pair(dilation)
        padding = ((kernel[0] - 1) * d[0] // 2, (kernel[1] - 1) * d[1] // 2) if padding == "same" else (0, 0)
    hw = math.prod(out[2:]) if len(out) > 2 else 1
    fields: dict[str, Any] = dict(
        in_channels=cin, out_channels=cout, kernel=kernel, stride=_pair(stride), padding=_pair(padding),
        groups=groups, bias=bias, macs=cout * hw * (cin // groups) * kernel[0] * kernel[1],
    )
    if _pair(dilation) != (1, 1):
        fields["extra"] = {"dilation": _pair(dilation)}
    return fields


def _spec_fields(ev: _Event) -> dict[str, Any]:
    """Kind-specific LayerSpec fields (channels, kernel, MACs, params) of one event."""
    m, out = ev.module, ev.out_shape
    ins = ev.in_shapes[0] if ev.in_shapes else ()
    f: dict[str, Any] = {
        "in_channels": ins[1] if len(ins) > 1 else 0, "out_channels": out[1] if len(out) > 1 else 0,
    }
    if m is not None and ev.first_call:
        f["params"] = sum(p.numel() for p in m.parameters(recurse=False))
    if ev.kind in ("conv", "dwconv"):
        if isinstance(m, nn.Conv2d):
            f.update(_conv_fields(m.in_channels, m.out_channels, _pair(m.kernel_size), m.stride, m.padding,
                                  m.dilation, m.groups, m.bias is not None, out))
        else:  # functional conv2d(input, weight, bias, stride, padding, dilation, groups); weight as a shape
            a = list(ev.args) + [None] * 7
            kw = ev.kwargs
            w = a[1] if a[1] is not None else kw["weight"]
            groups = int(kw.get("groups", a[6] if a[6] is not None else 1))
            f.update(_conv_fields(int(ins[1]), int(w[0]), (int(w[2]), int(w[3])), kw.get("stride", a[3] or 1),
                                  kw.get("padding", a[4] or 0), kw.get("dilation", a[5] or 1), groups,
                                  (a[2] if a[2] is not None else kw.get("bias")) is not None, out))
            f["params"] = math.prod(w) + (int(w[0]) if f["bias"] else 0)
            if groups > 1 and groups == f["in_channels"] == f["out_channels"]:
                ev.kind = "dwconv"
    elif ev.kind == "linear":
        fin, fout = int(ins[-1]), int(out[-1])
        lead = math.prod(out[1:-1]) if len(out) > 2 else 1
        f.update(in_channels=fin, out_channels=fout, macs=lead * fin * fout)
        if isinstance(m, nn.Linear):
            f["bias"] = m.bias is not None
        else:
            bias = ev.args[2] if len(ev.args) > 2 else ev.kwargs.get("bias")
            f["bias"] = bias is not None
            f["params"] = fin * fout + (fout if f["bias"] else 0)
    elif ev.kind in ("maxpool", "avgpool", "gap") and len(ins) == 4 and len(out) == 4:
        if m is not None:
            k, s, pad = getattr(m, "kernel_size", None), getattr(m, "stride", None), getattr(m, "padding", 0)
        elif ev.op in ("max_pool2d", "avg_pool2d"):  # functional (input, kernel_size, stride, padding)
            a = list(ev.args) + [None] * 4
            k = ev.kwargs.get("kernel_size", a[1])
            s, pad = ev.kwargs.get("stride", a[2]), ev.kwargs.get("padding", a[3] or 0)
        else:
            k = None
        if k is not None:
            f.update(kernel=_pair(k), stride=_pair(s or k), padding=_pair(pad))
        elif ins[2] % out[2] == 0 and ins[3] % out[3] == 0:  # adaptive: the equivalent fixed window
            k2 = (ins[2] // out[2], ins[3] // out[3])
            f.update(kernel=k2, stride=k2)
    return f


def _to_specs(events: list[_Event], path: str) -> list[LayerSpec]:
    consumers: dict[str, list[str]] = {ev.name: [] for ev in events}
    for ev in events:
        for p in ev.producers:
            if ev.name not in consumers[p]:
                consumers[p].append(ev.name)
    specs = []
    for ev in events:
        f = _spec_fields(ev)
        extra = dict(f.pop("extra", {}))
        extra["op"] = ev.op
        if ev.qualname:
            extra["module"] = ev.qualname
        if len(ev.in_shapes) > 1:
            extra["in_shapes"] = [s[1:] for s in ev.in_shapes]
        if ev.kind == "input":
            extra["capture"] = path
        specs.append(LayerSpec(
            name=ev.name, kind=ev.kind, in_shape=ev.in_shapes[0][1:] if ev.in_shapes else (),
            out_shape=ev.out_shape[1:], inputs=ev.producers, outputs=tuple(consumers[ev.name]),
            extra=extra, **f,
        ))
    return specs


class _Names:
    """Unique spec names: module calls by qualified name (``name:k`` for repeats), ops by their own name."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.calls: dict[str, int] = {}

    def module(self, qualname: str) -> tuple[str, bool]:
        k = self.calls.get(qualname, 0)
        self.calls[qualname] = k + 1
        return self.unique(qualname if k == 0 else f"{qualname}:{k}"), k == 0

    def unique(self, name: str) -> str:
        base, k = name, 0
        while name in self.used:
            k += 1
            name = f"{base}:{k}"
        self.used.add(name)
        return name


# ----------------------------------------------------------------------------------------------- FX path
class _ShapeProp(fx.Interpreter):
    """Runs the traced graph once, keeping every node's output shape(s) (other values as they are)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.out: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.out[n] = fx.node.map_aggregate(result, lambda v: _shape(v) if isinstance(v, torch.Tensor) else v)
        return result

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        m = self.fetch_attr(target)
        if isinstance(m, _TRANSPARENT_MODULES):
            return args[0]
        if isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward:  # inference semantics
            stats = m.running_mean is not None and m.running_var is not None
            return F.batch_norm(args[0], m.running_mean, m.running_var, m.weight, m.bias,
                                training=not stats, momentum=0.0, eps=m.eps)
        return super().call_module(target, args, kwargs)


def _is_tensor_shape(v: Any) -> bool:
    return isinstance(v, tuple) and all(isinstance(i, int) for i in v)


def _capture_fx(gm: fx.GraphModule, x: torch.Tensor) -> list[_Event]:
    graph = gm.graph
    prop = _ShapeProp(gm)
    with torch.no_grad():
        prop.run(x)
    events: list[_Event] = []
    names = _Names()
    names.used.add("input")
    producers: dict[fx.Node, tuple[str, ...]] = {}  # activation-carrying node -> specs feeding it
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for n in graph.nodes:
        out: Any = prop.out.get(n)
        if n.op == "placeholder":
            name = "input" if len(placeholders) == 1 else names.unique(n.name)
            producers[n] = (name,)
            events.append(_Event(name, "input", "input", [], out, ()))
            continue
        if n.op in ("output", "get_attr"):
            continue
        carrying = [a for a in n.all_input_nodes if a in producers]
        if not carrying:
            continue
        feeding = tuple(dict.fromkeys(p for a in carrying for p in producers[a]))
        if not _is_tensor_shape(out):
            if isinstance(out, (tuple, list)) and any(_is_tensor_shape(o) for o in out):
                out = next(o for o in out if _is_tensor_shape(o))  # multi-output op: recorded as "other"
            else:
                continue  # sizes, python values
        in_shapes = [prop.out[a] for a in carrying if _is_tensor_shape(prop.out[a])]
        if n.op == "call_module":
            m = gm.get_submodule(str(n.target))
            kind = _classify_module(m, out)
            if kind is None:
                producers[n] = feeding
                continue
            name, first = names.module(str(n.target))
            ev = _Event(name, kind, type(m).__name__, in_shapes, out, feeding, m, str(n.target),
                        first_call=first)
        else:
            op = _op_name(n.target)
            if op == "getitem" and not _is_tensor_shape(prop.out[n.args[0]]):  # type: ignore[index]
                producers[n] = feeding  # element of a multi-output op
                continue
            kind = _classify_op(op, len(carrying), in_shapes, out)
            if kind is None:
                producers[n] = feeding
                continue
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: prop.out[a])
            ev = _Event(names.unique(n.name), kind, op, in_shapes, out, feeding, args=args, kwargs=kwargs)
        producers[n] = (ev.name,)
        events.append(ev)
    return events


# ----------------------------------------------------------------------------------------------- hooks path
class _HookState(TorchFunctionMode):
    """Records leaf-module calls (via hooks) and functional ops outside leaves (via torch-function mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[_Event] = []
        self.names = _Names()
        self.names.used.add("input")
        self.producers: dict[int, tuple[str, ...]] = {}  # id(tensor) -> producing spec names
        self.keep: list[torch.Tensor] = []  # keeps recorded tensors alive so ids stay unique
        self.depth = 0
        self.op_calls: dict[str, int] = {}
        self.stack: list[tuple[tuple[str, ...], list[tuple[int, ...]]]] = []

    def _tensors(self, obj: Any) -> Iterator[torch.Tensor]:
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, (tuple, list)):
            for o in obj:
                yield from self._tensors(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                yield from self._tensors(o)

    def _inputs(self, args: Any) -> tuple[tuple[str, ...], list[tuple[int, ...]]]:
        carrying = [t for t in self._tensors(args) if id(t) in self.producers]
        feeding = tuple(dict.fromkeys(p for t in carrying for p in self.producers[id(t)]))
        return feeding, [_shape(t) for t in carrying]

    def _set(self, out: Any, names: tuple[str, ...]) -> None:
        for t in self._tensors(out):
            self.producers[id(t)] = names
            self.keep.append(t)

    def pre_hook(self, m: nn.Module, args: Any, kwargs: Any) -> None:
        self.stack.append(self._inputs((args, kwargs)))
        self.depth += 1

    def post_hook(self, qualname: str) -> Any:
        def hook(m: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            self.depth -= 1
            feeding, in_shapes = self.stack.pop()
            if self.depth or not feeding:
                return
            tensors = list(self._tensors(out))
            if not tensors:
                return
            kind = _classify_module(m, _shape(tensors[0]))
            if kind is None:
                self._set(out, feeding)
                return
            name, first = self.names.module(qualname)
            self.events.append(_Event(name, kind, type(m).__name__, in_shapes, _shape(tensors[0]), feeding,
                                      m, qualname, first_call=first))
            self._set(out, (name,))
        return hook

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [t for t in self._tensors(out) if t.dim() > 0]  # scalars (x.sum() > 0) are no layers
        if self.depth or not tensors:
            return out
        feeding, in_shapes = self._inputs((args, kwargs))
        if not feeding:
            return out
        op = _op_name(func)
        kind = _classify_op(op, len(in_shapes), in_shapes, _shape(tensors[0]))
        if kind is None:
            self._set(out, feeding)
            return out
        k = self.op_calls.get(op, 0)
        self.op_calls[op] = k + 1
        name = self.names.unique(op if k == 0 else f"{op}_{k}")
        shaped = fx.node.map_aggregate((tuple(args), kwargs),
                                       lambda v: _shape(v) if isinstance(v, torch.Tensor) else v)
        self.events.append(_Event(name, kind, op, in_shapes, _shape(tensors[0]), feeding,
                                  args=shaped[0], kwargs=shaped[1]))  # type: ignore[index]
        self._set(out, (name,))
        return out


def _capture_hooks(model: nn.Module, x: torch.Tensor) -> list[_Event]:
    work = copy.deepcopy(model).eval()
    state = _HookState()
    handles = []
    skip: list[str] = []
    for qualname, m in work.named_modules():
        if not qualname or any(qualname.startswith(s + ".") for s in skip) or not is_leaf(m):
            continue
        skip.append(qualname)
        handles.append(m.register_forward_pre_hook(state.pre_hook, with_kwargs=True))
        handles.append(m.register_forward_hook(state.post_hook(qualname), with_kwargs=True))
    state.producers[id(x)] = ("input",)
    state.events.append(_Event("input", "input", "input", [], _shape(x), ()))
    try:
        with torch.no_grad(), state:
            work(x)
    finally:
        for h in handles:
            h.remove()
    return state.events


# ----------------------------------------------------------------------------------------------- API
def capture(model: nn.Module, input_shape: tuple[int, ...], method: str = "auto", *,
            allow_float: bool = False) -> list[LayerSpec]:
    """The model's layers as :class:`LayerSpec` in forward order, for one input of shape ``input_shape``.

    ``input_shape`` excludes the batch dimension, e.g. ``(3, 224, 224)``.
    ``method``: "auto" (FX, hooks when FX cannot trace the model), "fx" (a
    tracing failure raises :class:`ModelError`) or "hooks" (see the module
    docstring). A failing forward raises :class:`ModelError`. The model is not
    changed.

    A compute layer no spec kind describes (a module of `mixq.graph.registry.COMPUTE_MODULES` that
    is not supported — Conv1d, ConvTranspose2d ... — or a functional ``conv1d`` / ``conv3d`` /
    ``conv_transpose*`` / ``bilinear``) raises a one-line :class:`ModelError` naming it, so that no
    later stage (the hardware estimate) silently leaves it out; with ``allow_float`` it is kept as
    kind "other" with ``extra["float"]`` holding the reason (the hardware estimate refuses such specs).
    """
    if method not in ("auto", "fx", "hooks"):
        raise ModelError(f"capture: method must be 'auto', 'fx' or 'hooks', got {method!r}")
    if not input_shape or any(int(s) <= 0 for s in input_shape):
        raise ModelError(
            f"capture: input_shape must be positive sizes without the batch dimension, got {input_shape}"
        )
    gm: fx.GraphModule | None = None
    if method != "hooks":
        try:
            tracer = _Tracer()
            gm = fx.GraphModule(model, tracer.trace(model))
        except Exception as exc:  # FX raises many types (TraceError, TypeError, NotImplementedError ...)
            if method == "fx":
                raise ModelError(f"capture: FX cannot trace {type(model).__name__}: {exc}") from exc
    gen = torch.Generator().manual_seed(0)
    p = next(model.parameters(), None)
    x = torch.rand((1, *input_shape), generator=gen).to(p.device if p is not None else "cpu")
    try:
        events = _capture_fx(gm, x) if gm is not None else _capture_hooks(model, x)
    except Exception as exc:
        raise ModelError(
            f"capture: forward of {type(model).__name__} on an input of shape {tuple(x.shape)} failed: {exc}"
        ) from exc
    specs = _to_specs(events, "fx" if gm is not None else "hooks")
    for ev, spec in zip(events, specs, strict=True):
        why = _float_reason(ev)
        if why is None:
            continue
        if not allow_float:
            raise ModelError(f"capture: layer {(ev.qualname or ev.name)!r} ({ev.op}) is not supported yet ({why}); "
                             "mixq would leave it in float and out of the hardware estimate")
        spec.extra["float"] = f"{ev.op}: {why}"
    return specs


def _float_reason(ev: _Event) -> str | None:
    """Why a recorded op is a compute layer the specs cannot describe, or ``None``."""
    if ev.module is not None:
        v = classify(ev.module)
        return v.reason if v is not None and v.action == "float" else None
    if ev.op in UNDESCRIBED_FUNCTIONS:
        return COMPUTE_FUNCTIONS[ev.op] + " has no layer kind"
    return None


def summary_table(specs: list[LayerSpec]) -> str:
    """A fixed-width text table of the specs (name, kind, shapes, kernel/stride, params, MACs, producers)."""
    header = ("name", "kind", "in", "out", "k/s/g", "params", "MACs", "inputs")
    rows = [header]
    for s in specs:
        ksg = f"{s.kernel[0]}x{s.kernel[1]}/{s.stride[0]}/{s.groups}" if s.kind in ("conv", "dwconv") else ""
        rows.append((
            s.name, s.kind, "x".join(map(str, s.in_shape)), "x".join(map(str, s.out_shape)), ksg,
            f"{s.params:,}" if s.params else "", f"{s.macs:,}" if s.macs else "", ",".join(s.inputs),
        ))
    total_p, total_m = sum(s.params for s in specs), sum(s.macs for s in specs)
    rows.append(("total", f"{len(specs)} nodes", "", "", "", f"{total_p:,}", f"{total_m:,}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {5, 6}

    def fmt(r: tuple[str, ...]) -> str:
        pairs = enumerate(zip(r, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    lines = [fmt(r) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
