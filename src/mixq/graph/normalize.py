"""Rewrite the layers mixq runs as 2-D convolutions into exactly that, before any other stage sees them.

:func:`normalize` returns the model unchanged when it has none of these modules; otherwise an FX
``GraphModule`` (the front end's graph, :func:`mixq.graph.trace.trace`) in which

* a ``Conv1d`` at ``name`` is a ``Conv2d`` at the same ``name`` with a ``1 x k`` kernel (weights
  ``w[:, :, None, :]``), between ``unsqueeze(2)`` and ``squeeze(2)``; a ``BatchNorm1d`` on a
  ``(N, C, L)`` tensor, ``MaxPool1d``, ``AvgPool1d``, ``AdaptiveAvgPool1d`` and zero ``ConstantPad1d`` become their 2-D
  forms the same way. The squeezes are then moved past elementwise ops, adds, channel concats and
  flattens and cancelled, so a chain of 1-D layers is one chain of ``1 x k`` 2-D layers;
* a ``ConvTranspose2d`` at ``name`` (stride ``s``, padding ``p``, output padding ``op``, dilation
  ``d``, groups ``g``) is :class:`~mixq.nn.ZeroInsert` ``(s, op)`` (a new module ``name_zeros``
  beside it) followed by a ``Conv2d`` at ``name`` with the flipped, in/out-swapped kernel, stride 1,
  dilation ``d`` and padding ``d*(k-1) - p``: exactly what a convolution engine runs, and exactly
  the transposed convolution's output (checked in the tests).

* a ``Conv2d`` / ``Linear`` subclass with its own forward that is the base layer on a weight derived from the
  module's own tensors (a pruning mask, a binarized or standardized weight: :func:`~mixq.graph.registry.
  effective_layer`, checked on random inputs of the recorded shape and of two other sizes) is the plain layer with
  that weight, at the same name; a zero ``F.pad`` its forward applies first (TF-"same") is the conv's padding where
  symmetric, else an ``F.pad`` node before it, for the recorded input size only.
  Its raw parameters (and a mask) are gone from the normalized model; a forward it cannot reproduce stays, for
  the registry to decide on sample data (a "same"-padding wrapper) or refuse.

* a ``PReLU`` with one slope (MONAI's default activation) is ``LeakyReLU`` of that slope at the same name: the
  same function, quantized as a lookup table (its slope is fixed from then on). A per-channel PReLU stays, and the
  integer engine refuses it by name.

* compute layers whose results the output never reads go, with their modules; a one-element list or tuple
  output becomes its tensor; ``torch.stack(xs, d).sum(d)`` becomes ``xs[0] + ...`` and ``.mean(d)`` that times
  ``1 / n``; ``x.view(b, c, -1).mean(-1)`` becomes ``x.mean((2, 3))``; an ``F.pad`` of nothing (every amount 0,
  any mode: MONAI's UpCat at matching sizes) goes.

* a constant added to (or subtracted from) a ``Conv2d`` / ``Linear`` output, constant along every axis but the
  channels (ONNX's ``Conv`` + ``Add`` of a bias, as in the ONNX model zoo's MNIST CNN), is that layer's bias,
  where the layer is called once and the add alone reads it.

* a forward that reads its shapes is traced at ``input_shape`` (:mod:`mixq.graph.concrete`), and the traced graph is
  checked against the model's own forward (:func:`mixq.graph.trace.check_trace`).

* an activation module torch.fx cannot trace (a TorchScript function inside: geffnet's ``HardSwishJit`` /
  ``HardSwishMe``) is the torch module that computes the same (:mod:`mixq.graph.opaque`, found by probing),
  in a copy of the model.

* an activation called as a function or tensor method (``torch.sigmoid(x)``, ``F.silu(x)``,
  ``x.tanh()``, ``F.leaky_relu(x, 0.2)`` ...) is a call of the module that computes it (``<node>_act``,
  e.g. ``sigmoid_act``), so quantization tabulates it like any activation module.

Plans, quantized states and artifacts refer to the normalized model; the rewrite is deterministic,
so a model normalized again (an artifact read back) has the same names, shapes and weights.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq.errors import ModelError
from mixq.graph.concrete import trace_concrete
from mixq.graph.opaque import replace_opaque_activations
from mixq.graph.registry import Effective, classify, effective_layer
from mixq.graph.trace import call_name, check_trace, constant_value, fn_args, live_nodes, node_ops, trace
from mixq.nn import ZeroInsert

_ONE_D = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.ConstantPad1d)
_SINK_KINDS = frozenset({"relu", "relu6", "hardtanh", "clamp", "lut", "identity", "qact"})


def _own_forward(m: nn.Module) -> bool:
    """A Conv2d / Linear subclass with its own forward (a masked, binarized or standardized weight ...)."""
    v = classify(m)
    return v is not None and v.action == "probe"


def _effective(node: fx.Node, m: nn.Module, calls: list[fx.Node]) -> Effective | None:
    """The plain layer of a subclass with its own forward (:func:`~mixq.graph.registry.effective_layer`) at the
    input shape the trace recorded; one whose padding depends on the input size only where it is called once."""
    src = node.args[0] if node.args else None
    shape = src.meta.get("shape") if isinstance(src, fx.Node) else None
    eff = effective_layer(m, tuple(shape[1:]) if isinstance(shape, tuple) else None)
    if eff is not None and eff.pads is not None and sum(str(c.target) == str(node.target) for c in calls) != 1:
        return None
    return eff


def _one_slope_prelu(m: nn.Module) -> bool:
    """A ``PReLU`` with one slope for every channel (MONAI's default activation): a LeakyReLU of that slope."""
    return type(m) is nn.PReLU and m.num_parameters == 1


def needs_normalize(model: nn.Module) -> bool:
    return any(isinstance(m, (*_ONE_D, nn.ConvTranspose2d)) or _own_forward(m) or _one_slope_prelu(m)
               for m in model.modules())


def _conv2d_of_1d(m: nn.Conv1d) -> nn.Conv2d:
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        raise ModelError(f"normalize: Conv1d with padding {m.padding!r} / mode {m.padding_mode!r}; "
                         "only explicit zero padding is supported")
    c = nn.Conv2d(m.in_channels, m.out_channels, (1, m.kernel_size[0]), (1, m.stride[0]), (0, m.padding[0]),
                  (1, m.dilation[0]), m.groups, m.bias is not None)
    with torch.no_grad():
        c.weight.copy_(m.weight[:, :, None, :])
        if m.bias is not None:
            c.bias.copy_(m.bias)  # type: ignore[union-attr]
    return c


def _bn2d_of_1d(m: nn.BatchNorm1d) -> nn.BatchNorm2d:
    b = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    b.load_state_dict(m.state_dict())
    return b


def _one(v: object) -> int:
    return int(v[0] if isinstance(v, tuple | list) else v)  # type: ignore[arg-type]


def _pool2d_of_1d(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.MaxPool1d):
        k, s, p, d = (_one(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
        return nn.MaxPool2d((1, k), (1, s), (0, p), (1, d), ceil_mode=m.ceil_mode)
    if isinstance(m, nn.AvgPool1d):
        k, s, p = (_one(v) for v in (m.kernel_size, m.stride, m.padding))
        return nn.AvgPool2d((1, k), (1, s), (0, p), m.ceil_mode, m.count_include_pad)
    if isinstance(m, nn.ConstantPad1d):
        left, right = m.padding
        if m.value != 0:
            raise ModelError(f"normalize: {type(m).__name__} with value {m.value}; only zero padding is supported")
        return nn.ZeroPad2d((int(left), int(right), 0, 0))
    assert isinstance(m, nn.AdaptiveAvgPool1d)
    size = _one(m.output_size)
    return nn.AdaptiveAvgPool2d((1, size))


def conv_of_transposed(m: nn.ConvTranspose2d, name: str) -> tuple[ZeroInsert, nn.Conv2d]:
    """The :class:`ZeroInsert` and ``Conv2d`` that compute ``m`` exactly (see the module docstring)."""
    kh, kw = m.kernel_size
    (sh, sw), (ph, pw), (oh, ow), (dh, dw) = (tuple(int(v) for v in t)  # type: ignore[union-attr]
                                              for t in (m.stride, m.padding, m.output_padding, m.dilation))
    pad = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
    if m.padding_mode != "zeros" or min(pad) < 0:
        raise ModelError(f"normalize: layer {name!r} (ConvTranspose2d): padding {m.padding} larger than "
                         "dilation*(kernel-1) (or a non-zero padding mode) has no convolution form")
    g = m.groups
    w = m.weight.detach()  # (Cin, Cout/g, kh, kw)
    cin, cout_g = w.shape[0], w.shape[1]
    w2 = w.reshape(g, cin // g, cout_g, kh, kw).transpose(1, 2).reshape(g * cout_g, cin // g, kh, kw)
    c = nn.Conv2d(cin, g * cout_g, (kh, kw), 1, pad, (dh, dw), g, m.bias is not None)
    with torch.no_grad():
        c.weight.copy_(w2.flip(-1, -2))
        if m.bias is not None:
            c.bias.copy_(m.bias)  # type: ignore[union-attr]
    return ZeroInsert((sh, sw), (oh, ow)), c


def _set(root: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, leaf = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def normalize(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """``model`` with its 1-D layers and transposed convolutions written as 2-D convolutions (see the
    module docstring); the model itself when it has none. ``input_shape`` (per sample) lets a
    ``BatchNorm1d`` on a 2-D (N, F) tensor be told from one on (N, C, L); without it, a BatchNorm1d
    is taken as 1-D signal BN only when it directly follows a Conv1d. Never changes ``model``."""
    model, _ = replace_opaque_activations(model)  # a copy when an activation module is opaque to fx
    layers = needs_normalize(model)
    concrete = False
    try:
        traced = trace(model, stage="normalize")  # shares the model's modules: only read here
    except ModelError:
        try:  # a forward that reads its shapes: traced at the input shape (mixq.graph.concrete)
            if input_shape is None:
                raise
            traced, concrete = trace_concrete(model, tuple(input_shape)), True
        except ModelError:
            if any(isinstance(m, (*_ONE_D, nn.ConvTranspose2d)) for m in model.modules()):
                raise
            return model  # refused by the stage that traces it, with its own message
    if input_shape is not None:  # a third batch size where the graph is specialized to the input shape
        check_trace(traced, model, tuple(input_shape), batch=3 if concrete else 1)
    dead = _dead_layers(traced)
    boxed = _boxed_output(traced)
    rewrites = any(_stack_reduce(n) is not None or _flat_mean(n) is not None or _null_pad(n) or
                   _bias_add(n) is not None for n in traced.graph.nodes)  # graph rewrites, checked after
    if not (layers or concrete or dead or boxed or rewrites) and not any(_act_name(n) is not None
                                                                      for n in traced.graph.nodes):
        return model
    import copy

    example = torch.zeros(1, *input_shape) if input_shape is not None else None
    gm = trace(copy.deepcopy(traced).eval(), example, stage="normalize")  # the one graph, rewritten on a copy
    graph = gm.graph
    _act_modules(gm)
    _reduce_stacks(graph)
    _spatial_means(graph)
    _drop_null_pads(graph)
    _fold_bias_adds(gm)
    calls = [n for n in graph.nodes if n.op == "call_module"]
    how: dict[str, str] = {}  # module name -> "zeros" (transposed conv) or "unit" (1-D layer), at its first call
    pads: dict[str, list[int]] = {}  # a plain layer's input padding (a "same"-padding conv) -> an F.pad before it
    for node in calls:
        name = str(node.target)
        m = gm.get_submodule(name)
        if name in how:
            continue
        if isinstance(m, nn.ConvTranspose2d):
            zeros, conv = conv_of_transposed(m, name)
            parent, _, leaf = name.rpartition(".")
            if hasattr(gm.get_submodule(parent), f"{leaf}_zeros"):
                raise ModelError(f"normalize: layer {name!r}: the name {name}_zeros is taken")
            _set(gm, f"{name}_zeros", zeros)
            _set(gm, name, conv)
            how[name] = "zeros"
        elif isinstance(m, _ONE_D) and _is_signal(node, m):
            _set(gm, name, _conv2d_of_1d(m) if isinstance(m, nn.Conv1d) else _bn2d_of_1d(m)
                 if isinstance(m, nn.BatchNorm1d) else _pool2d_of_1d(m))
            how[name] = "unit"
        elif _one_slope_prelu(m):  # the same function, quantized as a lookup table like every LeakyReLU
            slope: torch.Tensor = m.weight  # type: ignore[assignment]
            _set(gm, name, nn.LeakyReLU(float(slope.detach().reshape(()))))
            how[name] = "plain"
        elif _own_forward(m) and (eff := _effective(node, m, calls)) is not None:
            _set(gm, name, eff.layer)
            how[name] = "plain"
            lft, rgt, top, bot = eff.pads or (0, 0, 0, 0)
            if isinstance(eff.layer, nn.Conv2d) and (lft, top) == (rgt, bot) and tuple(eff.layer.padding) == (0, 0):
                eff.layer.padding = (top, lft)  # a symmetric padding is the conv's own
            elif eff.pads is not None:
                pads[name] = list(eff.pads)
    for node in calls:
        name = str(node.target)
        if how.get(name) == "zeros":
            with graph.inserting_before(node):
                z = graph.call_module(f"{name}_zeros", (node.args[0],))
            node.args = (z, *node.args[1:])
        elif how.get(name) == "unit":
            _wrap_unit_dim(graph, node)
        elif name in pads:
            with graph.inserting_before(node):
                p = graph.call_function(F.pad, (node.args[0], pads[name]))
            node.args = (p, *node.args[1:])
    if boxed:  # the one tensor of a one-element list / tuple output is the output (MONAI's BasicUNet++)
        out = next(n for n in graph.nodes if n.op == "output")
        out.args = (out.args[0][0],)  # type: ignore[index]
    _sink_squeezes(gm)  # ends with dead-code elimination: an output the forward computes and drops is gone
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()  # with its layers (MONAI's BasicUNet++ heads without deep supervision)
    if (dead or rewrites) and input_shape is not None:  # nothing the output reads went with them; same values
        check_trace(gm, model, tuple(input_shape))
    return gm.train(model.training)


def _stack_reduce(node: fx.Node) -> tuple[list[fx.Node | tuple[fx.Node, int]], bool] | None:
    """``(xs, mean)`` at the ``mean`` / ``sum`` node of ``torch.stack(xs, d).mean(d)`` or ``.sum(d)`` over the dim
    the stack made (FractalNet's join of its columns; MONAI's RegUNet sums a map's channel halves this way)."""
    name = call_name(node)
    if name not in ("mean", "sum") or not node.args:
        return None
    a = fn_args(node, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
    st = a["input"]
    if not isinstance(st, fx.Node) or len(st.users) != 1 or st.op != "call_function" or call_name(st) != "stack" or \
            a["keepdim"]:
        return None
    s = fn_args(st, ("tensors", "dim"), {"dim": 0})
    xs, sdim = s.get("tensors"), s["dim"]
    dim = _one_dim(a["dim"])
    shape = st.meta.get("shape")
    rank = len(shape) if isinstance(shape, tuple) else None
    same = isinstance(dim, int) and isinstance(sdim, int) and (
        dim == sdim or (rank is not None and dim % rank == sdim % rank))
    if isinstance(xs, fx.Node):  # the parts of a split / chunk: as many as its traced shapes (none: not known yet)
        parts = xs.meta.get("shape")
        xs = [(xs, i) for i in range(len(parts))] if isinstance(parts, list) else [(xs, -1)]
    ok = same and isinstance(xs, (list, tuple)) and len(xs) > 0 and all(isinstance(x, (fx.Node, tuple)) for x in xs)
    return (list(xs), name == "mean") if ok else None  # type: ignore[arg-type]


def _one_dim(dim: Any) -> Any:
    """A reduction's ``dim`` with a one-element list or tuple unwrapped (``(2,)`` is ``2``)."""
    return dim[0] if isinstance(dim, (tuple, list)) and len(dim) == 1 else dim


def _reduce_stacks(graph: fx.Graph) -> None:
    """``torch.stack(xs, d).sum(d)`` -> ``xs[0] + xs[1] + ...``, and ``.mean(d)`` that times ``1 / len(xs)``: the
    same values as adds and a constant product the integer engine runs (a stacked tensor's new dim is no map it
    knows)."""
    for node in list(graph.nodes):
        found = _stack_reduce(node)
        if found is None or any(isinstance(x, tuple) and x[1] < 0 for x in found[0]):
            continue
        xs, mean = found
        st = node.args[0]
        with graph.inserting_before(node):
            parts = [graph.call_function(operator.getitem, x) if isinstance(x, tuple) else x for x in xs]
            acc: fx.Node = parts[0]
            for x in parts[1:]:
                acc = graph.call_function(operator.add, (acc, x))
            if mean and len(xs) > 1:
                acc = graph.call_function(operator.mul, (acc, 1.0 / len(xs)))
        node.replace_all_uses_with(acc)
        graph.erase_node(node)
        graph.erase_node(st)  # type: ignore[arg-type]


def _flat_mean(node: fx.Node) -> fx.Node | None:
    """The reshape at a ``mean`` over the last dim of a map reshaped to ``(N, C, -1)`` (an SE block's
    ``x.view(b, c, -1).mean(-1)``): where the shapes say so (traced), else the candidate's reshape all the same."""
    if call_name(node) != "mean" or not node.args:
        return None
    a = fn_args(node, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
    src = a["input"]
    if not isinstance(src, fx.Node) or len(src.users) != 1 or _one_dim(a["dim"]) not in (2, -1) or a["keepdim"]:
        return None
    if call_name(src) not in ("view", "reshape", "flatten"):
        return None
    out, base = src.meta.get("shape"), src.args[0] if src.args else None
    shape = base.meta.get("shape") if isinstance(base, fx.Node) else None
    if out is None or shape is None:
        return src  # decided where the graph is traced with shapes
    ok = isinstance(out, tuple) and isinstance(shape, tuple) and len(shape) == 4 and len(out) == 3 and \
        out[:2] == shape[:2] and out[2] == shape[2] * shape[3]
    return src if ok else None


def _spatial_means(graph: fx.Graph) -> None:
    """``x.view(b, c, -1).mean(-1)`` -> ``x.mean((2, 3))``: the same global average pool, on the map the integer
    engine pools (a mean over a flattened (C, L) map is none it knows)."""
    for node in list(graph.nodes):
        src = _flat_mean(node)
        if src is None or src.meta.get("shape") is None:
            continue
        with graph.inserting_before(node):
            gap = graph.call_method("mean", (src.args[0], (2, 3)))
        node.replace_all_uses_with(gap)
        graph.erase_node(node)
        graph.erase_node(src)


def _null_pad(node: fx.Node) -> bool:
    """An ``F.pad`` of nothing (every amount 0, any mode): MONAI's UpCat pads its skip to the upsampled size, which
    at matching sizes is the identity (a gather stage and a frame buffer in the RTL otherwise)."""
    if call_name(node) != "pad" or node.op != "call_function" or not node.args:
        return False
    p = fn_args(node, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})["pad"]
    return isinstance(p, list | tuple) and all(isinstance(v, int) and v == 0 for v in p)


def _drop_null_pads(graph: fx.Graph) -> None:
    for node in list(graph.nodes):
        if _null_pad(node):
            node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
            graph.erase_node(node)


_ADDS = {operator.add: 1.0, torch.add: 1.0, operator.sub: -1.0, torch.sub: -1.0}


def _bias_add(node: fx.Node) -> tuple[fx.Node, torch.Tensor] | None:
    """``layer(x) + c`` / ``c + layer(x)`` / ``layer(x) - c``: the plain ``Conv2d`` / ``Linear`` node and the
    per-channel vector its bias gains, where ``c`` is a tensor constant that varies along the channels only, the
    layer's module is called only here and the add is the one reader of its output; else None."""
    sign = _ADDS.get(node.target) if node.op == "call_function" and not node.kwargs else None  # type: ignore[call-overload,arg-type]
    if sign is None or len(node.args) != 2:
        return None
    a, b = node.args
    pairs = [(a, b)] + ([(b, a)] if sign > 0 else [])
    for layer, const in pairs:
        if not (isinstance(layer, fx.Node) and isinstance(const, fx.Node) and layer.op == "call_module"
                and const.op == "get_attr" and len(layer.users) == 1):
            continue
        gm = node.graph.owning_module
        m = gm.get_submodule(str(layer.target)) if gm is not None else None
        if type(m) not in (nn.Conv2d, nn.Linear) or sum(
                1 for n in node.graph.nodes if n.op == "call_module" and n.target == layer.target) != 1:
            continue
        c = constant_value(const).detach()
        assert isinstance(m, (nn.Conv2d, nn.Linear))
        channels = int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        rank = 4 if isinstance(m, nn.Conv2d) else 2
        if not c.is_floating_point() or c.dim() > rank:
            continue
        shape = (1,) * (rank - c.dim()) + tuple(c.shape)
        if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
            continue
        return layer, sign * c.reshape(-1).expand(channels).to(torch.float32)
    return None


def _fold_bias_adds(gm: fx.GraphModule) -> None:
    """Each :func:`_bias_add` into its layer's bias (a new bias where it had none); the add goes."""
    for node in list(gm.graph.nodes):
        got = _bias_add(node)
        if got is None:
            continue
        layer, vec = got
        m = gm.get_submodule(str(layer.target))
        assert isinstance(m, (nn.Conv2d, nn.Linear))
        bias = m.bias.detach() + vec if m.bias is not None else vec.clone()
        m.bias = nn.Parameter(bias.to(m.weight.dtype), requires_grad=m.weight.requires_grad)
        const = next(a for a in node.args if isinstance(a, fx.Node) and a is not layer)
        node.replace_all_uses_with(layer)
        gm.graph.erase_node(node)
        if not const.users:  # the constant, where nothing else reads it, goes with its tensor
            gm.graph.erase_node(const)
            if not any(n.op == "get_attr" and n.target == const.target for n in gm.graph.nodes):
                parent, _, leaf = str(const.target).rpartition(".")
                delattr(gm.get_submodule(parent) if parent else gm, leaf)


def _boxed_output(gm: fx.GraphModule) -> bool:
    """Whether the forward returns its one tensor in a list or tuple."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    arg = out.args[0]
    return isinstance(arg, (list, tuple)) and len(arg) == 1 and isinstance(arg[0], fx.Node)


def _dead_layers(gm: fx.GraphModule) -> bool:
    """Whether the forward calls a compute layer whose result the output does not read (an unused head)."""
    live = live_nodes(gm.graph)
    return any(n.op == "call_module" and n not in live and classify(gm.get_submodule(str(n.target))) is not None
               for n in gm.graph.nodes)


# Activations called as functions or tensor methods -> the module that computes the same (its arguments by
# name, with defaults), so quantization can tabulate them (mixq.nn.QLutAct) like any activation module.
_ACT_FUNCTIONS: dict[str, tuple[type[nn.Module], dict[str, object]]] = {
    "sigmoid": (nn.Sigmoid, {}), "tanh": (nn.Tanh, {}), "hardswish": (nn.Hardswish, {}),
    "hardsigmoid": (nn.Hardsigmoid, {}), "silu": (nn.SiLU, {}), "mish": (nn.Mish, {}),
    "gelu": (nn.GELU, {"approximate": "none"}), "elu": (nn.ELU, {"alpha": 1.0}),
    "leaky_relu": (nn.LeakyReLU, {"negative_slope": 0.01}),
}


def _act_name(node: fx.Node) -> str | None:
    name = call_name(node).rstrip("_")
    return name if name in _ACT_FUNCTIONS else None


def _act_modules(gm: fx.GraphModule) -> None:
    """``torch.sigmoid(x)`` / ``F.silu(x)`` / ``x.tanh()`` ... -> a call of a new module ``<node>_act``."""
    for node in list(gm.graph.nodes):
        name = _act_name(node)
        if name is None:
            continue
        cls, defaults = _ACT_FUNCTIONS[name]
        extra = [k for k in node.kwargs if k not in (*defaults, "input", "inplace")]
        if len(node.args) > 1 + len(defaults) or extra or not isinstance(node.args[0] if node.args else None,
                                                                           fx.Node):
            continue  # an unusual call: left as written (the op table names it where it is not supported)
        kw = dict(defaults)
        kw.update(zip(defaults, node.args[1:], strict=False))
        kw.update({k: v for k, v in node.kwargs.items() if k in defaults})
        target = f"{node.name}_act"
        gm.add_submodule(target, cls(**kw))  # type: ignore[arg-type]
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


def _is_signal(node: fx.Node, m: nn.Module) -> bool:
    """A 1-D layer on an (N, C, L) signal (a BatchNorm1d may also normalise (N, F) features)."""
    if not isinstance(m, nn.BatchNorm1d):
        return True
    shape = node.meta.get("shape")
    if isinstance(shape, tuple):
        return len(shape) == 3
    return _is_call(node.args[0], "squeeze")  # right after a 1-D layer already rewritten


def _wrap_unit_dim(graph: fx.Graph, node: fx.Node) -> None:
    """``node(x)`` -> ``squeeze(node(unsqueeze(x, 2)), 2)``."""
    with graph.inserting_before(node):
        u = graph.call_method("unsqueeze", (node.args[0], 2))
    node.args = (u, *node.args[1:])
    with graph.inserting_after(node):
        s = graph.call_method("squeeze", (node, 2))
    node.replace_all_uses_with(s, delete_user_cb=lambda user: user is not s)


def _is_call(n: object, method: str) -> bool:
    return isinstance(n, fx.Node) and n.op == "call_method" and n.target == method and n.args[1:] == (2,)


def _sink_squeezes(gm: fx.GraphModule) -> None:
    """Move ``squeeze(2)`` below elementwise ops, adds, channel concats and flattens; cancel
    ``unsqueeze(squeeze(x, 2), 2)``. Repeats until nothing changes."""
    graph = gm.graph
    changed = True
    while changed:
        changed = False
        ops = node_ops(gm)
        for node in list(graph.nodes):
            if _is_call(node, "unsqueeze") and _is_call(node.args[0], "squeeze"):
                sq = node.args[0]
                node.replace_all_uses_with(sq.args[0])
                graph.erase_node(node)
                if not sq.users:
                    graph.erase_node(sq)
                changed = True
                break
            op = ops.get(node)
            ins = [a for a in node.all_input_nodes]
            if op is None or not ins or not all(_is_call(a, "squeeze") and len(a.users) == 1 for a in ins):
                continue
            if op.kind in _SINK_KINDS or op.kind == "add" or _is_channel_cat(node) or _is_flatten1(gm, node, op.kind):
                _hoist(graph, node, ins, keep_squeeze=op.kind != "flatten")
                changed = True
                break
    graph.eliminate_dead_code()


def _is_channel_cat(node: fx.Node) -> bool:
    if node.op != "call_function" or getattr(node.target, "__name__", "") not in ("cat", "concat"):
        return False
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return bool(dim == 1)


def _is_flatten1(gm: fx.GraphModule, node: fx.Node, kind: str) -> bool:
    """``flatten(x, 1)``: the same values whether ``x`` is (N, C, L) or (N, C, 1, L)."""
    if kind != "flatten":
        return False
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return bool(getattr(m, "start_dim", None) == 1 and getattr(m, "end_dim", None) == -1)
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return bool(start == 1 and len(node.args) <= 2 and node.kwargs.get("end_dim", -1) == -1)


def _hoist(graph: fx.Graph, node: fx.Node, squeezes: list[fx.Node], keep_squeeze: bool) -> None:
    """``op(squeeze(a), squeeze(b))`` -> ``squeeze(op(a, b))`` (no squeeze after a flatten)."""
    def subst(a: fx.Node) -> fx.Node:
        return a.args[0] if a in squeezes else a  # type: ignore[return-value]

    node.args = fx.node.map_arg(node.args, subst)  # type: ignore[assignment]
    node.kwargs = fx.node.map_arg(node.kwargs, subst)  # type: ignore[assignment]
    for s in squeezes:
        if not s.users:
            graph.erase_node(s)
    if keep_squeeze:
        with graph.inserting_after(node):
            s2 = graph.call_method("squeeze", (node, 2))
        node.replace_all_uses_with(s2, delete_user_cb=lambda user: user is not s2)
