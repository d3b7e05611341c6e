"""Grids of data-movement ops: pure functions on a node's grid (its ``scale`` array).

A grid is a float64 array broadcastable to the node's per-sample shape, kept in one of three
forms: a scalar (one grid for the tensor), per channel (``(C, 1, ..., 1)``), or full (one value per
element: a pixel shuffle of channels on different grids interleaves them in space). Moving data
moves the grid with it; zeros inserted by padding take the grid of the nearest real pixel (zero is
on every grid).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def is_channel_grid(g: np.ndarray) -> bool:
    """A scalar grid or one value per channel (every other axis of size 1)."""
    return g.ndim == 0 or all(d == 1 for d in g.shape[1:])


def compact(g: np.ndarray) -> np.ndarray:
    """The smallest of the three forms that holds the full grid ``g`` (shape ``(C, ...)``)."""
    g = np.asarray(g, dtype=np.float64)
    if g.size == 0 or np.all(g == g.reshape(-1)[0]):
        return np.array(g.reshape(-1)[0] if g.size else 1.0, dtype=np.float64)
    per_channel = g.reshape(g.shape[0], -1)
    if np.all(per_channel == per_channel[:, :1]):
        return np.ascontiguousarray(per_channel[:, 0].reshape((g.shape[0],) + (1,) * (g.ndim - 1)))
    return np.ascontiguousarray(g)


def full(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The grid broadcast to every element of a per-sample ``shape``."""
    return np.array(np.broadcast_to(np.asarray(g, dtype=np.float64), shape), dtype=np.float64, order="C")


def move(g: np.ndarray, shape: tuple[int, ...], op: Callable[[torch.Tensor], torch.Tensor],
         spatial_only: bool) -> np.ndarray:
    """The grid after a data-movement ``op`` (on a batch ``(1, C, H, W)``) of a tensor of ``shape``.

    ``spatial_only``: the op keeps every channel's values in that channel, so a scalar or
    per-channel grid is unchanged.
    """
    if g.ndim == 0 or (spatial_only and is_channel_grid(g)):
        return g
    t = torch.from_numpy(full(g, shape)).unsqueeze(0)
    return compact(op(t)[0].numpy())


def reshape(g: np.ndarray, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray | None:
    """The grid after a reshape that only inserts / removes unit dims (``None`` for any other reshape)."""
    keep_in = [i for i, d in enumerate(in_shape) if d != 1]
    keep_out = [j for j, d in enumerate(out_shape) if d != 1]
    if [in_shape[i] for i in keep_in] != [out_shape[j] for j in keep_out]:
        return None
    if g.ndim == 0:
        return g
    dims = [1] * len(out_shape)
    for i, j in zip(keep_in, keep_out, strict=True):
        dims[j] = g.shape[i]
    return np.ascontiguousarray(g.reshape(dims))


def channels(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The grid as ``(C, ...)`` with as many dims as ``shape`` (for a concatenation along channels)."""
    if g.ndim == 0:
        return np.full((shape[0],) + (1,) * (len(shape) - 1), float(g))
    g = np.asarray(g, dtype=np.float64)
    return g.reshape(g.shape + (1,) * (len(shape) - g.ndim)) if g.ndim < len(shape) else g  # (C,): (C, 1, 1)
