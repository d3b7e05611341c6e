"""Pruning (layer L5): magnitude and channel pruning with fine-tuning, focused quantization of the
pruned layers (falling back to shift quantization when the weight mixture is not separated),
the storage of sparse quantized models (:func:`mixq.nn.size.sparse_size_bytes`, re-exported), and
dynamic channel pruning (FBS, :mod:`mixq.algorithms.prune.fbs`)."""

from mixq.algorithms.prune.fbs import FbsConfig, FbsError, fbs_and_quantize, to_fbs
from mixq.algorithms.prune.focused import Separation, choose_pruned_format, focused_plan, separation
from mixq.algorithms.prune.masks import (
    PruneError,
    apply_masks,
    channel_masks,
    channel_scores,
    magnitude_mask,
    magnitude_masks,
    param_masks,
    prunable_layers,
    sparsity_of,
)
from mixq.algorithms.prune.run import PruneConfig, PruneResult, make_masks, prune_and_quantize
from mixq.nn.size import sparse_size_bytes

__all__ = [
    "FbsConfig",
    "FbsError",
    "PruneConfig",
    "PruneError",
    "PruneResult",
    "Separation",
    "apply_masks",
    "channel_masks",
    "channel_scores",
    "fbs_and_quantize",
    "choose_pruned_format",
    "focused_plan",
    "magnitude_mask",
    "magnitude_masks",
    "make_masks",
    "param_masks",
    "prunable_layers",
    "prune_and_quantize",
    "separation",
    "sparse_size_bytes",
    "sparsity_of",
    "to_fbs",
]
