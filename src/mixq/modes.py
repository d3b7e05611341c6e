"""A model's train/eval mode, set for a block and restored in a ``finally``.

:func:`eval_mode` and :func:`train_mode` are the one way mixq changes a caller's
model mode for a while: every given module is switched on entry and put back on
exit, whether the block ends normally or raises.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
>>> with eval_mode(net):
...     net.training, net[1].training
(False, False)
>>> net.training, net[1].training
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from torch import nn


@contextmanager
def _mode(models: tuple[nn.Module, ...], training: bool, per_module: bool) -> Iterator[None]:
    if per_module:
        saved = [[(m, m.training) for m in model.modules()] for model in models]
    else:
        saved = [[(model, model.training)] for model in models]
    try:
        for model in models:
            model.train(training)
        yield
    finally:
        for entries in reversed(saved):  # reverse order: a module given twice gets its first mode back
            if per_module:
                for m, was in entries:
                    m.training = was
            else:
                (model, was), = entries
                model.train(was)


def eval_mode(*models: nn.Module, per_module: bool = False) -> AbstractContextManager[None]:
    """Put every module of ``models`` in eval mode for the block; restore each one's mode afterwards.

    The mode is restored in a ``finally``, so an exception inside the block leaves the
    caller's models as they were. By default a model gets back its own flag module-wide
    (``model.train(was)``: every submodule takes the model's mode); ``per_module=True``
    saves and restores each submodule's own ``training`` flag instead (a model whose
    BatchNorms were frozen in eval mode while the rest trains keeps them frozen).
    Gradient mode is not touched: combine with ``torch.no_grad()`` where needed.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> _ = net[1].eval()  # a frozen BatchNorm inside a training model
    >>> with eval_mode(net, per_module=True):
    ...     net.training
    False
    >>> net.training, net[1].training
    (True, False)
    >>> with eval_mode(net):
    ...     pass
    >>> net.training, net[1].training
    (True, True)
    """
    return _mode(models, False, per_module)


def train_mode(*models: nn.Module, per_module: bool = False) -> AbstractContextManager[None]:
    """Put every module of ``models`` in training mode for the block; restore each one's mode afterwards.

    The counterpart of :func:`eval_mode`, with the same restore rules.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).eval()
    >>> with train_mode(net):
    ...     net[1].training
    True
    >>> net[1].training
    False
    """
    return _mode(models, True, per_module)
