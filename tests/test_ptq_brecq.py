"""Block reconstruction (BRECQ + QDrop): blocks from the graph, lower block errors, weights on the grid."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mixq.algorithms.ptq import AdaRoundConfig, BrecqConfig, find_blocks, get_recipe, quantize_report
from mixq.errors import MixqError, ModelError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph import capture
from mixq.nn import QConv2d, QLinear
from mixq.plan import uniform_plan
from mixq.quant import fake_quant


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class _Net(nn.Module):
    """conv, a residual block, two convs in a row, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.res = _Res(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.res(x)
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.flatten(1))


def _setup(weight: object = None, alt: object = None, ratio: float = 0.0) -> tuple[nn.Module, object, torch.Tensor]:
    torch.manual_seed(0)
    net = _Net().eval()
    names = [s.name for s in capture(net, (3, 8, 8)) if s.is_compute]
    plan = uniform_plan("net", names, weight or FixedPoint(3, narrow=True), FixedPoint(4, signed=False),
                        signed_inputs=names[:1], weight_alt=alt, alt_ratio=ratio)
    return net, plan, torch.randn(96, 3, 8, 8)


FAST = BrecqConfig(iterations=150, batch=16, images=64, lr=1e-2)


def test_blocks_follow_the_graph() -> None:
    net, plan, x = _setup()
    q = quantize_report(net, plan, x, "plan").model
    blocks = [b.layers for b in find_blocks(q, max_layers=2)]
    # the stem alone (the residual block after it holds two layers already), the residual block whole,
    # the conv pair, the classifier
    assert blocks == [["stem"], ["res.a", "res.b"], ["c1", "c2"], ["fc"]]
    assert [b.layers for b in find_blocks(q, max_layers=1)] == [["stem"], ["res.a", "res.b"], ["c1"], ["c2"], ["fc"]]
    assert [b.layers for b in find_blocks(q, max_layers=3)] == [["stem", "res.a", "res.b"], ["c1", "c2", "fc"]]


@pytest.mark.parametrize("msq", [False, True], ids=["fixed", "msq"])
def test_reconstruction_lowers_every_block_error_and_lands_on_the_grid(msq: bool) -> None:
    alt = SumOfPowers(4) if msq else None
    net, plan, x = _setup(FixedPoint(4, narrow=True) if msq else None, alt, 0.5 if msq else 0.0)
    r = quantize_report(net, plan, x, "brecq", brecq=FAST)
    rep = r.details["brecq"]
    assert list(rep) == ["stem", "res.a", "c1", "fc"]
    for name, v in rep.items():  # never worse than the start; learned (and better) on the blocks that matter
        assert v["rec_after"] <= v["rec_before"], name
    assert all(v["kept"] == "learned" and v["rec_after"] < v["rec_before"] for v in list(rep.values())[:3])
    learned = {"stem": ["stem"], "res.a": ["res.a", "res.b"], "c1": ["c1", "c2"], "fc": ["fc"]}
    for block in (b for b, v in rep.items() if v["kept"] == "learned"):
        for name in learned[block]:  # a learned weight is one of its row format's levels times the row's scale
            m = r.model.get_submodule(name)
            w = m.weight.detach()
            assert torch.allclose(m.quantized_weight().detach(), w, rtol=0, atol=1e-6 * float(w.abs().max()))


def test_one_rounding_method_per_recipe_except_gptq_starting_brecq() -> None:
    with pytest.raises(MixqError, match="recipe.adaround / recipe.brecq"):
        get_recipe("adaround", brecq=BrecqConfig())
    with pytest.raises(MixqError, match="recipe.adaround / recipe.gptq"):
        get_recipe("gptq", adaround=AdaRoundConfig())
    assert get_recipe("gptq", brecq=BrecqConfig()).brecq is not None
    with pytest.raises(MixqError, match="brecq.drop"):
        BrecqConfig(drop=1.0)


def test_the_learned_steps_become_the_frozen_scales() -> None:
    net, plan, x = _setup()
    q0 = quantize_report(net, plan, x, "minmax", weight_scales="output").model
    q1 = quantize_report(net, plan, x, "brecq", brecq=FAST).model
    s0 = [m.input_quant.scale.item() for m in q0.modules() if isinstance(m, QConv2d | QLinear)]
    s1 = [m.input_quant.scale.item() for m in q1.modules() if isinstance(m, QConv2d | QLinear)]
    assert s0 != s1 and all(v > 0 for v in s1)
    a = next(m.input_quant for m in q1.modules() if isinstance(m, QConv2d))
    t = torch.rand(100) * 3
    assert torch.equal(a(t), fake_quant(t, a.fmt, a.scale))


def test_cli_device_is_for_block_reconstruction_only(tmp_path: Path) -> None:
    """``mixq quantize --device`` moves block reconstruction to a GPU; any other recipe refuses it, and a device the
    machine lacks is refused before any work, one line naming the option."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--recipe", "gptq", "--device", "cuda",
                        "--out", str(tmp_path / "a")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("mixq: error: --device cuda: only")
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--recipe", "brecq", "--device", "cuda",
                            "--out", str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 1 and "--device cuda: no CUDA device" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_budgets_are_fields_over_the_defaults() -> None:
    from mixq.algorithms.ptq import BRECQ_BUDGETS, brecq_budget

    assert brecq_budget("full") == BrecqConfig()
    cpu = brecq_budget("cpu", device="cuda")
    assert (cpu.iterations, cpu.batch, cpu.images, cpu.crop, cpu.device) == (100, 16, 128, 56, "cuda")
    assert set(BRECQ_BUDGETS) == {"full", "cpu"}
    with pytest.raises(MixqError, match="brecq budget: 'gpu' is not one of full, cpu"):
        brecq_budget("gpu")


def test_cli_brecq_budget_is_for_block_reconstruction_only(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--recipe", "gptq", "--brecq-budget", "cpu",
                        "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == \
        "mixq: error: --brecq-budget cpu: only --recipe brecq takes it (this is gptq)"
    r = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--recipe", "brecq", "--brecq-budget", "gpu",
                        "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--brecq-budget" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("args", "iterations", "crop"), [([], 100, 56), (["--brecq-budget", "full"], 400, 0)],
                         ids=["auto-on-cpu", "full"])
def test_cli_brecq_budget_reaches_the_recipe(tmp_path: Path, args: list[str], iterations: int, crop: int) -> None:
    """On the CPU ``--recipe brecq`` runs the CPU budget unless told otherwise; summary.json records it."""
    import json

    r = subprocess.run([sys.executable, "-m", "mixq", "quantize", "cnv", "--recipe", "brecq", "--images", "32",
                        *args, "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads((tmp_path / "q" / "summary.json").read_text())["recipe"]["brecq"]
    assert (got["iterations"], got["crop"], got["device"]) == (iterations, crop, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_reconstruction_on_the_gpu_lowers_every_block_error() -> None:
    net, plan, x = _setup()
    cfg = BrecqConfig(**{**FAST.__dict__, "device": "cuda"})
    rep = quantize_report(net, plan, x, "brecq", brecq=cfg).details["brecq"]
    assert all(v["rec_after"] <= v["rec_before"] for v in rep.values())
    assert next(net.parameters()).device.type == "cpu"


class _Strided(nn.Module):
    """stem, a residual block, a strided conv, global mean, classifier: inputs of any size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.res = _Res(8)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res(torch.relu(self.stem(x)))
        return self.fc(torch.relu(self.down(x)).mean((2, 3)))


def test_windows_reproduce_the_block_away_from_their_border_and_reconstruction_still_lowers_errors() -> None:
    """``crop``: a block is optimised on windows of its input; the margin is the border a window's zero padding
    spoils (one pixel per 3x3 conv), a block with a global mean gets none, and every block error still falls."""
    from mixq.algorithms.ptq.blocks import float_block
    from mixq.algorithms.ptq.brecq import _crop_geometry

    torch.manual_seed(0)
    net = _Strided().eval()
    names = [s.name for s in capture(net, (3, 16, 16)) if s.is_compute]
    plan = uniform_plan("net", names, FixedPoint(3, narrow=True), FixedPoint(4, signed=False),
                        signed_inputs=names[:1])
    x = torch.randn(64, 3, 16, 16)
    q = quantize_report(net, plan, x, "minmax").model
    blocks = find_blocks(q, max_layers=2)
    assert [b.layers for b in blocks] == [["stem"], ["res.a", "res.b"], ["down", "fc"]]
    xin = x[:4]
    found = []
    for b in blocks:
        with torch.no_grad(), float_block(b, q):
            y = b.module(xin)
        found.append(_crop_geometry(b, q, xin, y, 8))
        xin = y
    assert found == [(1, 1), (1, 2), None]
    cfg = BrecqConfig(**{**FAST.__dict__, "crop": 8})
    rep = quantize_report(net, plan, x, "brecq", brecq=cfg).details["brecq"]
    assert [v["crop"] for v in rep.values()] == [{"stride": 1, "margin": 1}, {"stride": 1, "margin": 2}, None]
    assert all(v["rec_after"] <= v["rec_before"] for v in rep.values())
    # measured: stem 15.79 -> 15.50, res 15.78 -> 15.04 (whole inputs: 15.57, 14.83)
    assert all(v["kept"] == "learned" and v["rec_after"] < 0.99 * v["rec_before"] for v in list(rep.values())[:2])
    with pytest.raises(MixqError, match="brecq.crop"):
        BrecqConfig(crop=-1)


def test_msq_rows_chosen_in_a_block_are_never_worse_than_either_format_alone() -> None:
    """MSQ row choice inside a block, on its output error: measured independently here, the chosen rows give
    a block error no higher than every row in fixed point or every row in SP2 (and than the rows as given);
    the recipe with free rows (``msq_rows="output_auto"``) runs it in every block and records the rows in
    the plan."""
    from mixq.algorithms.ptq.blocks import float_block
    from mixq.algorithms.ptq.brecq import choose_block_rows

    net, plan, x = _setup(FixedPoint(4, narrow=True), SumOfPowers(4), 0.5)
    q = quantize_report(net, plan, x, "minmax", weight_scales="output", msq_rows="output_auto").model
    xin = x[:32]
    checked = 0
    for b in find_blocks(q, max_layers=2):
        with torch.no_grad(), float_block(b, q):
            y = b.module(xin)
        layers = [q.get_submodule(n) for n in b.layers]

        def err(scheme: str | None, layers: list = layers, b: object = b, y: torch.Tensor = y,
                xin: torch.Tensor = xin) -> float:
            if scheme is not None:
                for ly in layers:
                    ly.row_scheme = torch.full_like(ly.row_scheme, 0 if scheme == "fixed" else 1)
            with torch.no_grad():
                return float((b.module(xin) - y).pow(2).flatten(1).sum(1).mean())  # type: ignore[attr-defined]

        given = [ly.row_scheme.clone() for ly in layers]
        rep = choose_block_rows(b, q, [xin], [y], images=32)
        chosen = [ly.row_scheme.clone() for ly in layers]
        e_chosen = err(None)
        e_fixed, e_sp2 = err("fixed"), err("sp2")
        for ly, g in zip(layers, given, strict=True):
            ly.row_scheme = g
        e_given = err(None)
        assert rep is not None and rep["chosen"] == pytest.approx(e_chosen, rel=1e-6)
        assert e_chosen <= min(e_fixed, e_sp2, e_given) + 1e-9, b.layers
        for ly, c in zip(layers, chosen, strict=True):  # the next block sees this block as chosen
            ly.row_scheme = c
        with torch.no_grad():
            xin = b.module(xin)
        checked += 1
    assert checked == 4
    r = quantize_report(net, plan, x, "brecq", brecq=dataclasses.replace(FAST, iterations=50),
                        weight_scales="output", msq_rows="output_auto")
    rep = r.details["brecq"]
    assert all(v["msq_rows"]["chosen"] <= min(v["msq_rows"][k] for k in ("given", "primary", "alt"))
               and v["rec_after"] <= v["rec_before"] for v in rep.values())
    for n, lp in r.plan.items():  # the plan holds the rows the model uses
        m = r.model.get_submodule(n)
        assert tuple(lp.alt_rows or ()) == tuple(torch.nonzero(m.row_scheme == 1).flatten().tolist())


def test_brecq_from_gptq_starts_at_gptqs_rounding_and_fits_the_float_model() -> None:
    net, plan, x = _setup()
    g = quantize_report(net, plan, x, "gptq")
    layers = [n for n, m in g.model.named_modules() if isinstance(m, QConv2d | QLinear)]
    # no learning (one step at a vanishing rate): BRECQ writes back exactly GPTQ's levels
    still = dataclasses.replace(FAST, iterations=1, lr=1e-12, act_lr=1e-12)
    z = quantize_report(net, plan, x, "gptq", brecq=still)
    for n in layers:
        w, wg = z.model.get_submodule(n).weight.detach(), g.model.get_submodule(n).weight.detach()
        torch.testing.assert_close(w, wg, rtol=0, atol=1e-6 * float(wg.abs().max()))  # s · level, float32
    # the first block's starting error is GPTQ's stem against the float model's stem (not against GPTQ's own
    # compensated weights run in float)
    with torch.no_grad():
        stem_q, stem_f = g.model.get_submodule("stem"), net.stem
        xs = x[: FAST.images]
        err = float((stem_q(xs).relu() - stem_f(xs).relu()).pow(2).flatten(1).sum(1).mean())
    assert z.details["brecq"]["stem"]["rec_before"] == pytest.approx(err, rel=1e-4)
    r = quantize_report(net, plan, x, "gptq", brecq=FAST)
    rep = r.details["brecq"]
    assert all(v["rec_after"] <= v["rec_before"] for v in rep.values())
    assert sum(v["rec_after"] for v in rep.values()) < sum(v["rec_before"] for v in rep.values())


@pytest.mark.parametrize("hardness", [0.0, 0.5, 1.0])
def test_start_hardness_moves_the_soft_start_from_the_given_weights_to_their_levels(hardness: float) -> None:
    from mixq.algorithms.ptq.brecq import _Soft

    net, plan, x = _setup()
    q = quantize_report(net, plan, x, "minmax", weight_scales="output").model
    block = find_blocks(q)[1]  # the residual block: two layers
    soft = _Soft(block, q, dataclasses.replace(FAST, start_hardness=hardness))
    for i, ly in enumerate(soft.layers):
        lo, gap = soft.grids[i]
        with torch.no_grad():
            w_soft = lo + soft.h(i) * gap
            w, wq = ly.weight.detach(), ly.quantized_weight().detach()
        on = gap > 0  # clipped weights sit at their level whatever h is
        want = w + hardness * (wq - w)
        torch.testing.assert_close(w_soft[on], want[on], rtol=0, atol=1e-4 * float(w.abs().max()))
    with pytest.raises(MixqError, match="brecq.start_hardness"):
        BrecqConfig(start_hardness=1.5)


def test_fisher_weights_at_the_logits_are_the_softmax_fisher_diagonal() -> None:
    """At the classifier's output the diagonal Fisher of the prediction is exactly p·(1 - p) per logit; the
    sampled estimate (4,000 labels per image) reaches it within about 3% on average, every block's weights have mean 1,
    and an earlier block's weights are spread (not uniform)."""
    from mixq.algorithms.ptq.blocks import fisher_weights, float_block

    net, plan, x = _setup()
    q = quantize_report(net, plan, x, "minmax").model
    blocks = find_blocks(q)
    xs = [x[:8]]
    fw = fisher_weights(blocks, q, xs, samples=4000, seed=1)
    assert [tuple(w[0].shape) for w in fw] == [(8, 8, 8, 8), (8, 8, 8, 8), (8, 512), (8, 10)]
    for per_block in fw:
        assert float(torch.cat([w.flatten() for w in per_block]).mean()) == pytest.approx(1.0, rel=1e-5)
    with contextlib.ExitStack() as stack, torch.no_grad():
        for b in blocks:
            stack.enter_context(float_block(b, q))
        p = torch.softmax(q(xs[0]), dim=1)
    exact = p * (1 - p)
    exact = exact / exact.mean()
    big = exact > 0.2  # relative error of a sampled mean of squares: large only where the value is tiny
    rel = (fw[-1][0] - exact).abs()[big] / exact[big]
    assert float(rel.mean()) < 0.06 and float(rel.max()) < 0.3  # measured over seeds 1-5: 0.028-0.039, 0.10-0.14
    assert float(fw[0][0].std()) > 0.3
    with pytest.raises(MixqError, match="brecq.fisher"):
        BrecqConfig(fisher=1.5)
    with pytest.raises(MixqError, match="brecq.fisher_samples"):
        BrecqConfig(fisher_samples=0)


def test_fisher_weighted_reconstruction_lowers_every_weighted_block_error() -> None:
    """With the Fisher share at 1 each block's (weighted) error still never rises and falls on the blocks that
    matter; the errors differ from the plain ones (the weighting reaches the loss)."""
    net, plan, x = _setup()
    plain = quantize_report(net, plan, x, "brecq", brecq=FAST).details["brecq"]
    rep = quantize_report(net, plan, x, "brecq", brecq=dataclasses.replace(FAST, fisher=1.0)).details["brecq"]
    assert all(v["rec_after"] <= v["rec_before"] for v in rep.values())
    assert all(v["kept"] == "learned" and v["rec_after"] < v["rec_before"] for v in list(rep.values())[:2])
    assert rep["stem"]["rec_before"] != pytest.approx(plain["stem"]["rec_before"], rel=1e-3)


class _MapOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_fisher_needs_logits_and_says_so() -> None:
    net = _MapOut().eval()
    names = [s.name for s in capture(net, (3, 8, 8)) if s.is_compute]
    plan = uniform_plan("net", names, FixedPoint(4, narrow=True), FixedPoint(8, signed=False),
                        signed_inputs=names[:1])
    x = torch.randn(16, 3, 8, 8)
    with pytest.raises(ModelError, match=r"brecq.fisher: needs \(images, classes\) logits"):
        quantize_report(net, plan, x, "brecq", brecq=dataclasses.replace(FAST, images=16, fisher=0.5))


@pytest.mark.parametrize("msq", [False, True], ids=["fixed", "msq"])
def test_learned_row_scales_move_the_grid_and_the_weights_stay_on_it(msq: bool) -> None:
    """``scale_lr``: each row's scale is learned with its rounding; the written-back scales differ from the
    starting ones on the learned blocks, every weight is still its row format's level times its (new) scale —
    the layer's own fake quantizer reproduces it — and no block's error rises."""
    alt = SumOfPowers(4) if msq else None
    net, plan, x = _setup(FixedPoint(4, narrow=True) if msq else None, alt, 0.5 if msq else 0.0)
    kw = {"weight_scales": "output", "msq_rows": "output_auto"} if msq else {}
    cfg = dataclasses.replace(FAST, scale_lr=1e-2)
    q0 = quantize_report(net, plan, x, "minmax", weight_scales="output",
                         **({"msq_rows": "output_auto"} if msq else {})).model
    r = quantize_report(net, plan, x, "brecq", brecq=cfg, **kw)
    rep = r.details["brecq"]
    assert all(v["rec_after"] <= v["rec_before"] for v in rep.values())
    learned = {"stem": ["stem"], "res.a": ["res.a", "res.b"], "c1": ["c1", "c2"], "fc": ["fc"]}
    moved = 0
    for block in (b for b, v in rep.items() if v["kept"] == "learned"):
        for name in learned[block]:
            m, m0 = r.model.get_submodule(name), q0.get_submodule(name)
            w = m.weight.detach()
            assert torch.allclose(m.quantized_weight().detach(), w, rtol=0, atol=1e-5 * float(w.abs().max()))
            moved += int(not torch.allclose(m.w_scales, m0.w_scales, rtol=1e-4))
    assert moved >= 2
    with pytest.raises(MixqError, match="brecq.scale_lr"):
        BrecqConfig(scale_lr=-1.0)
