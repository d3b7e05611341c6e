"""A dynamically pruned (FBS) model checked in the integer engine: outputs and every channel decision.

:func:`verify_fbs` converts a quantized FBS model (:class:`mixq.nn.FBSConv2d` layers, QAT done, gates
calibrated) to the integer engine and runs it on images beside its hardware-faithful form and the fake-quant
model itself: the engine's outputs must equal the faithful model's bit for bit, and per image and layer the
engine must compute as many channels as the faithful model keeps (``exact``). The plain fake-quant model's
channel sets are compared too, as information: it computes its saliencies in float32, so a near-tie between two
channels' gate codes can fall the other way (CNV, density 0.5, W4A4: 6 of 1,024 image-layer decisions;
``benchmarks/fbs.py``'s adaptive CNV: 1 of 4,000), as its outputs differ from the hardware's by rounding
(`mixq verify`'s "vs ordinary fake quant"). ``mixq prune --dynamic`` runs it on its held-out images and fails
its check (exit 3) unless exact; ``benchmarks/fbs.py`` reports it per row.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from mixq.engine.convert import to_integer
from mixq.engine.convert_fbs import FaithfulFBS, engine_channel_counts
from mixq.engine.faithful import faithful
from mixq.engine.runner import IntEngine
from mixq.nn.fbs import fbs_layers


@torch.no_grad()
def verify_fbs(qmodel: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The integer engine of ``qmodel`` on ``x`` against its hardware-faithful form (outputs, the number of
    channels each layer computes per image) and the fake-quant model's decisions (the channel sets).
    ``exact``: engine and faithful model agree on every output and decision; ``engine_macs_total``: the MACs the
    engine executed, per layer."""
    t = time.perf_counter()
    im = to_integer(qmodel, x[:1])
    res, counts = engine_channel_counts(IntEngine(im), x)
    fm = faithful(qmodel, im)
    same_out = bool(torch.equal(fm(x), res.real()))
    layers = fbs_layers(qmodel)
    qmodel(x)  # the fake-quant model's decisions: each layer keeps its last ones
    fq_keep = {n: m.last_keep for n, m in layers.items()}
    same_faithful = same_fq = total = 0
    for sub in fm.modules():
        if isinstance(sub, FaithfulFBS):
            keep, fq = sub.last_keep, fq_keep[sub.int_name]
            assert keep is not None and fq is not None
            same_faithful += int((keep.sum(1) == counts[sub.int_name][:, 1]).sum())
            same_fq += int(torch.eq(keep, fq).all(1).sum())
            total += int(x.shape[0])
    return {"images": int(x.shape[0]), "outputs_bit_exact": same_out,
            "engine_macs_total": {k: v for k, v in res.saturated.items() if k.endswith(":macs")},
            "decisions_equal_faithful": f"{same_faithful}/{total}",
            "decisions_equal_fake_quant": f"{same_fq}/{total}",
            "exact": same_out and same_faithful == total,
            "seconds": round(time.perf_counter() - t, 1)}
