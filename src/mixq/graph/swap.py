"""Module swap by qualified name, on a copy, and the compute layers of a model in forward order.

``swap_modules(model, fn)`` deep-copies ``model`` and offers every leaf module
of the copy to ``fn(name, module)``; a returned module takes that module's
place, ``None`` keeps it. The input model is never changed. A leaf is a module
without children, or a compute module of `mixq.graph.registry.COMPUTE_MODULES` / a
BatchNorm (sub)class even when it has children (a quantized layer holding quantizer modules is offered whole, its
children are not). A module registered under several names is offered once,
under its first name, and its replacement goes to every name it had, so
sharing survives the swap.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mixq.errors import ModelError
from mixq.graph.registry import COMPUTE_TYPES, QUANTIZABLE
from mixq.graph.trace import trace


def is_leaf(m: nn.Module) -> bool:
    """A module swapped whole: childless, or a compute module / BN (sub)class."""
    return isinstance(m, (*COMPUTE_TYPES, _BatchNorm)) or next(m.children(), None) is None


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every leaf in registration order, each registration listed."""
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, m in model.named_modules(remove_duplicate=False):
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if is_leaf(m):
            inside.append(name)
            out.append((name, m))
    return out


def set_submodule(root: nn.Module, qualname: str, new: nn.Module) -> None:
    """Put ``new`` at ``qualname`` (e.g. ``"layer1.0.conv1"``) inside ``root`` (in place)."""
    parent_name, _, leaf = qualname.rpartition(".")
    try:
        parent = root.get_submodule(parent_name) if parent_name else root
    except AttributeError as exc:
        raise ModelError(f"{qualname}: no such module in {type(root).__name__}") from exc
    if leaf not in parent._modules:
        raise ModelError(f"{qualname}: no such module in {type(root).__name__}")
    setattr(parent, leaf, new)


def swap_modules(model: nn.Module, fn: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """A deep copy of ``model`` whose leaf modules ``fn(name, module)`` replaced (``None``: kept).

    ``fn`` receives the copy's module, so it may build the replacement from it
    (e.g. a quantized layer wrapping the copied weights). Raises
    :class:`ModelError` when ``fn`` returns something that is not an ``nn.Module``.
    """
    out = copy.deepcopy(model)
    decided: dict[int, nn.Module | None] = {}
    for name, m in leaf_modules(out):
        if id(m) not in decided:
            new = fn(name, m)
            if new is not None and not isinstance(new, nn.Module):
                raise ModelError(
                    f"{name}: swap function returned {type(new).__name__}, not an nn.Module or None"
                )
            decided[id(m)] = new
        new = decided[id(m)]
        if new is not None and new is not m:
            set_submodule(out, name, new)
    return out


def named_compute_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear layers (subclasses included) as (qualified name, module) in forward order.

    Forward order comes from FX tracing (each layer listed at its first call;
    layers never called are left out). When the model cannot be traced the
    registration order of ``named_modules`` is used instead.
    """
    compute = QUANTIZABLE
    try:
        graph = trace(model).graph
    except ModelError:  # registration order is the documented fallback
        return [(n, m) for n, m in model.named_modules() if n and isinstance(m, compute)]
    seen: dict[str, nn.Module] = {}
    for node in graph.nodes:
        if node.op == "call_module" and str(node.target) not in seen:
            m = model.get_submodule(str(node.target))
            if isinstance(m, compute):
                seen[str(node.target)] = m
    return list(seen.items())

