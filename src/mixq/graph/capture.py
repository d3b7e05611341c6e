"""Capture a torch model as a list of :class:`LayerSpec` (plain data, forward order).

``capture(model, (C, H, W))`` traces the model with the one graph front end
(:mod:`mixq.graph.trace`: one FX tracer, one op table, one forward of a batch-1
random input for the shapes). Each leaf-module call and each functional op on the
activation path becomes one spec:

* a module call is named by the module's qualified name (``layer1.0.conv1``);
  a module called more than once (torchvision's shared ``relu`` in a basic
  block) gets ``name:1``, ``name:2`` ... for its later calls;
* a functional op (``x + identity``, ``torch.cat``, ``torch.flatten``) is named
  by its fx node name (``add``, ``add_1``, ``cat``, ``flatten``);
* the graph input is the spec ``input``.

``inputs`` / ``outputs`` name the producer / consumer specs (a residual ``add``
has two producers). Dropout, Identity, ``contiguous``, unit-dim squeezes and the
like get no spec and edges pass through them. MACs (per sample) are counted for
conv (``Cout*Hout*Wout*(Cin/groups)*kh*kw``), depthwise conv and linear
(``in*out``); every other kind has 0. Every spec but the input records the op
table's kind (``extra["node_kind"]``) and which stages support it
(``extra["support"]``).

The forward never changes the model: BatchNorm runs with its running
statistics (inference semantics, no statistics update) whatever the model's
mode, Dropout is skipped, and no gradient is recorded. A model torch.fx cannot
trace is refused with a :class:`ModelError` that suggests exporting it to ONNX
(the ONNX import gives a traceable graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from mixq.errors import ModelError
from mixq.graph.normalize import normalize
from mixq.graph.registry import COMPUTE_FUNCTIONS, UNDESCRIBED_FUNCTIONS, classify
from mixq.graph.spec import LayerSpec, is_depthwise
from mixq.graph.trace import KINDS, NodeOp, node_ops, sample_axes, support, trace, unsupported_why

# Functional compute ops described as layers (the registry refuses them on parameters at quantize time).
_FUNCTIONAL_SPECS = {"conv2d": "conv", "linear": "linear"}


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
    node_kind: str = ""
    support: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    return (t[0], t[-1]) if t else (1, 1)


def _spec_kind(op: NodeOp, n_carrying: int, in_shapes: list[tuple[int, ...]], out: tuple[int, ...]) -> str | None:
    """The LayerSpec kind of a classified node (``None``: no spec, edges pass through it)."""
    if op.kind == "float_compute" and op.module is None:
        return _FUNCTIONAL_SPECS.get(op.type.strip("_"), "other")
    if op.kind not in KINDS:
        return None  # constants, getitem of a multi-output op
    kind = KINDS[op.kind].spec
    ins = in_shapes[0] if in_shapes else ()
    if kind == "conv" and isinstance(op.module, nn.Conv2d):
        m = op.module
        return "dwconv" if is_depthwise(m.groups, m.in_channels, m.out_channels) else "conv"
    if op.kind == "add" and n_carrying < 2:
        return "other"
    if kind == "?flatten":
        return "flatten" if len(out) == 2 and len(ins) > 2 else "other"
    if kind == "?pool":
        return "gap" if out[-2:] == (1, 1) or len(out) < 4 else "avgpool"
    if kind in ("?mean", "?reduce"):  # over the channels: reduce; over every spatial axis: a global pool
        if len(ins) == 4 and out in ((ins[0], 1, *ins[2:]), (ins[0], *ins[2:])):
            return "reduce"
        if len(ins) == 4 and out in (ins[:2], (*ins[:2], 1, 1)):
            return "gap" if kind == "?mean" else "maxpool"
        return "other"
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
            if is_depthwise(groups, f["in_channels"], f["out_channels"]):
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
    elif ev.kind == "upsample":
        mode = getattr(m, "mode", None) if m is not None else ev.kwargs.get("mode", "nearest")
        f["extra"] = {"mode": "bilinear" if mode in ("bilinear", "linear") else str(mode)}
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


def _to_specs(events: list[_Event]) -> list[LayerSpec]:
    consumers: dict[str, list[str]] = {ev.name: [] for ev in events}
    for ev in events:
        for p in ev.producers:
            if ev.name not in consumers[p]:
                consumers[p].append(ev.name)
    specs = []
    for ev in events:
        f = _spec_fields(ev)
        extra = {**f.pop("extra", {}), **ev.extra}
        extra["op"] = ev.op
        if ev.qualname:
            extra["module"] = ev.qualname
        if len(ev.in_shapes) > 1:
            extra["in_shapes"] = [s[1:] for s in ev.in_shapes]
        if ev.kind != "input":
            extra["node_kind"] = ev.node_kind
            extra["support"] = ev.support
            if ev.node_kind == "unsupported" and unsupported_why(ev.op):
                extra["why"] = unsupported_why(ev.op)
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

    def unique(self, name: str) -> str:
        base, k = name, 0
        while name in self.used:
            k += 1
            name = f"{base}:{k}"
        self.used.add(name)
        return name


# ----------------------------------------------------------------------------------------------- events
def _is_tensor_shape(v: Any) -> bool:
    return isinstance(v, tuple) and all(isinstance(i, int) for i in v)


def _capture(gm: fx.GraphModule) -> list[_Event]:
    graph = gm.graph
    ops = node_ops(gm)
    events: list[_Event] = []
    names = _Names()
    names.used.add("input")
    producers: dict[fx.Node, tuple[str, ...]] = {}  # activation-carrying node -> specs feeding it
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and _is_tensor_shape(n.meta.get("shape"))]
    first_calls: set[str] = set()
    for n in graph.nodes:
        out: Any = n.meta.get("shape")
        if n.op == "placeholder":
            if n not in placeholders:
                continue  # an argument that is not a tensor (a flag at its default)
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
            if isinstance(out, list) and any(_is_tensor_shape(o) for o in out):
                out = next(o for o in out if _is_tensor_shape(o))  # multi-output op: its first tensor
            else:
                continue  # sizes, python values
        op = ops[n]
        const = any(ops[a].kind == "constant" for a in n.all_input_nodes if a in ops)
        in_shapes = [a.meta["shape"] for a in carrying if _is_tensor_shape(a.meta.get("shape"))]
        if op.kind == "getitem" and not _is_tensor_shape(n.args[0].meta.get("shape")):  # type: ignore[union-attr]
            producers[n] = feeding  # element of a multi-output op
            continue
        kind = _spec_kind(op, len(carrying), in_shapes, out)
        if kind is None:
            producers[n] = feeding
            continue
        if n.op == "call_module":
            qual = str(n.target)
            first = qual not in first_calls
            first_calls.add(qual)
            ev = _Event(names.unique(op.name), kind, op.type, in_shapes, out, feeding, op.module, qual,
                        first_call=first, node_kind=op.kind, support=support(op, const))
        else:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta.get("shape"))
            ev = _Event(names.unique(n.name), kind, op.type.strip("_"), in_shapes, out, feeding, args=args,
                        kwargs=kwargs, node_kind=op.kind, support=support(op, const))
        if kind == "transpose":  # the per-sample axes' order; a permutation moving the batch axis is "other"
            axes = sample_axes(n, len(out))
            if axes is not None:
                ev.extra["perm"] = axes
            else:
                ev.kind = "other"
        producers[n] = (ev.name,)
        events.append(ev)
    return events


# ----------------------------------------------------------------------------------------------- API
def capture(model: nn.Module, input_shape: tuple[int, ...], *, allow_float: bool = False) -> list[LayerSpec]:
    """The model's layers as :class:`LayerSpec` in forward order, for one input of shape ``input_shape``.

    ``input_shape`` excludes the batch dimension, e.g. ``(3, 224, 224)``. Conv1d and ConvTranspose2d
    layers are captured as the 2-D convolutions mixq runs them as (:mod:`mixq.graph.normalize`). The
    model is traced by the
    one front end (:func:`mixq.graph.trace.trace`); a model torch.fx cannot trace, or a failing
    forward, raises :class:`ModelError`. The model is not changed. Each spec's ``extra["support"]``
    says which stages support it (``ok``, or ``no engine/export`` ...; :func:`mixq.graph.trace.support`).

    A compute layer no spec kind describes (a module of `mixq.graph.registry.COMPUTE_MODULES` that
    is not supported — Conv3d, ConvTranspose3d ... — or a functional ``conv1d`` / ``conv3d`` /
    ``conv_transpose*`` / ``bilinear``) raises a one-line :class:`ModelError` naming it, so that no
    later stage (the hardware estimate) silently leaves it out; with ``allow_float`` it is kept as
    kind "other" with ``extra["float"]`` holding the reason (the hardware estimate refuses such specs).
    """
    if not input_shape or any(int(s) <= 0 for s in input_shape):
        raise ModelError(
            f"capture: input_shape must be positive sizes without the batch dimension, got {input_shape}"
        )
    gen = torch.Generator().manual_seed(0)
    p = next(model.parameters(), None)
    x = torch.rand((1, *input_shape), generator=gen).to(p.device if p is not None else "cpu")
    gm = trace(normalize(model, tuple(input_shape)), x, stage="capture")
    events = _capture(gm)
    specs = _to_specs(events)
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
    """A fixed-width text table of the specs (name, kind, shapes, kernel/stride, params, MACs, producers, and
    the stages that do not support a node)."""
    header = ("name", "kind", "in", "out", "k/s/g", "params", "MACs", "inputs", "support")
    rows = [header]
    for s in specs:
        ksg = f"{s.kernel[0]}x{s.kernel[1]}/{s.stride[0]}/{s.groups}" if s.kind in ("conv", "dwconv") else ""
        rows.append((
            s.name, s.kind, "x".join(map(str, s.in_shape)), "x".join(map(str, s.out_shape)), ksg,
            f"{s.params:,}" if s.params else "", f"{s.macs:,}" if s.macs else "", ",".join(s.inputs),
            "" if s.kind == "input" else str(s.extra.get("support", "ok")),
        ))
    total_p, total_m = sum(s.params for s in specs), sum(s.macs for s in specs)
    bad = sum(1 for s in specs[1:] if s.extra.get("support", "ok") != "ok")
    rows.append(("total", f"{len(specs)} nodes", "", "", "", f"{total_p:,}", f"{total_m:,}", "",
                 f"{bad} unsupported" if bad else "all ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {5, 6}

    def fmt(r: tuple[str, ...]) -> str:
        pairs = enumerate(zip(r, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    lines = [fmt(r) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
