"""Tomato-style greedy arithmetic selection (`mixq.algorithms.search.greedy`) on CNV with its real weights."""

from __future__ import annotations

import pytest
import torch

from mixq.algorithms.search import AccuracyEval, SearchSpace, SensitivityConfig, sensitivity
from mixq.algorithms.search.greedy import LADDER, GreedyConfig, greedy_plan, proxy_scores
from mixq.errors import MixqError
from mixq.graph import ops
from mixq.graph.bnfold import fold_bn
from mixq.tasks.search import bundled_task

pytestmark = pytest.mark.usefixtures("one_thread")

SENS = SensitivityConfig(images=8, hutchinson_samples=2)


@pytest.fixture(scope="module")
def cnv() -> tuple[torch.nn.Module, torch.Tensor, AccuracyEval]:
    model, calib, ev = bundled_task("cnv", True, 64, 300)
    assert isinstance(ev, AccuracyEval)
    return model, calib, ev


def test_proxy_orders_the_ladder(cnv: tuple[torch.nn.Module, torch.Tensor, AccuracyEval]) -> None:
    """More levels never cost more error: pot5 ⊇ pot4 and fixed8 ⊇ fixed6 ⊇ fixed4 on the same row scale."""
    model, calib, _ = cnv
    folded = fold_bn(model).eval()
    signed = sorted(ops.signed_input_layers(folded, calib)[1])
    sens = sensitivity(folded, calib, SearchSpace(wbits=(8,), abits=(8,), rhos=(0.0,)), signed, SENS, "cnv")
    scores = proxy_scores(folded, sens, tuple(LADDER))
    assert len(scores) == 6
    for n, s in scores.items():
        assert s["pot5"] <= s["pot4"] + 1e-12, n
        assert s["fixed8"] <= s["fixed6"] <= s["fixed4"], n
        assert s["fixed8"] > 0, n  # real weights are not all on the 8-bit grid


def test_proxy_threshold_extremes(cnv: tuple[torch.nn.Module, torch.Tensor, AccuracyEval]) -> None:
    model, calib, ev = cnv
    loose = greedy_plan("cnv", model, calib, ev, "xc7z020", GreedyConfig(judge="proxy", threshold=1e9,
                                                                          sensitivity=SENS))
    assert set(loose.choices.values()) == {"pot4"}
    tight = greedy_plan("cnv", model, calib, ev, "xc7z020", GreedyConfig(judge="proxy", threshold=0.0,
                                                                         sensitivity=SENS))
    assert set(tight.choices.values()) == {"fixed8"}
    assert loose.fits and tight.fits
    assert loose.fps > tight.fps  # shifts on LUTs: a faster design than W8 on 220 DSPs
    w0 = tight.plan.layers["features.0"].weight
    assert w0 is not None and w0.kind == "fixed"
    assert all(lp.mapping.pe >= 1 for lp in loose.plan.layers.values())


def test_accuracy_judge_keeps_threshold(cnv: tuple[torch.nn.Module, torch.Tensor, AccuracyEval]) -> None:
    """The final plan is the last accepted trial: its drop is within the threshold (unless the last layer
    had to stay at the widest format), and each layer's pick is the first on the ladder that passed."""
    model, calib, ev = cnv
    cfg = GreedyConfig(judge="accuracy", threshold=1.0, ladder=("pot4", "sp2-4", "fixed8"))
    r = greedy_plan("cnv", model, calib, ev, "xc7z020", cfg)
    assert r.reference - r.accuracy <= 1.0 + 1e-9 or list(r.choices.values())[-1] == "fixed8"
    assert set(r.choices.values()) <= set(cfg.ladder)
    assert r.trials == sum(cfg.ladder.index(k) + 1 for k in r.choices.values())
    assert r.to_dict()["drop"] == round(r.reference - r.accuracy, 3)


@pytest.mark.parametrize("kw", [{"judge": "ilp"}, {"ladder": ("pot9",)}, {"ladder": ()}, {"abits": 1},
                                {"threshold": -1.0}, {"threshold": float("nan")}])
def test_bad_config(kw: dict[str, object]) -> None:
    with pytest.raises(MixqError, match="greedy"):
        GreedyConfig(**kw)  # type: ignore[arg-type]


def test_greedy_skips_formats_whose_accumulator_the_engine_refuses(
        cnv: tuple[torch.nn.Module, torch.Tensor, AccuracyEval]) -> None:
    """pot5 carries codes up to 2**14: on CNV's classifier.0 (3,136 weights a row) its worst-case accumulator takes
    33 bits, past the engine's 32. With a ladder of pot5 then fixed8 and no accuracy asked, every layer takes pot5
    but classifier.0, which falls back to fixed8; the integer engine converts the plan's quantized model."""

    from mixq.algorithms.ptq import quantize
    from mixq.engine.convert import to_integer
    from mixq.errors import ModelError

    model, calib, ev = cnv
    g = greedy_plan("cnv", model, calib, ev, "xc7z020", GreedyConfig(judge="proxy", threshold=1e9,
                                                                      ladder=("pot5", "fixed8"), sensitivity=SENS))
    assert g.choices["classifier.0"] == "fixed8"
    assert {k for n, k in g.choices.items() if n != "classifier.0"} == {"pot5"}
    folded = fold_bn(model).eval()
    to_integer(quantize(folded, g.plan, calib, "plan", fold=False), calib[:1])
    lp = g.plan.layers["classifier.0"]
    refused = g.plan.with_layer("classifier.0", lp.with_(weight=LADDER["pot5"]))
    with pytest.raises(ModelError, match="classifier.0.*accumulator needs 33 bits"):
        to_integer(quantize(folded, refused, calib, "plan", fold=False), calib[:1])
    wider = greedy_plan("cnv", model, calib, ev, "xc7z020", GreedyConfig(judge="proxy", threshold=1e9, acc_bits=34,
                                                                         ladder=("pot5", "fixed8"), sensitivity=SENS))
    assert set(wider.choices.values()) == {"pot5"}  # a 34-bit budget takes the 33-bit accumulator
