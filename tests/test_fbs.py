"""FBS (dynamic channel pruning): the module, its training pieces, the integer engine and the hardware price.

Real weights (the zoo's CNV) and real Fashion-MNIST images throughout."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from pathlib import Path

import pytest
import torch

from mixq import zoo
from mixq.algorithms.prune.fbs import (
    FbsConfig,
    FbsError,
    calibrate_thresholds,
    channel_counts,
    executed_macs,
    fit_predictors,
    fold_fbs_bn,
    to_fbs,
)
from mixq.api import default_plan, quantize
from mixq.engine import faithful, load_int_model, save_int_model, to_integer
from mixq.engine.convert_fbs import FaithfulFBS, engine_channel_counts, keep_channels
from mixq.engine.runner import IntEngine
from mixq.errors import HardwareError, ModelError
from mixq.formats import FixedPoint
from mixq.graph.capture import capture
from mixq.hw.dynamic import dense_names, dynamic_overlay, gated_spec, percentile, streaming_gain
from mixq.nn.fbs import FBSConv2d, fbs_layers, fbs_penalty, keep_count, straight_through, wta_mask
from mixq.tasks.training import training_data

SHAPE = (1, 28, 28)
LAYERS = ("features.0", "features.3", "features.7", "features.10")


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    xtr, ytr, xte, yte = training_data("fmnist", max_train=1024, max_test=200)
    return {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}


@pytest.fixture(scope="module")
def dense() -> torch.nn.Module:
    return zoo.load("cnv", pretrained=True).eval()


@pytest.fixture(scope="module")
def fbs(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> torch.nn.Module:
    m = to_fbs(dense, FbsConfig(density=0.7), SHAPE)
    return fold_fbs_bn(fit_predictors(m, data["xtr"], spread=0.05))  # quantization takes the folded form


@pytest.fixture(scope="module")
def adaptive(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Every conv gated with a per-image channel count (0.7 on average), saliencies spread by the fit."""
    m = fold_fbs_bn(fit_predictors(to_fbs(dense, FbsConfig(density=0.7, adaptive=True), SHAPE), data["xtr"],
                                   spread=0.3))
    calibrate_thresholds(m, data["xtr"])
    return m


# ----------------------------------------------------------------------------- the module


def test_wta_is_a_stable_top_k() -> None:
    """Against the plain definition: sort by (-saliency, index), keep the first k — ties to the lower index."""
    rng = random.Random(0)
    for _ in range(200):
        c = rng.randint(1, 12)
        k = rng.randint(1, c)
        row = [float(rng.randint(0, 3)) for _ in range(c)]  # many ties
        want = set(sorted(range(c), key=lambda i: (-row[i], i))[:k])
        got = wta_mask(torch.tensor([row]), k)[0].tolist()
        assert [i for i, v in enumerate(got) if v] == sorted(want)


def test_keep_count() -> None:
    assert [keep_count(d, 64) for d in (0.01, 0.5, 0.7, 1.0)] == [1, 32, 45, 64]
    assert keep_count(0.7, 32) == math.ceil(0.7 * 32)


def test_density_one_is_the_dense_model_bn_kept(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """Each gated conv keeps the BatchNorm after it (conv -> BN -> gate; the BN's place in the graph an
    Identity): at saliency 1 and full density the FBS model computes the dense model, before and after
    fold_fbs_bn."""
    m = to_fbs(dense, FbsConfig(density=1.0), SHAPE)  # predictors start at saliency 1: identity gates
    x = data["xte"][:64]
    layers = fbs_layers(m)
    assert list(layers) == list(LAYERS)
    for n, layer in layers.items():
        assert isinstance(layer.bn, torch.nn.BatchNorm2d)
        bn_name = f"features.{int(n.split('.')[1]) + 1}"
        assert isinstance(m.get_submodule(bn_name), torch.nn.Identity)
        assert torch.equal(layer.bn.running_mean, dense.get_submodule(bn_name).running_mean)  # type: ignore[arg-type]
    assert not any(isinstance(v, torch.nn.BatchNorm1d) for v in m.modules())  # the non-gated BN is folded
    with torch.no_grad():
        assert torch.allclose(m(x), dense(x), atol=1e-4)
        fold_fbs_bn(m)
        assert all(layer.bn is None for layer in layers.values())
        assert torch.allclose(m(x), dense(x), atol=1e-4)
    assert fold_fbs_bn(m) is m  # folding again changes nothing


def test_fold_fbs_bn_is_exact() -> None:
    """gate * bn(conv(x)) == gate * conv'(x) in eval mode, random BN statistics, a gate keeping half the
    channels per input; the same channels kept."""
    torch.manual_seed(0)
    for bias in (False, True):
        conv = torch.nn.Conv2d(6, 10, 3, padding=1, bias=bias)
        bn = torch.nn.BatchNorm2d(10)
        with torch.no_grad():
            bn.running_mean.normal_(0, 0.5)  # type: ignore[union-attr]
            bn.running_var.uniform_(0.2, 3.0)  # type: ignore[union-attr]
            bn.weight.normal_(1, 0.5)
            bn.bias.normal_(0, 0.5)
        m = FBSConv2d(conv, 0.5, bn=bn).eval()
        torch.nn.init.normal_(m.predictor.weight, std=0.5)
        x = torch.randn(16, 6, 9, 9)
        with torch.no_grad():
            ref = m(x)
            assert m.last_saliency is not None
            keep = wta_mask(m.last_saliency, m.k)
            fold_fbs_bn(torch.nn.Sequential(m))
            assert m.bn is None and m.conv.bias is not None
            got = m(x)
            assert m.last_saliency is not None
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(wta_mask(m.last_saliency, m.k), keep)
        assert ref.ne(0).flatten(2).any(2).sum(1).max() <= 5
    with pytest.raises(ModelError, match="fbs.bn"):
        FBSConv2d(torch.nn.Conv2d(2, 4, 3), 0.5, bn=torch.nn.BatchNorm2d(3))


def test_fit_predictors_reads_the_bn_output(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """The channel activity the predictors are fitted to is bn(conv(x)) where the BN is kept: the fit equals
    the fit of the folded model (whose conv computes that), and differs from a fit to conv(x) alone."""
    kept = fit_predictors(to_fbs(dense, FbsConfig(density=0.7), SHAPE), data["xtr"][:256], spread=1.0)
    folded = fit_predictors(fold_fbs_bn(to_fbs(dense, FbsConfig(density=0.7), SHAPE)), data["xtr"][:256],
                            spread=1.0)
    no_bn = to_fbs(dense, FbsConfig(density=0.7), SHAPE)
    for layer in fbs_layers(no_bn).values():
        layer.bn = None  # the raw conv output (not a model anyone trains)
    fit_predictors(no_bn, data["xtr"][:256], spread=1.0)
    for n in LAYERS:
        a, b, c = (fbs_layers(m)[n].predictor for m in (kept, folded, no_bn))
        assert torch.allclose(a.weight, b.weight, atol=1e-4) and torch.allclose(a.bias, b.bias, atol=1e-4)
        assert not torch.allclose(torch.cat([a.weight.flatten(), a.bias]), torch.cat([c.weight.flatten(), c.bias]),
                              atol=1e-2)


def test_quantizing_an_unfolded_fbs_model_is_refused(dense: torch.nn.Module,
                                                      data: dict[str, torch.Tensor]) -> None:
    m = to_fbs(dense, FbsConfig(density=0.7), SHAPE)
    with pytest.raises(ModelError, match="fold_fbs_bn"):
        quantize(m, default_plan("cnv-fbs", m, data["xtr"][:64]), data["xtr"][:64])


def test_gating_keeps_k_channels(fbs: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    x = data["xte"][:32]
    layer = fbs.get_submodule("features.3")
    assert isinstance(layer, FBSConv2d)
    seen: dict[str, torch.Tensor] = {}
    h = layer.register_forward_hook(lambda _m, _a, y: seen.__setitem__("y", y))
    with torch.no_grad():
        fbs(x)
    h.remove()
    computed = seen["y"].ne(0).flatten(2).any(2)
    assert layer.k == 23
    assert bool((computed.sum(1) <= layer.k).all())
    assert layer.last_active is not None and bool((computed.sum(1) <= layer.last_active[1]).all())


def test_l1_hook_is_the_gradient_of_the_penalty(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """The gradient hook adds exactly d/ds of l1 * mean_n sum_c s_c; fbs_penalty reports that value."""
    folded = to_fbs(dense, FbsConfig(density=1.0, layers=()), SHAPE)
    with torch.no_grad():
        head = torch.nn.Sequential(*(folded.get_submodule(f"features.{i}") for i in range(3)))
        xin = head(data["xte"][:8])  # the real input of features.3
    grads, values = [], []
    for l1, explicit in ((0.5, False), (0.0, True)):
        torch.manual_seed(0)
        conv = folded.get_submodule("features.3")
        assert isinstance(conv, torch.nn.Conv2d)
        m = FBSConv2d(conv, 0.5, l1=l1).train()
        torch.nn.init.normal_(m.predictor.weight, std=0.5)
        loss = m(xin).square().mean()
        if explicit:
            loss = loss + 0.5 * m.saliency(xin).sum(1).mean()
        else:
            values.append(float(fbs_penalty(torch.nn.Sequential(m))))
        loss.backward()
        assert m.predictor.bias.grad is not None
        grads.append(m.predictor.bias.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert values[0] > 0


def test_straight_through_gives_suppressed_channels_their_gradient(dense: torch.nn.Module,
                                                                   data: dict[str, torch.Tensor]) -> None:
    """Inside straight_through: the same outputs and the same gradient for kept channels; a suppressed channel's
    saliency gets sum_hw dL/dy_c * relu(f_c) (the gradient it would get if kept) where without it gets none
    from the task; the ReLU modules the gated layers feed are the identity, and all is restored after."""
    x = data["xte"][:8]
    m = fit_predictors(to_fbs(dense, FbsConfig(density=0.5, l1=0.0), SHAPE), data["xtr"][:256], spread=0.2)
    relu_before = type(m.get_submodule("features.2"))
    grads: dict[bool, torch.Tensor] = {}
    outs: dict[bool, torch.Tensor] = {}
    gated = m.get_submodule("features.3")
    assert isinstance(gated, FBSConv2d)
    for ste in (False, True):
        m.eval()  # BN running statistics: both passes compute the same values
        m.zero_grad()
        with straight_through(m, x) if ste else contextlib.nullcontext() as names:
            if ste:
                assert names == sorted(LAYERS) and type(m.get_submodule("features.2")) is torch.nn.Identity
            gated.training = True  # the gradient path of training, BN still in eval mode
            outs[ste] = m(x)
            outs[ste].logsumexp(1).sum().backward()
            gated.training = False
        assert gated.predictor.bias.grad is not None
        grads[ste] = gated.predictor.bias.grad.clone()
    assert type(m.get_submodule("features.2")) is relu_before and not gated.relu_inside
    assert torch.equal(outs[False], outs[True])
    s = gated.saliency(m.get_submodule("features.2")(m.get_submodule("features.1")(
        m.get_submodule("features.0")(x))))
    kept_somewhere = wta_mask(s, gated.k).any(0)
    never_kept = ~kept_somewhere & (s > 0).all(0)
    assert never_kept.any()
    assert torch.all(grads[False][never_kept] == 0)
    assert torch.all(grads[True][never_kept] != 0)


def test_density_anneal_ramps_k_and_restores_it(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """``anneal``: the fine-tune starts with every channel kept and reaches the layer's own ``k`` at the given
    fraction of its steps; afterwards each layer holds its own ``k`` again."""
    from mixq.algorithms.prune.fbs import train_fbs
    from mixq.training import TrainConfig

    cfg = FbsConfig(density=0.5, layers=("features.3",), anneal=0.5,
                    train=TrainConfig(epochs=1, batch_size=32, lr=1e-4, threads=1, progress=False,
                                      eval_every_epoch=False, augment=False))
    m = to_fbs(dense, cfg, SHAPE)
    layer = m.get_submodule("features.3")
    assert isinstance(layer, FBSConv2d)
    ks: list[int] = []
    assert layer.bn is not None
    mean0 = layer.bn.running_mean.clone()  # type: ignore[union-attr]
    h = layer.register_forward_pre_hook(lambda mod, _a: ks.append(mod.k))
    train_fbs(m, None, (data["xtr"][:256], data["ytr"][:256]), cfg)
    h.remove()
    assert not torch.equal(layer.bn.running_mean, mean0)  # the fine-tune trains with BatchNorm
    assert len(ks) == 8 and ks[0] == 28 and ks[3:] == [16] * 5  # 1 - (1/4)(1 - 0.5) of 32, then 16 from step 4
    assert ks == sorted(ks, reverse=True) and layer.k == 16
    with pytest.raises(FbsError, match="anneal"):
        FbsConfig(anneal=1.5)


def test_refit_predictors_during_the_fine_tune(dense: torch.nn.Module, data: dict[str, torch.Tensor],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``refit_every``: the predictors take no gradient step (frozen during the fine-tune, trainable again
    after) and are refitted by least squares every that many steps — here after steps 3 and 6 of 8."""
    import mixq.algorithms.prune.fbs as fbs_mod
    from mixq.training import TrainConfig

    calls: list[int] = []
    real = fbs_mod.fit_predictors

    def counted(model: torch.nn.Module, x: torch.Tensor, *args: object, **kw: object) -> torch.nn.Module:
        calls.append(int(x.shape[0]))
        return real(model, x, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fbs_mod, "fit_predictors", counted)
    cfg = FbsConfig(density=0.5, layers=("features.3",), refit_every=3, refit_images=64,
                    train=TrainConfig(epochs=1, batch_size=32, lr=1e-3, threads=1, progress=False,
                                      eval_every_epoch=False, augment=False))
    m = fit_predictors(to_fbs(dense, cfg, SHAPE), data["xtr"][:64])
    layer = m.get_submodule("features.3")
    assert isinstance(layer, FBSConv2d)
    fbs_mod.train_fbs(m, None, (data["xtr"][:256], data["ytr"][:256]), cfg)
    assert calls == [64, 64] and layer.k == 16
    assert all(q.requires_grad and q.grad is None for q in layer.predictor.parameters())
    assert layer.conv.weight.grad is not None
    with pytest.raises(FbsError, match="refit_every"):
        FbsConfig(refit_every=-1)


def test_static_prior_starts_at_the_static_choice(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """A margin above the predictors' spread: every image keeps exactly the channels static pruning keeps
    (the masks' nonzero rows); without the prior the choice differs between images."""
    from mixq.algorithms.prune import channel_masks
    from mixq.algorithms.prune.fbs import static_prior

    masks = channel_masks(dense, 0.29, list(LAYERS))
    x = data["xte"][:64]

    def choices(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            m(x)
        out = {}
        for n in LAYERS:
            layer = m.get_submodule(n)
            assert isinstance(layer, FBSConv2d) and layer.last_saliency is not None
            out[n] = wta_mask(layer.last_saliency, layer.k)
        return out

    m = fit_predictors(to_fbs(dense, FbsConfig(density=0.7, layers=LAYERS), SHAPE), data["xtr"][:256], spread=0.05)
    free = choices(m)
    assert any(bool((c != c[0]).any()) for c in free.values())
    static_prior(m, masks, 0.5)
    for n, c in choices(m).items():
        want = masks[n].reshape(masks[n].shape[0], -1).ne(0).any(1)
        assert int(want.sum()) == c.shape[1] - round(0.29 * c.shape[1]) and bool((c == want).all())
    with pytest.raises(FbsError, match="classifier.0"):
        static_prior(m, {"classifier.0": torch.ones(10, dtype=torch.bool)})


def test_config_errors(dense: torch.nn.Module) -> None:
    with pytest.raises(FbsError, match="density"):
        FbsConfig(density=0.0)
    with pytest.raises(FbsError, match="features.2"):
        to_fbs(dense, FbsConfig(layers=("features.2",)), SHAPE)
    with pytest.raises(ModelError, match="density"):
        FBSConv2d(torch.nn.Conv2d(2, 2, 3), 1.5)


# ----------------------------------------------------------------------------- MACs


def test_executed_macs_follow_the_channel_counts(dense: torch.nn.Module, fbs: torch.nn.Module,
                                                 data: dict[str, torch.Tensor]) -> None:
    specs = capture(dense, SHAPE)
    x = data["xte"][:100]
    macs = executed_macs(fbs, specs, x)
    counts = channel_counts(fbs, x)
    by = {s.name: s for s in specs}
    for n in LAYERS:
        s = by[n]
        want = counts[n][:, 0] * counts[n][:, 1] * (s.macs // (s.in_channels * s.out_channels))
        assert torch.equal(macs[n], want)
        assert bool((counts[n][:, 1] <= fbs.get_submodule(n).k).all())  # type: ignore[operator]
    dense_macs = executed_macs(dense, specs, x)["total"]
    assert bool((dense_macs == sum(s.macs for s in specs if s.is_compute)).all())
    assert float(macs["total"].double().mean()) < 0.55 * float(dense_macs[0])


def test_adaptive_layers_keep_a_per_image_count(dense: torch.nn.Module, adaptive: torch.nn.Module,
                                                data: dict[str, torch.Tensor]) -> None:
    """Calibrated thresholds keep each layer's density over the calibration images (ties add at most a few
    channels), the count differs per image, the rule is ``s >= threshold`` (and ``s > 0``); in training the
    batch's ``ceil(d N C)`` largest saliencies are kept and the threshold moves a tenth of the way to the
    batch's."""
    x = data["xtr"]
    kept = calibrate_thresholds(adaptive, x)
    assert set(kept) == set(LAYERS) and all(0.7 <= f < 0.71 for f in kept.values()), kept
    with torch.no_grad():
        adaptive(x)
    for m in fbs_layers(adaptive).values():
        assert m.k == m.conv.out_channels and m.threshold is not None and float(m.threshold) > 0
        assert m.last_keep is not None and m.last_saliency is not None
        assert torch.equal(m.last_keep, (m.last_saliency >= m.threshold) & (m.last_saliency > 0))
        counts = m.last_keep.sum(1)
        assert len(torch.unique(counts)) > 3 and counts.double().mean() == pytest.approx(0.7 * counts.new_tensor(
            m.conv.out_channels).item(), rel=0.02)
    train = copy.deepcopy(adaptive).train()
    first = fbs_layers(train)["features.0"]
    assert first.threshold is not None
    before = float(first.threshold)
    with torch.no_grad():
        train(x[:64])
    assert first.last_keep is not None and first.last_saliency is not None
    assert int(first.last_keep.sum()) == math.ceil(0.7 * 64 * 32)
    tau = float(first.last_saliency[first.last_keep].min())
    assert float(first.threshold) == pytest.approx(0.9 * before + 0.1 * tau, rel=1e-6)
    with pytest.raises(FbsError, match="anneal"):
        FbsConfig(adaptive=True, anneal=0.5)
    full = fold_fbs_bn(fit_predictors(to_fbs(dense, FbsConfig(density=1.0, adaptive=True), SHAPE), x))
    assert set(calibrate_thresholds(full, x).values()) == {1.0}  # density 1: threshold 0, every channel kept
    assert all(float(m.threshold) == 0 for m in fbs_layers(full).values() if m.threshold is not None)


# ----------------------------------------------------------------------------- integer engine


@pytest.mark.parametrize("bits", [8, 4])
def test_engine_is_bit_exact(fbs: torch.nn.Module, data: dict[str, torch.Tensor], bits: int,
                             tmp_path: Path) -> None:
    """Integer engine == hardware-faithful fake quant, outputs and channel decisions, on real test images;
    its executed MACs are the per-image counts; its decisions match the fake-quant model's."""
    plan = (default_plan("cnv-fbs", fbs, data["xtr"][:64]) if bits == 8 else
            default_plan("cnv-fbs", fbs, data["xtr"][:64], FixedPoint(bits=4, narrow=True),
                         FixedPoint(bits=4, signed=False)))
    q = quantize(fbs, plan, data["xtr"][:256])
    x = data["xte"]
    im = to_integer(q, x[:1])
    assert sum(n.op == "fbs" for n in im.nodes) == 4
    res, counts = engine_channel_counts(IntEngine(im), x)
    fm = faithful(q, im)
    assert torch.equal(fm(x), res.real())
    gated = {m.int_name: m for m in fm.modules() if isinstance(m, FaithfulFBS)}
    with torch.no_grad():
        q(x)
    agree = 0
    for name, m in gated.items():
        assert m.last_keep is not None
        assert torch.equal(m.last_keep.sum(1), counts[name][:, 1])
        node = im.node(name)
        per = int(node.arrays["weight"][0, 0].size) * math.prod(node.shape[1:])
        assert res.saturated[f"{name}:macs"] == int((counts[name][:, 0] * counts[name][:, 1]).sum()) * per
        fq = q.get_submodule(name)
        assert isinstance(fq, FBSConv2d) and fq.last_saliency is not None
        agree += int((keep_channels(fq.last_saliency, fq.k) == m.last_keep).all(1).sum())
    assert agree >= 0.97 * 4 * x.shape[0]
    save_int_model(im, tmp_path / "fbs.json")  # the file round trip keeps the gated nodes
    assert torch.equal(IntEngine(load_int_model(tmp_path / "fbs.json"))(x[:16]).codes, res.codes[:16])


@pytest.mark.parametrize("bits", [8, 4])
def test_engine_is_bit_exact_with_adaptive_counts(adaptive: torch.nn.Module, data: dict[str, torch.Tensor],
                                                  bits: int) -> None:
    """Adaptive layers quantized (thresholds calibrated on the quantized saliencies): the engine's rule on gate
    codes (``code >= min_gate``) is the fake-quant rule ``s >= threshold`` code for code, outputs and decisions
    equal the hardware-faithful model's, the counts vary per image and the executed MACs are theirs."""
    w = FixedPoint(bits=bits, narrow=True)
    q = quantize(adaptive, default_plan("cnv-fbs", adaptive, data["xtr"][:64], w, FixedPoint(bits=bits,
                                                                                             signed=False)),
                 data["xtr"][:256])
    calibrate_thresholds(q, data["xtr"][:512])
    x = data["xte"]
    im = to_integer(q, x[:1])
    res, counts = engine_channel_counts(IntEngine(im), x)
    fm = faithful(q, im)
    assert torch.equal(fm(x), res.real())
    with torch.no_grad():
        q(x)
    agree = 0
    for m in fm.modules():
        if not isinstance(m, FaithfulFBS):
            continue
        node, fq = im.node(m.int_name), q.get_submodule(m.int_name)
        assert isinstance(fq, FBSConv2d) and fq.threshold is not None and fq.last_keep is not None
        step, top, floor = float(im.node(node.inputs[1]).scale), int(im.node(node.inputs[1]).bound), m.floor
        vals = fq.gate_quant(torch.arange(top + 1).float() * step)
        assert torch.equal((vals >= fq.threshold)[1:], torch.arange(1, top + 1) >= floor)  # the same rule
        assert m.last_keep is not None and torch.equal(m.last_keep.sum(1), counts[m.int_name][:, 1])
        assert len(torch.unique(counts[m.int_name][:, 1])) > 1
        per = int(node.arrays["weight"][0, 0].size) * math.prod(node.shape[1:])
        assert res.saturated[f"{m.int_name}:macs"] == int(counts[m.int_name].prod(1).sum()) * per
        agree += int((fq.last_keep == m.last_keep).all(1).sum())
    assert agree >= 0.97 * 4 * x.shape[0]


def test_engine_refuses_uncalibrated_gates(fbs: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    q = quantize(fbs, default_plan("cnv-fbs", fbs, data["xtr"][:64]), data["xtr"][:64])
    for m in q.modules():
        if isinstance(m, FBSConv2d):
            m.gate_quant.mode = "float"
    with pytest.raises(ModelError, match="gate quantizer"):
        to_integer(q, data["xte"][:1])


# ----------------------------------------------------------------------------- hardware


def test_dynamic_overlay(dense: torch.nn.Module) -> None:
    specs = capture(dense, SHAPE)
    plan = default_plan("cnv", dense, torch.randn(4, *SHAPE))
    by = {s.name: s for s in specs}
    full = {n: [(by[n].in_channels, by[n].out_channels)] * 3 for n in LAYERS}
    est = dynamic_overlay(specs, plan, full, predictors=False).summary()
    assert est["cycles_mean"] == est["dense_cycles"] and est["cycle_reduction"] == 1.0
    half = {n: [(max(1, by[n].in_channels // 2), by[n].out_channels // 2)] * 2
            + [(by[n].in_channels, by[n].out_channels)] for n in LAYERS}
    d = dynamic_overlay(specs, plan, half).summary()
    assert d["frames"] == 3
    assert d["cycles_mean"] < est["dense_cycles"] and d["cycles_p95"] > d["cycles_mean"]
    assert d["weight_bits_mean"] < d["dense_weight_bits"] and d["fps_mean"] > est["fps_mean"]
    with pytest.raises(HardwareError, match="features.3"):
        dynamic_overlay(specs, plan, {"features.3": [(33, 1)]})
    with pytest.raises(HardwareError, match="conv layer"):
        dynamic_overlay(specs, plan, {"classifier.0": [(1, 1)]})
    # the predictors run on the dense network's cores: adding them does not resize the design (at W8A8 their
    # short rows would pack two per DSP, and a packed DSP core has fewer rows per cycle for the convs)
    fbs_plan = dense_names(default_plan("cnv-fbs", to_fbs(dense, FbsConfig(), SHAPE), torch.randn(4, *SHAPE)))
    with_pred = dynamic_overlay(specs, fbs_plan, full).summary()
    assert with_pred["dense_cycles"] == est["dense_cycles"]
    pred = {k: v for k, v in with_pred["layers"].items() if k.endswith(".predictor")}
    assert len(pred) == 4
    assert with_pred["cycles_mean"] == est["cycles_mean"] + sum(v["cycles_mean"] for v in pred.values())
    g = gated_spec(by["features.3"], 16, 8)
    assert g.macs == by["features.3"].macs // 8 and g.row_length == 16 * 9
    assert list(dense_names(default_plan("cnv-fbs", to_fbs(dense, FbsConfig(), SHAPE), torch.randn(4, *SHAPE))))[:2] \
        == ["features.0", "features.0.predictor"]


def test_dynamic_single_engine(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """The single engine (W4A4 CNV's program on a 16 x 16 int4 EU): every channel counted and no predictor is
    the dense estimate to the cycle; a gated step's cycles and DDR weights by hand; predictors as steps of
    their own; counts of a linear step refused by name."""
    from mixq.engine.program import lower as lower_program
    from mixq.hw.dynamic import dynamic_mnisc
    from mixq.hw.mnisc import CONST_BITS_PER_ROW, EuConfig, estimate_mnisc
    from mixq.rtl.mnisc import eu_steps

    plan = default_plan("cnv", dense, data["xtr"][:64], FixedPoint(bits=4, narrow=True), FixedPoint(bits=4,
                                                                                                  signed=False))
    steps = eu_steps(lower_program(to_integer(quantize(dense, plan, data["xtr"][:256]), data["xtr"][:1])))
    cfg = EuConfig(p=16, s=16, wbits=4, abits=4)
    ref = estimate_mnisc(steps, cfg)
    by = {st.name: st for st in steps}
    full = {n: [(by[n].in_shape[0], by[n].out_shape[0])] * 2 for n in LAYERS}
    est = dynamic_mnisc(steps, full, cfg, predictors=False).summary()
    assert est["cycles_mean"] == est["dense_cycles"] == sum(t.cycles for t in ref.steps)
    assert 1.0 / est["fps_mean"] == pytest.approx(ref.frame_s, rel=1e-12)
    half = {n: [(max(1, by[n].in_shape[0] // 2), by[n].out_shape[0] // 2)] * 2
            + [(by[n].in_shape[0], by[n].out_shape[0])] for n in LAYERS}
    d = dynamic_mnisc(steps, half, cfg, predictors=False).summary()
    f3 = d["layers"]["features.3"]  # 28 x 28 outputs, 16 of 32 rows on 16 rows, 16 x 9 of 32 x 9 on 16 lanes
    assert f3["dense_cycles"] == 28 * 28 * 2 * 18 + cfg.step_cycles
    assert f3["cycles_mean"] == pytest.approx((2 * (28 * 28 * 1 * 9 + cfg.step_cycles) + f3["dense_cycles"]) / 3)
    assert d["cycles_p95"] > d["cycles_mean"] and d["fps_mean"] > est["fps_mean"]
    quarter = sum((by[n].weight_bits - by[n].out_shape[0] * CONST_BITS_PER_ROW) * half[n][0][0] // 2
                  // by[n].in_shape[0] + by[n].out_shape[0] // 2 * CONST_BITS_PER_ROW for n in LAYERS)
    rest = sum(st.weight_bits for st in steps if st.name not in LAYERS)
    assert d["weight_bits_mean"] == pytest.approx((2 * (quarter + rest) + d["dense_weight_bits"]) / 3, abs=4)
    p = dynamic_mnisc(steps, full, cfg).summary()
    pred = {k: v for k, v in p["layers"].items() if k.endswith(".predictor")}
    assert len(pred) == 4 and p["dense_cycles"] == est["dense_cycles"]
    # 32 -> 32 predictor of features.3: 4-bit pooled inputs, 8-bit weights (2 passes), 2 x 2 tiles, own set-up
    assert pred["features.3.predictor"]["cycles_mean"] == 2 * 2 * 2 + cfg.step_cycles
    assert p["cycles_mean"] == est["cycles_mean"] + sum(v["cycles_mean"] for v in pred.values())
    with pytest.raises(HardwareError, match="classifier.0"):
        dynamic_mnisc(steps, {"classifier.0": [(1, 1)]}, cfg)


def test_step_counts_follow_suppressed_channels_into_a_fused_add() -> None:
    """A residual block on the single engine: the second conv and the add are one step reading the first conv's
    output and the skip; gating the first conv leaves that step with the computed channels plus the skip's."""
    from mixq.engine.program import lower as lower_program
    from mixq.hw.dynamic import dynamic_mnisc
    from mixq.hw.mnisc import EuConfig
    from mixq.rtl.mnisc import eu_steps, step_counts

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.conv1 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.stem(x))
            return torch.relu(self.conv2(torch.relu(self.conv1(h))) + h)

    torch.manual_seed(0)
    m, x = Block().eval(), torch.rand(16, 3, 8, 8)
    prog = lower_program(to_integer(quantize(m, default_plan("block", m, x), x), x[:1]))
    add = next(st for st in prog.steps if st.kind == "add")
    assert add.in_shape[0] == 16  # conv2's 8 inputs and the skip's 8
    got = step_counts(prog, {"conv1": [3, 8, 5]})
    assert got["conv1"] == [(8, 3), (8, 8), (8, 5)] and got["stem"] == [(3, 8)] * 3
    assert got[add.name] == [(11, 8), (16, 8), (13, 8)]
    est = dynamic_mnisc(eu_steps(prog), got, EuConfig(p=4, s=4), predictors=False).summary()
    assert est["layers"][add.name]["cycles_mean"] < est["layers"][add.name]["dense_cycles"]
    with pytest.raises(HardwareError, match="nope"):
        step_counts(prog, {"nope": [1]})


def test_streaming_gain_and_percentile() -> None:
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)
    g = streaming_gain({"a": 100, "b": 80}, {"a": 4, "b": 4}, {"a": 32}, {"a": [(32, 16), (32, 32)]})
    assert g["dense_cycles"] == 100 and g["cycles_mean"] == pytest.approx((80 + 100) / 2)


def test_cli_prune_dynamic(tmp_path: Path) -> None:
    """`mixq prune --dynamic` through a real process: gated layers at the density asked, executed MACs per image
    against the dense count, the model and the QAT run written, the quantized model bit-exact in the integer
    engine (outputs and every channel decision, `engine.verify_fbs`); a bad density is a usage error (exit 2), and a
    resume of a dynamic run is refused in one line (exit 1)."""
    import json
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mixq", "prune", *args], capture_output=True, text=True,
                              timeout=600, check=False)

    out = tmp_path / "fbs"
    proc = cli("--dynamic", "--density", "0.5", "--finetune-epochs", "1", "--epochs", "1", "--max-train", "256",
               "--max-test", "256", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-1500:]
    doc = json.loads((out / "fbs.json").read_text())
    assert {k: v["k"] for k, v in doc["densities"].items()} == {"features.0": 16, "features.3": 16,
                                                               "features.7": 32, "features.10": 32}
    assert doc["dense_macs"] == 18_691_840 and doc["macs_mean"] < 0.6 * doc["dense_macs"]
    assert (out / "model.pt").is_file() and (out / "qat").is_dir()
    eng = doc["engine"]  # the run checks its quantized model in the integer engine, decisions included
    assert eng["exact"] and eng["outputs_bit_exact"] and eng["images"] == 256
    assert eng["decisions_equal_faithful"] == f"{4 * 256}/{4 * 256}"
    same, total = map(int, eng["decisions_equal_fake_quant"].split("/"))  # float32 saliencies: rare near-ties
    assert total == 4 * 256 and same >= 0.98 * total
    assert set(eng["engine_macs_total"]) == {f"{n}:macs" for n in doc["densities"]}  # skipped channels not run
    assert sum(eng["engine_macs_total"].values()) < 256 * doc["macs_mean"]
    bad = cli("--dynamic", "--density", "1.5", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--density" in bad.stderr and "Traceback" not in bad.stderr
    again = cli("--dynamic", "--resume", "--out", str(out))
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    ada = cli("--dynamic", "--adaptive", "--fps-budget", "1300", "--finetune-epochs", "1", "--epochs", "1",
              "--max-train", "256", "--max-test", "256", "--threads", "1", "--out", str(tmp_path / "ada"))
    assert ada.returncode == 0, ada.stderr[-1500:]
    doc = json.loads((tmp_path / "ada" / "fbs.json").read_text())  # adaptive layers at densities for 1300 fps
    assert all(v["k"] == v["channels"] and v["threshold"] > 0 for v in doc["densities"].values())
    assert min(v["density"] for v in doc["densities"].values()) < 1 and doc["macs_p95"] > doc["macs_mean"]
    assert doc["fps_budget"]["fps"] == 1300 <= doc["fps_budget"]["overlay_fps_at_most_inputs"]
    part = cli("--dynamic", "--fps-budget", "2000", "--part", "xc9999", "--out", str(tmp_path / "part"))
    assert part.returncode == 1 and "xc9999" in part.stderr and len(part.stderr.strip().splitlines()) == 1
    alone = cli("--adaptive", "--out", str(tmp_path / "alone"))
    assert alone.returncode == 1 and "--adaptive" in alone.stderr and len(alone.stderr.strip().splitlines()) == 1


def test_densities_chosen_for_a_frame_rate(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """Per-layer densities for 1.4x the dense overlay's frame rate: the chosen densities' overlay estimate (all
    input channels active: the bound the choice is made on) is the rate reported and reaches the target; a
    rate the lowest densities cannot reach is refused by name."""
    from mixq.algorithms.prune.fbs_budget import fps_config

    x = data["xtr"][:128]
    plan = default_plan("cnv", dense, x[:64])
    specs = capture(dense, SHAPE)
    by = {s.name: s for s in specs}
    full = {n: [(by[n].in_channels, by[n].out_channels)] for n in LAYERS}
    dense_fps = dynamic_overlay(specs, plan, full).summary()["fps_mean"]  # predictors included
    cfg, ch = fps_config(dense, x, 1.4 * dense_fps, FbsConfig(), plan)
    assert ch.budget_fps == 1.4 * dense_fps <= ch.fps and min(cfg.densities.values()) < 1
    counts = {n: [(by[n].in_channels, keep_count(cfg.densities[n], by[n].out_channels))] for n in LAYERS}
    assert dynamic_overlay(specs, plan, counts).summary()["fps_mean"] == pytest.approx(ch.fps, rel=1e-9)
    with pytest.raises(FbsError, match="frames/s budget 1e"):
        fps_config(dense, x, 1e6, FbsConfig(), plan)


def test_densities_chosen_for_a_mac_budget(dense: torch.nn.Module, data: dict[str, torch.Tensor]) -> None:
    """Per-layer densities for half the convs' MACs: every layer's sensitivity measured at every density (it
    grows as the density drops), the knapsack's choice fits the budget, equals the exhaustive optimum, and a
    budget below the lowest density is refused by name."""
    from mixq.algorithms.prune.fbs_budget import DENSITIES, budget_config, choose_densities
    from mixq.algorithms.search.solvers import Item, Problem, solve_exhaustive

    cfg, ch = budget_config(dense, data["xtr"][:256], 0.5, FbsConfig())
    assert set(ch.densities) == set(LAYERS) and all(d in DENSITIES for d in ch.densities.values())
    assert cfg.densities == ch.densities and ch.cost_macs <= ch.budget_macs
    for s in ch.sensitivity.values():
        assert s[-1] > s[0] and all(b >= a - 1e-3 for a, b in zip(s, s[1:], strict=False))
    specs = capture(dense, SHAPE)
    macs = {s.name: s.macs for s in specs}
    names = list(ch.sensitivity)
    items = tuple(tuple(Item(v, (macs[n] * d,)) for v, d in zip(ch.sensitivity[n], DENSITIES, strict=True))
                  for n in names)
    best = solve_exhaustive(Problem(items, (0.5 * sum(macs[n] for n in names),)))
    assert best is not None
    chosen = sum(ch.sensitivity[n][DENSITIES.index(ch.densities[n])] for n in names)
    assert chosen == pytest.approx(best.objective, rel=1e-9)
    with pytest.raises(FbsError, match="MAC budget 0.1"):
        choose_densities(ch.sensitivity, specs, 0.1)
