"""Running a model on data, shared by every stage above the graph layer.

* :func:`batches` — split a tensor into batches;
* :func:`predict` / :func:`evaluate` — logits and top-1 accuracy in eval mode;
* :func:`signed_input_layers` — compute layers in forward order and those whose input goes
  negative (they need a signed activation format);

`mixq.api` re-exports them for users; the algorithms import them from here (layers only
import downwards).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mixq.errors import MixqError
from mixq.graph.registry import QUANTIZABLE
from mixq.modes import eval_mode
from mixq.training import accuracy


def batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``x``, computed in batches."""
    with eval_mode(model):
        return torch.cat([model(b) for b in batches(x, batch_size)])


def evaluate(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent (:func:`mixq.training.accuracy`, the one rule)."""
    if x.shape[0] != labels.shape[0]:
        raise MixqError(f"evaluate: {x.shape[0]} inputs but {labels.shape[0]} labels")
    with torch.no_grad():
        return accuracy(model, x, labels, batch_size)


@torch.no_grad()
def signed_input_layers(model: nn.Module, sample: torch.Tensor) -> tuple[list[str], set[str]]:
    """Conv2d/Linear layers (subclasses included) in forward order, and those whose input takes negative
    values on ``sample``."""
    order: list[str] = []
    signed: set[str] = set()
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, QUANTIZABLE):
            def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], name: str = name) -> None:
                if name not in order:
                    order.append(name)
                if float(inp[0].min()) < 0:
                    signed.add(name)
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with eval_mode(model):
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return order, signed
