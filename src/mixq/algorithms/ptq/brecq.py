"""Block reconstruction (BRECQ, Li et al., ICLR 2021) with QDrop's random activation dropping (Wei et
al., ICLR 2022): the rounding of every weight and the step of every activation quantizer of a block,
learned together on the block's output error.

**Blocks from the graph.** The model is traced by the one graph front end
(:func:`mixq.graph.trace.trace`) and cut wherever exactly one tensor is alive between two nodes: the
pieces between cuts are single-entry, single-exit regions (an inverted residual or a residual block,
whose skip tensor stays alive across its inside, is one region; a plain conv chain is one region per
layer). Consecutive regions are merged while a block holds at most ``max_layers`` compute layers (conv
pairs by default) or while they lie in one module below the top level (an inverted residual without
its skip); a region with more layers is a block of its own. Each block runs as its own small
:class:`torch.fx.GraphModule` sharing the model's modules.

**Reconstruction.** Blocks are processed in forward order. A block's input ``x_q`` comes from the
quantized model with the earlier blocks already reconstructed, its target is the float block's output
on the float input (the same modules with their quantizers off). With ``lo``/``gap`` the neighbouring
levels of every weight (any format, MSQ rows included; :func:`~mixq.algorithms.ptq.adaround.rounding_grid`)
and AdaRound's rectified sigmoid ``h(V)``, Adam minimises ::

    ‖block(x_q; lo + h(V)·gap, steps) - block_float(x_fp)‖²  +  λ Σ (1 - |2h(V) - 1|^β)

over ``V`` of every layer of the block and, with ``learn_act``, the step of every activation quantizer
inside it (LSQ's straight-through rounding). With ``drop > 0`` each activation quantizer passes
each element unquantized with that probability during the optimisation (QDrop), which flattens the
loss surface the rounding is learned on. At the end every weight is written back as ``s · level``
(its own fake quantizer reproduces the chosen level exactly) and every learned step becomes the
quantizer's frozen scale — unless the block's output error came out higher than at the start (a block
already near its optimum, or too few iterations), in which case the block keeps its starting weights and
scales (``kept: "start"`` in the report).

Data: the calibration set only (the first ``images``). Device: ``device`` (``"cuda"`` where one is
available); the model is moved there for the stage and back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from mixq import progress
from mixq.algorithms.ptq._common import as_tensor, batches, require_positive
from mixq.algorithms.ptq.adaround import beta_at, init_logits, rectified_sigmoid, rounding_grid
from mixq.errors import MixqError, ModelError
from mixq.graph.trace import trace
from mixq.modes import eval_mode
from mixq.nn import QAct, QConv2d, QLinear
from mixq.quant.lsq import lsq_quant

QLayer = QConv2d | QLinear


@dataclass(frozen=True)
class BrecqConfig:
    """Block reconstruction settings: ``iterations`` Adam steps per block on mini-batches of ``batch``
    of the first ``images`` calibration images; ``lr`` for the rounding logits, ``act_lr`` for the
    activation steps; AdaRound's regularizer (``reg_weight``, ``beta_start`` → ``beta_end`` after
    ``warmup``); ``drop``: QDrop's probability of passing an activation unquantized (0: BRECQ);
    ``max_layers``: compute layers merged into one block; ``batch_size``: images per forward
    outside the optimisation."""

    iterations: int = 400
    batch: int = 32
    images: int = 256
    lr: float = 1e-2
    act_lr: float = 4e-5
    learn_act: bool = True
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    drop: float = 0.5
    max_layers: int = 2
    zeta: float = 1.1
    gamma: float = -0.1
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        require_positive(self, "brecq", ("iterations", "batch", "images", "max_layers", "batch_size"),
                         ("lr", "act_lr"))
        if not 0.0 <= self.drop < 1.0:
            raise MixqError(f"brecq.drop: must be in [0, 1), got {self.drop!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise MixqError(f"brecq.warmup: must be in [0, 1), got {self.warmup!r}")


# ---------------------------------------------------------------------------------------------- blocks
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


# ---------------------------------------------------------------------------------------------- patches
@contextlib.contextmanager
def _float(block: Block, model: nn.Module) -> Iterator[None]:
    """The block's layers and activation quantizers switched off (the float block)."""
    layers = [model.get_submodule(n) for n in block.layers]
    modes = [a.mode for a in block.acts]
    try:
        for ly in layers:  # an instance attribute shadows the method for the block's run
            ly.__dict__["quantized_weight"] = lambda ly=ly: ly.weight
        for a in block.acts:
            a.mode = "float"
        yield
    finally:
        for ly in layers:
            ly.__dict__.pop("quantized_weight", None)
        for a, m in zip(block.acts, modes, strict=True):
            a.mode = m


class _Soft:
    """The learnable state of one block: rounding logits per layer, a step per activation quantizer."""

    def __init__(self, block: Block, model: nn.Module, cfg: BrecqConfig) -> None:
        self.cfg = cfg
        self.layers: list[QLayer] = [model.get_submodule(n) for n in block.layers]  # type: ignore[misc]
        self.grids = []
        self.logits = []
        for ly in self.layers:
            lo, gap, rest = rounding_grid(ly.weight.cpu(), ly.formats, ly.row_scheme.cpu(), ly.w_scales.cpu())
            self.grids.append((lo.to(ly.weight), gap.to(ly.weight)))
            self.logits.append(init_logits(rest.to(ly.weight), cfg.zeta, cfg.gamma).requires_grad_(True))
        self.acts = block.acts
        self.steps = [nn.Parameter(a.scale.detach().clone().float()) for a in self.acts]
        self.drop = 0.0

    def h(self, i: int) -> torch.Tensor:
        return rectified_sigmoid(self.logits[i], self.cfg.zeta, self.cfg.gamma)

    def regularizer(self, beta: float) -> torch.Tensor:
        total = torch.zeros((), device=self.logits[0].device)
        for i, (_, gap) in enumerate(self.grids):
            h = self.h(i)
            total = total + ((1.0 - (2.0 * h - 1.0).abs().pow(beta)) * (gap > 0)).sum()
        return total

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Layers use ``lo + h(V)·gap``; activation quantizers the learnable steps (and QDrop)."""
        try:
            for i, ly in enumerate(self.layers):
                lo, gap = self.grids[i]
                ly.__dict__["quantized_weight"] = lambda i=i, lo=lo, gap=gap: lo + self.h(i) * gap
            for a, step in zip(self.acts, self.steps, strict=True):
                a.__dict__["forward"] = self._act(a, step)
            yield
        finally:
            for m in [*self.layers, *self.acts]:
                m.__dict__.pop("quantized_weight", None)
                m.__dict__.pop("forward", None)

    def _act(self, a: QAct, step: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            s = step if self.cfg.learn_act else step.detach()
            q = lsq_quant(x, s.abs().clamp(min=1e-12), a.fmt, 1.0)
            if self.drop > 0:
                keep = torch.rand_like(x) < self.drop
                q = torch.where(keep, x, q)
            return q
        return forward

    @torch.no_grad()
    def write_back(self) -> None:
        for i, ly in enumerate(self.layers):
            lo, gap = self.grids[i]
            up = (self.h(i) >= 0.5) & (gap > 0)
            ly.weight.copy_(lo + up.to(lo.dtype) * gap)
        if self.cfg.learn_act:
            for a, step in zip(self.acts, self.steps, strict=True):
                a.scale = step.detach().abs().clamp(min=1e-12).reshape(a.scale.shape).to(a.scale)


# ---------------------------------------------------------------------------------------------- loop
def _error(module: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """Mean over images of the squared output error summed over each image's outputs."""
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in zip(xs, ys, strict=True):
            total += float((module(x) - y).pow(2).flatten(1).sum(1).sum())
            n += x.shape[0]
    return total / max(n, 1)


def reconstruct_block(block: Block, model: nn.Module, xq: list[torch.Tensor], target: list[torch.Tensor],
                      cfg: BrecqConfig) -> dict[str, Any]:
    """Learn one block's rounding and activation steps (in place); the output error before and after."""
    before = _error(block.module, xq, target)
    soft = _Soft(block, model, cfg)
    start = ([ly.weight.detach().clone() for ly in soft.layers], [a.scale.clone() for a in soft.acts])
    x_all, y_all = torch.cat(xq), torch.cat(target)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam([{"params": soft.logits, "lr": cfg.lr},
                            {"params": soft.steps, "lr": cfg.act_lr}])
    n = x_all.shape[0]
    torch.manual_seed(cfg.seed)  # QDrop's masks
    with soft.active(), torch.enable_grad():
        soft.drop = cfg.drop
        for step in range(cfg.iterations):
            idx = torch.randint(0, n, (min(cfg.batch, n),), generator=gen).to(x_all.device)
            out = block.module(x_all[idx])
            loss = (out - y_all[idx]).pow(2).flatten(1).sum(1).mean()
            beta = beta_at(step, cfg)  # type: ignore[arg-type]
            if beta is not None:
                loss = loss + cfg.reg_weight * soft.regularizer(beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        soft.drop = 0.0
    soft.write_back()
    after = _error(block.module, xq, target)
    if after > before:  # the learned point is worse than the start (a block already near its optimum): keep the start
        with torch.no_grad():
            for ly, w in zip(soft.layers, start[0], strict=True):
                ly.weight.copy_(w)
            for a, sc in zip(soft.acts, start[1], strict=True):
                a.scale = sc
    return {"layers": len(block.layers), "rec_before": before, "rec_after": min(after, before),
            "rec_learned": after, "kept": "start" if after > before else "learned"}


def brecq(qmodel: nn.Module, calib: torch.Tensor, cfg: BrecqConfig | None = None) -> dict[str, dict[str, Any]]:
    """Block reconstruction of every block of ``qmodel`` (in place; activation quantizers calibrated
    already). Returns per block (named by its first layer) the output error before and after."""
    cfg = cfg or BrecqConfig()
    data = as_tensor(calib)[: cfg.images]
    dev = torch.device(cfg.device)
    home = next(qmodel.parameters()).device
    report: dict[str, dict[str, Any]] = {}
    qmodel.to(dev)
    try:
        with eval_mode(qmodel):
            blocks = find_blocks(qmodel, cfg.max_layers)
            xq = [b.to(dev) for b in batches(data, cfg.batch_size)]
            xf = list(xq)
            with progress.task("ptq brecq", total=len(blocks)) as task:
                for block in blocks:
                    with torch.no_grad(), _float(block, qmodel):
                        yf = [block.module(x) for x in xf]
                    report[block.layers[0]] = reconstruct_block(block, qmodel, xq, yf, cfg)
                    with torch.no_grad():
                        xq = [block.module(x) for x in xq]
                    xf = yf
                    task.advance(layer=block.layers[0])
    finally:
        qmodel.to(home)
    return report

