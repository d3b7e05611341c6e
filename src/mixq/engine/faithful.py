"""Hardware-faithful fake quantization: the fake-quant model computing what the hardware computes.

``faithful(qmodel, imodel)`` returns a copy of the quantized model (an FX
``GraphModule`` with the same graph) in which

* each compute layer quantizes its input with the integer model's dyadic
  requantization (``requantize(round(x / grid_in), M, n)``, round half up) instead
  of ``round(x / s)``, and computes in float64 with its fake-quantized weights
  ``q * 2**-frac * s_w`` and its bias rounded onto the accumulator grid;
* every value between quantizers is kept on its integer grid (the result of a
  float64 operation is snapped with ``round(y / grid) * grid``): ReLU6 / Hardtanh
  clamp at limits rounded onto the grid, average pooling keeps the exact window
  sum (its grid is ``grid / count``), a residual add rescales its operands with the
  integer model's multipliers and rounds once, bilinear interpolation runs in float64 and
  is snapped onto its grid ``grid / (Dh * Dw)`` (torch's float weights are within 1e-15 of the
  exact rational ones: far below half a step);
* a mean / max over the channels on one grid runs as written in float64 and is snapped onto its grid
  (``grid / C`` for the mean); over channels on different grids it rescales them with the integer
  model's multipliers and rounds once after the reduction, as an add; a max over the spatial dims is
  a max of on-grid values (as written);
* a product of two tensors runs in float64 and is snapped onto ``grid_a * grid_b`` (exact below
  2**49 steps, checked), a product by a scalar the same onto ``grid * |c|``;
* a BatchNorm the front end could not fold (after a ReLU) rescales the codes with the integer model's
  signed multipliers ``M_c * 2**-n_c``, rounds once (half up) and adds its shift ``B_c`` on the output grid;
* data movement (padding, zero insertion, pixel shuffle, nearest upsampling, unit-dim
  reshapes) runs as written: it moves on-grid values and zeros;
* a ``QLutAct`` requantizes its input like any quantizer and reads its output from the
  module's own table (:meth:`mixq.nn.QLutAct.table`, the very values its fake-quant forward
  uses).

Snapping is exact: a float64 dot product of on-grid values with ``sum |w x| <= B``
grid steps is off by at most ``K * B * 2**-53`` steps (``K`` the dot length), far
below half a step for every layer the engine accepts (``K * B < 2**51``, checked).
The float arithmetic (convolutions of dequantized values, float pooling) is
independent of the engine's integer arithmetic (codes, shift-add products, integer
sums); only the rounding rule and the constants (multipliers, grids) are shared.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq.engine.arith import requantize, requantize_sum
from mixq.engine.convert import to_integer
from mixq.engine.convert_fbs import faithful_fbs
from mixq.engine.kernels import grouped_conv2d
from mixq.engine.model import IntModel, IntNode, quantizer_behind
from mixq.engine.trace import classify, tensor_args, trace
from mixq.errors import ModelError
from mixq.formats import format_from_dict
from mixq.nn import QAct, QConv2d, QLinear, QLutAct

# kinds whose fake-quant op runs unchanged in the faithful model (data movement of on-grid values)
PASS_KINDS = ("maxpool", "flatten", "reshape", "unsqueeze", "squeeze", "index", "cat", "identity", "size", "pad",
              "zero_insert", "pixel_shuffle", "permute", "split", "slice", "zeros", "gather",
              "index_constant", "repeat")
# kinds whose builder gives no integer node when they compute python numbers (sizes), left as written
VALUE_KINDS = ("mul",)


def _grid(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64)).unsqueeze(0)


def snap(y: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The integers ``round(y / grid)`` (float64) of a value that lies on ``grid`` up to float error."""
    return torch.round(y.to(torch.float64) / grid)


def round_off(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` (on ``grid``) rounded half up onto the grid ``grid * 2**k`` from its codes, as the engine rounds an
    operand to ``k`` fewer bits (``(q + 2**(k-1)) >> k``); ``x`` itself when ``k`` is 0."""
    if not k:
        return x.to(torch.float64)
    return requantize(snap(x, grid).to(torch.int64), torch.tensor(1), torch.tensor(k)).to(torch.float64) * (
        grid * 2.0**k)


class _OnGrid(nn.Module):
    """A node of the faithful model: its integer node's name, its output grid and (given) its input's grid."""

    grid: torch.Tensor
    in_grid: torch.Tensor

    def __init__(self, node: IntNode, in_grid: np.ndarray | None = None) -> None:
        super().__init__()
        self.int_name = node.name
        self.register_buffer("grid", _grid(node.scale))
        if in_grid is not None:
            self.register_buffer("in_grid", _grid(in_grid))


class FaithfulQuant(_OnGrid):
    """An input quantizer in hardware-faithful mode: the float network input is quantized as
    by the fake-quant model; any other input is requantized from its grid with ``M * 2**-n``."""

    act_scale: torch.Tensor
    m: torch.Tensor
    n: torch.Tensor

    def __init__(self, node: IntNode, in_grid: np.ndarray | None) -> None:
        super().__init__(node, in_grid if node.op != "quantize" else None)
        self.fmt = format_from_dict(node.attrs["fmt"])
        self.register_buffer("act_scale", torch.tensor(node.attrs["act_scale"], dtype=torch.float32))
        self.first = node.op == "quantize"
        self.lo, self.hi = int(node.attrs["qmin"]), int(node.attrs["qmax"])
        if not self.first:
            assert in_grid is not None
            self.register_buffer("m", _grid(node.arrays["M"]).to(torch.int64))
            self.register_buffer("n", _grid(node.arrays["n"]).to(torch.int64))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            return self.fmt.quantize(x, self.act_scale)
        q = snap(x, self.in_grid).to(torch.int64)
        return requantize(q, self.m, self.n).clamp_(self.lo, self.hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.codes(x).to(torch.float64) * self.grid


class FaithfulLayer(_OnGrid):
    """``QConv2d`` / ``QLinear`` in hardware-faithful mode (float64, outputs on the accumulator grid)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, m: QConv2d | QLinear, quant: FaithfulQuant, node: IntNode) -> None:
        super().__init__(node)
        self.quant = quant
        self.is_conv = isinstance(m, QConv2d)
        w = m.weight.detach()
        rows = w.shape[0]
        shape = (rows,) + (1,) * (w.dim() - 1)
        wq = torch.zeros_like(w, dtype=torch.float64)
        for i, fmt in enumerate(m.formats):  # the fake-quant weight, dequantized in float64
            s = m.w_scales[i].detach()
            deq = fmt.dequantize(fmt.quantize(w, s), s.to(torch.float64))
            wq = torch.where((m.row_scheme == i).reshape(shape), deq, wq)
        self.register_buffer("weight", wq)
        grid = np.asarray(node.scale, dtype=np.float64).reshape(-1)
        b = m.bias.detach().to(torch.float64).numpy() if m.bias is not None else np.zeros(rows)
        self.register_buffer("bias", torch.from_numpy(np.rint(b / grid) * grid))
        self.conv: dict[str, Any] = ({"stride": m.stride, "padding": m.padding, "dilation": m.dilation,
                                      "groups": m.groups} if isinstance(m, QConv2d) else {})
        dot = int(np.prod(w.shape[1:]))
        if dot * 2 ** (int(node.attrs["acc_bits"]) - 1) >= 2**51:
            raise ModelError(f"faithful: layer {node.name!r}: float64 cannot represent its accumulators "
                             "exactly enough (dot length x accumulator bound >= 2**51)")
        budget = int(node.attrs["acc_budget"])
        self.sat = (-(2.0 ** (budget - 1)), 2.0 ** (budget - 1) - 1) if node.attrs["saturate"] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.quant(x)
        if self.is_conv and self.conv["groups"] > 1:
            y = grouped_conv2d(xq, self.weight, self.bias, **self.conv)
        elif self.is_conv:
            y = F.conv2d(xq, self.weight, self.bias, **self.conv)
        else:
            y = F.linear(xq, self.weight, self.bias)
        acc = snap(y, self.grid)
        if self.sat is not None:
            acc = acc.clamp(*self.sat)
        return acc * self.grid


class FaithfulClamp(nn.Module):
    """ReLU / ReLU6 / Hardtanh with limits on the grid."""

    def __init__(self, node: IntNode) -> None:
        super().__init__()
        self.int_name = node.name
        g = _grid(node.scale)
        self.lo = _grid(node.arrays["lo"]) * g if "lo" in node.arrays else None
        self.hi = _grid(node.arrays["hi"]) * g if "hi" in node.arrays else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x.to(torch.float64), self.lo, self.hi)


class FaithfulPool(_OnGrid):
    """Average pooling in float64 (the fake-quant operation), snapped onto the window-sum grid; an input the engine
    rounds to fewer bits first (``shift``) is rounded so here too, from its codes."""


    def __init__(self, node: IntNode, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 in_grid: np.ndarray | None = None) -> None:
        self.shift = int(node.attrs.get("shift", 0))
        super().__init__(node, in_grid if self.shift else None)
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fn(round_off(x, self.in_grid, self.shift) if self.shift else x.to(torch.float64), *self.args,
                    **self.kwargs)
        return snap(y, self.grid) * self.grid


class FaithfulAdd(_OnGrid):
    """A residual add: operands rescaled to the finer grid by ``M_i * 2**-n``, one rounding."""


    def __init__(self, node: IntNode, in_grids: list[np.ndarray]) -> None:
        super().__init__(node)
        self.in_grids = [_grid(g) for g in in_grids]
        self.ms = [_grid(node.arrays["M"][i]).to(torch.int64) for i in range(len(in_grids))]
        self.n = _grid(node.arrays["n"]).to(torch.int64)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        qs = [snap(v, g).to(torch.int64) for v, g in zip((a, b), self.in_grids, strict=True)]
        return requantize_sum(qs, self.ms, self.n).to(torch.float64) * self.grid


class FaithfulAffine(_OnGrid):
    """A BatchNorm left unfolded: the codes times ``M_c * 2**-n_c``, one rounding (half up), plus ``B_c``."""

    m: torch.Tensor
    n: torch.Tensor
    b: torch.Tensor

    def __init__(self, node: IntNode, in_grid: np.ndarray) -> None:
        super().__init__(node, in_grid)
        for key in ("M", "n", "B"):
            self.register_buffer(key.lower(), _grid(node.arrays[key]).to(torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = snap(x, self.in_grid).to(torch.int64)
        return (requantize(q, self.m, self.n) + self.b).to(torch.float64) * self.grid


class FaithfulReduce(_OnGrid):
    """A mean / max over channels on different grids: the codes rescaled by ``M_c``, reduced, one rounding."""

    m: torch.Tensor

    def __init__(self, node: IntNode, in_grid: np.ndarray) -> None:
        super().__init__(node, in_grid)
        self.is_sum, self.keepdim = node.attrs["fn"] == "sum", bool(node.attrs["keepdim"])
        self.register_buffer("m", _grid(node.arrays["M"]).to(torch.int64))
        self.n = torch.tensor(int(node.arrays["n"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = snap(x, self.in_grid).to(torch.int64) * self.m
        r = p.sum(1, keepdim=self.keepdim) if self.is_sum else p.amax(1, keepdim=self.keepdim)
        return requantize(r, torch.tensor(1), self.n).to(torch.float64) * self.grid


class FaithfulMul(_OnGrid):
    """A product in float64 (of two tensors, or by the scalar ``const``), snapped onto its grid; operands the engine
    rounds to fewer bits first (``shifts``) are rounded so here too, from their codes."""

    def __init__(self, node: IntNode, in_grids: list[np.ndarray] | None = None) -> None:
        super().__init__(node)
        if node.bound >= 2**49:
            raise ModelError(f"faithful: layer {node.name!r}: float64 cannot represent its products exactly enough "
                             f"(|codes| <= {node.bound} >= 2**49)")
        const = node.attrs.get("const")
        self.const = 0.0 if const is None else float(const)
        self.shifts = [int(k) for k in node.attrs.get("shifts", (0, 0))]
        self.in_grids = [_grid(g) for g in in_grids] if in_grids is not None and any(self.shifts) else []

    def _rounded(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return round_off(x, self.in_grids[i], self.shifts[i]) if self.shifts[i] else x.to(torch.float64)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        y = self._rounded(a, 0) * (self.const if b is None else self._rounded(b, 1))
        return snap(y, self.grid) * self.grid


def faithful(qmodel: nn.Module, imodel: IntModel | None = None,
             example: torch.Tensor | tuple[int, ...] | None = None, **options: Any) -> fx.GraphModule:
    """A hardware-faithful copy of the calibrated fake-quant model ``qmodel`` (``qmodel`` is unchanged).

    ``imodel`` is its integer model (built with ``to_integer(qmodel, example, **options)``
    when not given). Its outputs equal the integer engine's, element for element.
    """
    if imodel is None:
        if example is None:
            raise ModelError("faithful: give the integer model or an example input")
        imodel = to_integer(qmodel, example, **options)
    gm = trace(copy.deepcopy(qmodel), None)
    kinds = classify(gm)
    names: dict[str, str] = dict(imodel.meta.get("fx_nodes", {}))
    nodes = {n.name: n for n in imodel.nodes}
    for i, node in enumerate(list(gm.graph.nodes)):
        info = kinds.get(node)
        if info is None or info.kind in PASS_KINDS:
            continue
        if node.name not in names and info.kind in VALUE_KINDS:  # arithmetic on sizes, not on tensors
            continue
        if node.name not in names:
            raise ModelError(f"faithful: layer {info.name!r} ({info.type}) has no node in the integer model")
        if names[node.name] == "input":  # data movement on the float input: it runs on floats, as written
            continue
        inode = nodes[names[node.name]]
        sub = _faithful_module(info.kind, inode, nodes, node, info.module)
        if sub is None:  # nearest upsampling: data movement, as written
            continue
        target = f"mixq_faithful_{i}"
        gm.add_submodule(target, sub)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, tuple(tensor_args(node)))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


class _Method:
    """A tensor method as a function: ``_Method("mean")(x, dims)`` is ``x.mean(dims)``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return getattr(x, self.name)(*args, **kwargs)  # type: ignore[no-any-return]


def _quant(inode: IntNode, nodes: dict[str, IntNode]) -> FaithfulQuant:
    q = quantizer_behind(inode, nodes.__getitem__)
    if q.op == "quantize":  # incl. data movement on the float input replayed on the codes: here it ran on floats
        return FaithfulQuant(q, None)
    return FaithfulQuant(q, nodes[q.inputs[0]].scale)


class FaithfulLut(_OnGrid):
    """A ``QLutAct``: its input requantized as by the hardware, its output read from its table."""

    table: torch.Tensor

    def __init__(self, module: QLutAct, quant: FaithfulQuant, node: IntNode) -> None:
        super().__init__(node)
        self.quant = quant
        codes, _ = module.table()
        self.register_buffer("table", codes.to(torch.int64))
        self.offset = module.in_fmt.qmin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[self.quant.codes(x) - self.offset].to(torch.float64) * self.grid


def _interp(inode: IntNode) -> FaithfulPool:
    a = inode.attrs
    sf = a.get("scale_factor")
    kwargs: dict[str, Any] = {"mode": a["mode"], "align_corners": bool(a["align_corners"])}
    kwargs.update({"scale_factor": tuple(sf)} if sf is not None else {"size": tuple(a["size"])})
    return FaithfulPool(inode, F.interpolate, (), kwargs)


def _faithful_module(kind: str, inode: IntNode, nodes: dict[str, IntNode], node: fx.Node,
                     module: nn.Module | None) -> nn.Module | None:
    if kind in ("qconv", "qlinear"):
        assert isinstance(module, QConv2d | QLinear)
        return FaithfulLayer(module, _quant(nodes[inode.inputs[0]], nodes), inode)
    if kind == "qact":
        assert isinstance(module, QAct)
        return _quant(inode, nodes)
    if kind in ("relu", "relu6", "hardtanh", "clamp"):
        return FaithfulClamp(inode)
    if inode.op == "reduce" and (int(np.asarray(inode.arrays["M"]).max()) != 1 or int(inode.arrays["n"])):
        return FaithfulReduce(inode, nodes[inode.inputs[0]].scale)
    if kind in ("avgpool", "adaptive_avgpool", "mean", "amax"):  # the float op, snapped onto the grid
        in_grid = nodes[inode.inputs[0]].scale
        if module is not None:
            return FaithfulPool(inode, module, (), {}, in_grid)
        args = tuple(a for a in node.args[1:])
        fn = node.target if node.op == "call_function" else _Method(str(node.target))
        return FaithfulPool(inode, fn, args, dict(node.kwargs), in_grid)
    if kind == "add" and inode.op == "affine":  # a sum with a python number
        return FaithfulAffine(inode, nodes[inode.inputs[0]].scale)
    if kind == "add":
        return FaithfulAdd(inode, [nodes[i].scale for i in inode.inputs])
    if kind in ("mul", "div"):
        return FaithfulMul(inode, [nodes[i].scale for i in inode.inputs])
    if kind == "bn":
        return FaithfulAffine(inode, nodes[inode.inputs[0]].scale)
    if kind == "qlut":
        assert isinstance(module, QLutAct)
        return FaithfulLut(module, _quant(nodes[inode.inputs[0]], nodes), inode)
    if kind == "upsample":
        return _interp(inode) if inode.op == "interp" else None
    if kind == "fbs":
        return faithful_fbs(module, inode, nodes, FaithfulLayer, _quant)
    raise ModelError(f"faithful: no hardware-faithful form of {kind!r}")  # pragma: no cover
