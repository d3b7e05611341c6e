"""mixq.algorithms.qat: the QAT math, modules, export, checkpoints and errors on a tiny CNN."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from mixq.algorithms.qat import (
    QatAct,
    QatConfig,
    QatConv2d,
    QatError,
    QatLinear,
    cosine_lr,
    dorefa_weight,
    export_plain,
    kd_loss,
    load_result,
    low_bit_plan,
    prepare_qat,
    quantize_gradient,
    read_checkpoint,
    train_qat,
    xnor_weight,
)
from mixq.algorithms.qat.trainer import epoch_order
from mixq.data import load_fmnist_subset, normalize_gray
from mixq.formats import Binary, FixedPoint, parse_format
from mixq.graph.bnfold import fold_bn
from mixq.nn import QAct, QConv2d, QLinear

torch.set_num_threads(1)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fmnist_subset()
    return normalize_gray(x[:256]), torch.as_tensor(y[:256], dtype=torch.int64)


@pytest.fixture(scope="module")
def model(data: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """The tiny CNN, briefly trained so its BN statistics are real."""
    m = tiny().train()
    x, y = data
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for i in range(0, 256, 32):
        loss = nn.functional.cross_entropy(m(x[i : i + 32]), y[i : i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


CFG = QatConfig(epochs=1, batch_size=32, lr=0.02, progress=False, threads=1, calib_images=64)


def w4a4(model: nn.Module, x: torch.Tensor, **kw: object) -> object:
    return low_bit_plan("tiny", model, x[:16], parse_format("fixed4n"), parse_format("ufixed4"), **kw)  # type: ignore[arg-type]


# -- pure functions -------------------------------------------------------------------------------

def test_xnor_weight_is_alpha_sign_with_identity_gradient() -> None:
    w = torch.tensor([[0.5, -0.1, 0.3, 0.0], [-2.0, 1.0, 0.5, -0.5]], requires_grad=True)
    q = xnor_weight(w)
    alpha = w.detach().abs().mean(dim=1, keepdim=True)
    assert torch.equal(q.detach(), torch.where(w.detach() >= 0, alpha, -alpha))
    q.sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.ones_like(w))


def test_dorefa_weight_levels_and_scale() -> None:
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    fmt = FixedPoint(4, narrow=True)
    q, s = dorefa_weight(w, fmt)
    c = w.abs().max()
    units = q / (c / 7)
    assert torch.allclose(units, units.round(), atol=1e-5) and float(units.abs().max()) == pytest.approx(7)
    assert torch.allclose(s, (c / 7).expand_as(s))
    t = torch.tanh(w) / torch.tanh(w).abs().max()
    assert torch.allclose(q, torch.round(t * 7) / 7 * c, atol=1e-6)
    with pytest.raises(QatError, match="signed fixed-point"):
        dorefa_weight(w, parse_format("sp2_4"))


def test_stochastic_gradient_quantization_is_unbiased_and_on_the_grid() -> None:
    g = torch.randn(4, 50, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    qs = torch.stack([quantize_gradient(g, 4, gen) for _ in range(400)])
    m = g.abs().amax(dim=1, keepdim=True)
    units = (qs / (2 * m) + 0.5) * 15
    assert torch.allclose(units, units.round(), atol=1e-4)
    assert torch.allclose(qs.mean(0), g, atol=0.15 * float(m.max()) / 15 * 4)
    again = torch.stack([quantize_gradient(g, 4, torch.Generator().manual_seed(3)) for _ in range(1)])
    assert torch.equal(again[0], qs[0])


def test_kd_loss_and_cosine_schedule() -> None:
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert torch.equal(kd_loss(s, t, y, 0.0, 4.0), nn.functional.cross_entropy(s, y))
    assert float(kd_loss(t, t, y, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert cosine_lr(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 1.0, warmup=10, floor=0.1) == pytest.approx(0.1)


def test_data_order_depends_only_on_seed_and_epoch() -> None:
    assert torch.equal(epoch_order(3, 1, 50), epoch_order(3, 1, 50))
    assert not torch.equal(epoch_order(3, 1, 50), epoch_order(3, 2, 50))
    assert sorted(epoch_order(3, 1, 50).tolist()) == list(range(50))


def test_config_validation_names_the_field() -> None:
    with pytest.raises(QatError, match="QatConfig.lr"):
        QatConfig(lr=0)
    with pytest.raises(QatError, match="QatConfig.bn"):
        QatConfig(bn="keep")
    with pytest.raises(QatError, match="unknown field"):
        QatConfig.from_dict({"epochs": 1, "speed": 2})
    a, b = QatConfig(), QatConfig(progress=False, checkpoint_every=7, lr=0.5)
    assert a.trajectory_diff(b) == ["lr"]


# -- policy and modules -------------------------------------------------------------------------

def test_low_bit_plan_keeps_first_and_last_at_8_bits(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    plan = low_bit_plan("tiny", model, data[0][:8], Binary(), parse_format("ufixed1"))
    assert list(plan) == ["0", "4", "9", "12"]
    assert plan["0"].weight == FixedPoint(8, narrow=True) and plan["0"].act == FixedPoint(8, signed=True)
    assert plan["12"].weight == FixedPoint(8, narrow=True) and plan["12"].act == FixedPoint(8, signed=False)
    assert plan["4"].weight == Binary() and plan["4"].act == FixedPoint(1, signed=False)
    off = low_bit_plan("tiny", model, data[0][:8], Binary(), parse_format("ufixed2"), first_last_bits=None)
    assert off["0"].weight == Binary() and off["0"].act == FixedPoint(2, signed=True)


@pytest.mark.parametrize("bn", ["fold", "train"])
@pytest.mark.parametrize("wq", ["lsq", "ste", "dorefa"])
def test_prepared_model_keeps_the_quantized_attributes_and_exports_exactly(
        model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], bn: str, wq: str) -> None:
    x = data[0]
    cfg = dataclasses.replace(CFG, bn=bn, weight_quant=wq, act_quant="lsq" if wq == "lsq" else "dorefa")
    plan = w4a4(model, x)
    q = prepare_qat(model, plan, x[:64], cfg)
    layers = [m for m in q.modules() if isinstance(m, QatConv2d | QatLinear)]
    assert len(layers) == 4
    for m in layers:
        assert isinstance(m, QConv2d | QLinear) and isinstance(m.input_quant, QatAct)
        assert m.w_scales.shape[:2] == (1, m.weight.shape[0]) and m.row_scheme.shape == (m.weight.shape[0],)
        assert (m.bn is not None) == (bn == "train" and m is not layers[-1])
    if wq == "lsq":
        names = {n for n, _ in q.named_parameters()}
        assert "0.w_log_step" in names and "0.input_quant.log_scale" in names
    # one training step moves the weights, then the plain export computes the same as the QAT model
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    q.train()
    nn.functional.cross_entropy(q(x[:32]), data[1][:32]).backward()
    opt.step()
    q.eval()
    plain = export_plain(q)
    assert not any(isinstance(m, QatConv2d | QatLinear | QatAct) for m in plain.modules())
    assert all(isinstance(m, QAct) and m.mode == "quant" for m in plain.modules() if isinstance(m, QAct))
    with torch.no_grad():
        a, b = q(x[:64]), plain(x[:64])
    if bn == "fold":  # the QAT forward is bit-exactly the plain model's
        assert torch.equal(a, b)
    else:  # BN is folded in float64 at export, in float32 while training
        assert torch.allclose(a, b, atol=2e-2 * float(a.abs().max())), float((a - b).abs().max())
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.95
    # what the engine reads loads into the plain conversion of the float model
    ref = fold_bn(model)
    assert set(plain.state_dict()) >= {k for k in ref.state_dict() if not k.startswith("1.")}


def test_binary_rows_use_xnor_alpha(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = data[0]
    plan = low_bit_plan("tiny", model, x[:8], Binary(), parse_format("ufixed1"))
    q = prepare_qat(model, plan, x[:64], CFG)
    m = q.get_submodule("4")
    assert isinstance(m, QatConv2d)
    assert m.w_log_step is None  # nothing to learn for binary weights
    w = m.quantized_weight().detach()
    alpha = m.weight.detach().abs().mean(dim=(1, 2, 3))
    assert torch.allclose(w.abs().amax(dim=(1, 2, 3)), alpha) and torch.allclose(m.w_scales[0].flatten(), alpha)
    plain = export_plain(q).get_submodule("4")
    assert torch.equal(plain.quantized_weight().detach(), w)


def test_lsq_steps_get_gradients(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    q = prepare_qat(model, w4a4(model, x), x[:64], CFG)
    nn.functional.cross_entropy(q(x[:32]), y[:32]).backward()
    m = q.get_submodule("4")
    assert isinstance(m, QatConv2d) and m.w_log_step is not None and m.w_log_step.grad is not None
    assert float(m.w_log_step.grad.abs().sum()) > 0
    act = m.input_quant
    assert isinstance(act, QatAct) and act.log_scale is not None and act.log_scale.grad is not None


# -- end to end ---------------------------------------------------------------------------------

def test_train_qat_writes_a_run_folder_the_engine_can_read(
        tmp_path: Path, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    cfg = dataclasses.replace(CFG, kd_alpha=0.5, grad_bits=8, checkpoint_every=3)
    res = train_qat(model, w4a4(model, x), (x, y), cfg, tmp_path / "run", val=(x[:128], y[:128]))
    for f in ("plan.json", "model.pt", "result.json", "checkpoint.pt"):
        assert (tmp_path / "run" / f).is_file()
    s = res.summary
    assert s["steps"] == 8 and len(s["history"]) == 1 and s["compression"] > 5
    assert "val_accuracy" in s["history"][0] and s["resumed_from"] is None
    back, plan = load_result(tmp_path / "run", model)
    assert plan.meta["qat"]["steps"] == 8
    with torch.no_grad():
        assert torch.equal(back(x[:64]), res.model(x[:64]))
    # a fresh run into the same folder refuses to clobber the checkpoint
    with pytest.raises(QatError, match="checkpoint exists"):
        train_qat(model, w4a4(model, x), (x, y), cfg, tmp_path / "run")
    # resuming a finished run changes nothing
    again = train_qat(model, w4a4(model, x), (x, y), cfg, tmp_path / "run", resume=True)
    assert again.summary["resumed_from"] == {"epoch": 1, "step": 0, "global_step": 8}
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    # a different trajectory is refused, naming the field
    with pytest.raises(QatError, match=r"different config: lr"):
        train_qat(model, w4a4(model, x), (x, y), dataclasses.replace(cfg, lr=0.5), tmp_path / "run", resume=True)


def test_bad_checkpoints_are_named(tmp_path: Path, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    bad = tmp_path / "r" / "checkpoint.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(QatError, match="checkpoint.pt: not a readable checkpoint"):
        read_checkpoint(bad)
    train_qat(model, w4a4(model, x), (x, y), CFG, tmp_path / "ok")
    other = low_bit_plan("tiny", model, x[:16], parse_format("fixed4n"), parse_format("ufixed4"),
                         weight_alt=parse_format("sp2_4"), alt_ratio=1.0)
    with pytest.raises(QatError, match=r"checkpoint tensor model\.4\.w_log_step has shape \(1, 16"):
        train_qat(model, other, (x, y), CFG, tmp_path / "ok", resume=True)


def test_unassigned_msq_rows_are_refused(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = data[0]
    plan = w4a4(model, x, weight_alt=parse_format("sp2_4"), alt_ratio=0.5)
    with pytest.raises(QatError, match=r"layers\.4\.alt_rows"):
        prepare_qat(model, plan, x[:64], CFG)


def test_msq_rows_train_in_their_own_formats(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
                                             tmp_path: Path) -> None:
    from mixq.algorithms.msq import assign_rows

    x, y = data
    plan = assign_rows(model, w4a4(model, x, weight_alt=parse_format("sp2_4"), alt_ratio=0.5))
    res = train_qat(model, plan, (x, y), CFG, tmp_path / "msq")
    m = res.model.get_submodule("4")
    assert isinstance(m, QConv2d) and len(m.formats) == 2 and int(m.row_scheme.sum()) == 8
    assert m.row_scheme.tolist() == plan["4"].row_scheme(16)


def test_ternary_network_learns_per_row_steps(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
                                              tmp_path: Path) -> None:
    from mixq.formats import Ternary

    x, y = data
    plan = low_bit_plan("tiny", model, x[:8], Ternary(), parse_format("ufixed2"))
    res = train_qat(model, plan, (x, y), CFG, tmp_path / "t")
    m = res.model.get_submodule("4")
    assert isinstance(m, QConv2d) and m.formats == (Ternary(),)
    w = m.quantized_weight().detach()
    s = m.w_scales[0]
    units = w / s
    assert set(units.unique().tolist()) <= {-1.0, 0.0, 1.0} and float((units == 0).float().mean()) > 0.05
    assert res.model.get_submodule("0").formats == (FixedPoint(8, narrow=True),)  # first layer: 8 bits
