"""Activation modules the tracer cannot follow, as the torch modules that compute the same.

Model packages often write their activations in a form torch.fx cannot trace: a TorchScript function
(geffnet's ``HardSwishJit``, and its memory-efficient ``HardSwishMe``, a custom autograd Function whose
forward is scripted). Tracing such a model fails at the first of them. (fx traces through a custom
autograd Function whose forward is plain torch, such as efficientnet_pytorch's ``MemoryEfficientSwish``.)
:func:`replace_opaque_activations` finds every leaf module
(no children, no parameters or buffers, not a torch module) that fx cannot trace, runs it on probe
inputs and, where it computes one of the activations of :data:`CANDIDATES` element for element (to
1e-5), puts that torch module in its place, in a copy of the model. A module that matches none stays
as it is, for the tracer's own message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import fx, nn

#: activation name -> the torch module computing it (default arguments)
CANDIDATES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "elu": nn.ELU, "leaky_relu": nn.LeakyReLU,
}


def _probes() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.linspace(-12.0, 12.0, 4801).reshape(1, 4801), 6 * torch.randn(2, 3, 5, 7, generator=g)]


def _traceable(m: nn.Module) -> bool:
    try:
        fx.symbolic_trace(m)
    except Exception:  # noqa: BLE001 - any failure of fx on it is what this looks for
        return False
    return True


@torch.no_grad()
def match(m: nn.Module) -> str | None:
    """The name of the :data:`CANDIDATES` activation ``m`` computes on the probe inputs, else ``None``."""
    xs, outs = _probes(), []
    for x in xs:
        try:
            y = m(x.clone())
        except Exception:  # noqa: BLE001 - a module that does not take a tensor is no activation
            return None
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or not bool(torch.isfinite(y).all()):
            return None
        outs.append(y)
    for name, make in CANDIDATES.items():
        ref = make()
        if all(torch.allclose(y, ref(x), rtol=1e-5, atol=1e-5) for x, y in zip(xs, outs, strict=True)):
            return name
    return None


def _candidate(m: nn.Module) -> bool:
    return (not type(m).__module__.startswith("torch.") and next(m.children(), None) is None
            and next(m.parameters(), None) is None and next(m.buffers(), None) is None)


def replace_opaque_activations(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """``(model, {})`` when no leaf module needs it; else a copy with each untraceable activation module replaced
    by the torch module computing the same, and ``{name: activation}`` of the replaced ones."""
    found: dict[str, str] = {}
    traceable: dict[type, bool] = {}
    for name, m in model.named_modules():
        if not name or not _candidate(m):
            continue
        if type(m) not in traceable:
            traceable[type(m)] = _traceable(m)
        if not traceable[type(m)] and (act := match(m)) is not None:
            found[name] = act
    if not found:
        return model, found
    out = copy.deepcopy(model)
    for name, act in found.items():
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, leaf, CANDIDATES[act]().train(model.training))
    return out, found
