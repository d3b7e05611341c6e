"""Blocks of a quantized model for block reconstruction (:mod:`mixq.algorithms.ptq.brecq`), cut from the
graph; each block switched to float; and the diagonal Fisher information of the float prediction at every
block output.

**Blocks from the graph.** The model is traced by the one graph front end
(:func:`mixq.graph.trace.trace`) and cut wherever exactly one tensor is alive between two nodes: the
pieces between cuts are single-entry, single-exit regions (an inverted residual or a residual block,
whose skip tensor stays alive across its inside, is one region; a plain conv chain is one region per
layer). Consecutive regions are merged while a block holds at most ``max_layers`` compute layers (conv
pairs by default) or while they lie in one module below the top level (an inverted residual without
its skip); a region with more layers is a block of its own. Each block runs as its own small
:class:`torch.fx.GraphModule` sharing the model's modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import fx, nn

from mixq.errors import ModelError
from mixq.graph.trace import trace
from mixq.nn import QAct, QConv2d, QLinear

QLayer = QConv2d | QLinear


@dataclass
class Block:
    """A run of graph nodes with one input and one output: the compute layers in it and its callable."""

    layers: list[str]
    module: fx.GraphModule
    acts: list[QAct]


def _single_tensor_cuts(nodes: list[fx.Node]) -> list[int]:
    """Indices ``i`` after which exactly one value — node ``i``'s — is still needed later."""
    last_use: dict[fx.Node, int] = {}
    for i, n in enumerate(nodes):
        for a in n.all_input_nodes:
            last_use[a] = i
    alive: set[fx.Node] = set()
    cuts = []
    for i, n in enumerate(nodes):
        alive = {a for a in alive if last_use.get(a, -1) > i}
        if n.op != "get_attr" and last_use.get(n, -1) > i:
            alive.add(n)
        if alive == {n}:
            cuts.append(i)
    return cuts


def _subgraph(gm: fx.GraphModule, region: list[fx.Node], entry: fx.Node) -> fx.GraphModule:
    """The nodes of ``region`` as a module of one input (``entry``'s value) returning the last node."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {entry: g.placeholder("x")}

    def arg(a: fx.Node) -> fx.Node:
        if a not in env:  # a constant (get_attr) the region reads
            if a.op != "get_attr":
                raise ModelError(f"brecq: node {a.name} feeds block {region[0].name}..{region[-1].name} "
                                 "from outside it")
            env[a] = g.node_copy(a)
        return env[a]

    for n in region:
        env[n] = g.node_copy(n, arg)
    g.output(env[region[-1]])
    return fx.GraphModule(gm, g)


def find_blocks(model: nn.Module, max_layers: int = 2) -> list[Block]:
    """The blocks of a quantized model (see the module doc), in forward order."""
    gm = trace(model, stage="brecq")
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ModelError(f"brecq: the model takes {len(inputs)} inputs; block reconstruction needs one")
    cuts = _single_tensor_cuts(nodes)
    if cuts[-1] != len(nodes) - 1:  # the model's output ends the last region
        cuts.append(len(nodes) - 1)
    regions: list[tuple[fx.Node, list[fx.Node]]] = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        body = [n for n in nodes[a + 1 : b + 1] if n.op != "get_attr"]
        if body:
            regions.append((nodes[a], body))

    def layers_of(body: list[fx.Node]) -> list[str]:
        return [str(n.target) for n in body
                if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), QLayer)]

    def one_unit(a: list[str], b: list[str]) -> bool:
        """The last layer of ``a`` and the first of ``b`` lie in one module below the top level
        (``features.4.conv``: the two halves of an inverted residual without its skip)."""
        pa, pb = a[-1].split("."), b[0].split(".")
        common = next((i for i, (x, y) in enumerate(zip(pa, pb, strict=False)) if x != y), min(len(pa), len(pb)))
        return common >= 2

    blocks: list[tuple[fx.Node, list[fx.Node]]] = []
    for entry, body in regions:
        prev = layers_of(blocks[-1][1]) if blocks else []
        cur = layers_of(body)
        if blocks and (not cur or not prev or len(prev) + len(cur) <= max_layers or one_unit(prev, cur)):
            blocks[-1] = (blocks[-1][0], blocks[-1][1] + body)
        else:
            blocks.append((entry, body))
    out = []
    seen: set[str] = set()
    for entry, body in blocks:
        names = [n for n in layers_of(body) if n not in seen]
        seen.update(names)
        if not names:
            continue
        acts = [m for n in body if n.op == "call_module" for m in gm.get_submodule(str(n.target)).modules()
                if isinstance(m, QAct) and m.mode == "quant"]
        out.append(Block(names, _subgraph(gm, body, entry), list(dict.fromkeys(acts))))
    return out


@contextlib.contextmanager
def float_block(block: Block, model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> Iterator[None]:
    """The block's layers and activation quantizers switched off (the float block), on ``weights`` (by
    layer name) where given, else on the layers' own weights."""
    layers = [model.get_submodule(n) for n in block.layers]
    modes = [a.mode for a in block.acts]
    try:
        for n, ly in zip(block.layers, layers, strict=True):  # an instance attribute shadows the method
            w = weights[n] if weights is not None else ly.weight
            ly.__dict__["quantized_weight"] = lambda w=w: w
        for a in block.acts:
            a.mode = "float"
        yield
    finally:
        for ly in layers:
            ly.__dict__.pop("quantized_weight", None)
        for a, m in zip(block.acts, modes, strict=True):
            a.mode = m


def float_weight(model: nn.Module, name: str) -> torch.Tensor:
    w = model.get_submodule(name).weight
    if not isinstance(w, torch.Tensor):
        raise ModelError(f"brecq: the float model's layer {name!r} has no weight tensor")
    return w.detach()


def fisher_weights(blocks: list[Block], model: nn.Module, xs: list[torch.Tensor], samples: int, seed: int = 0,
                   weights: dict[str, torch.Tensor] | None = None) -> list[list[torch.Tensor]]:
    """Per block, per batch of ``xs``: the diagonal Fisher information of the float network's prediction at each
    element of the block's output, normalised to mean 1 over the block's elements.

    The float network (every block's layers and activation quantizers off, on ``weights`` where given) runs as
    the chain of its blocks; for each image ``samples`` labels are drawn from its own softmax and the squared
    gradient of their log-likelihood at every block output is averaged. This is the diagonal of the Hessian of
    KL(float ‖ quantized) at the float point (BRECQ's Fisher approximation), so an element the prediction is
    sensitive to — an image near a tie between two classes above all — weighs more in the block's output error.
    The chain must reproduce the model's output (checked on the first batch) and end in (images, classes) logits."""
    gen = torch.Generator().manual_seed(seed)
    sums: list[list[torch.Tensor]] = [[] for _ in blocks]
    with contextlib.ExitStack() as stack:
        for b in blocks:
            stack.enter_context(float_block(b, model, weights))
        for i, x in enumerate(xs):
            with torch.enable_grad():
                outs, h = [], x
                for b in blocks:
                    h = b.module(h)
                    outs.append(h)
                if i == 0:
                    with torch.no_grad():
                        whole = model(x)
                    if whole.shape != h.shape or not torch.allclose(whole, h, rtol=1e-4, atol=1e-4):
                        raise ModelError("brecq.fisher: the model's blocks do not chain to its output "
                                         "(a layer shared between blocks, or more than one output)")
                if h.dim() != 2:
                    raise ModelError(f"brecq.fisher: needs (images, classes) logits at the output, got shape "
                                     f"{tuple(h.shape)}")
                logp = torch.log_softmax(h, dim=1)
                labels = torch.multinomial(logp.detach().exp().cpu(), samples, replacement=True, generator=gen)
                acc = [torch.zeros_like(o) for o in outs]
                for k in range(samples):
                    ll = logp.gather(1, labels[:, k : k + 1].to(logp.device)).sum()
                    for a, g in zip(acc, torch.autograd.grad(ll, outs, retain_graph=k + 1 < samples), strict=True):
                        a.add_(g.detach().pow(2))
            for per_block, a in zip(sums, acc, strict=True):
                per_block.append(a / samples)
    out = []
    for per_block in sums:
        mean = sum(float(a.sum()) for a in per_block) / max(sum(a.numel() for a in per_block), 1)
        out.append([a / mean if mean > 0 else torch.ones_like(a) for a in per_block])
    return out
