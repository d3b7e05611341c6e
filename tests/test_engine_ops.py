"""The integer engine, the hardware-faithful mode and the ONNX exports of padding, zero insertion,
pixel shuffle, nearest / bilinear upsampling, per-channel clamps (CLE's clipped ReLU6), lookup-table
activations (``QLutAct``), unit-dim reshapes and axis permutations.

Every case is a tiny model quantized with the public API (W8A8 per channel), the op between
quantized layers. Claims:

* engine == faithful exactly: equal integer output codes, ``verify`` exact (no differing accumulator or
  input code in any layer), on random batches, saturating batches (every lookup table read at both
  ends), inputs exactly at rounding ties of the first quantizer, and zeros;
* faithful vs the ordinary fake-quant model: the faithful mode rounds like the hardware (dyadic
  multipliers, round half up) where fake quant divides in float32 and rounds half to even, so an
  activation code may move by one step at a near-tie. Asserted (measured in brackets): outputs within
  1 % of the largest output (<= 0.32 %), at most 1 % of any layer's input codes moved (<= 0.6 %),
  each by one step (the U-Net: up to 3 steps where a moved code went through a lookup table and
  two more layers, i.e. propagated, not local, differences);
* QONNX (qonnx's executor) and QDQ (onnxruntime, graph as written, float bias) agree with the
  fake-quant model within the existing export tests' tolerance ``2e-3 * max|y|``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixq import api
from mixq.algorithms.ptq import ClippedReLU
from mixq.algorithms.ptq import quantize as ptq_quantize
from mixq.engine import IntEngine, IntModel, faithful, load_int_model, save_int_model, to_integer, verify
from mixq.engine.convert_ops import linear_weights
from mixq.errors import ModelError
from mixq.export import to_qdq, to_qonnx
from mixq.formats import parse_format
from mixq.graph.convert import to_quantized
from mixq.nn import QLutAct, ZeroInsert
from mixq.plan import LayerPlan

pytest.importorskip("qonnx")
pytest.importorskip("onnxruntime")
from mixq.export.check import run_qdq, run_qonnx  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (3, 8, 8)
FQ_TOL = 0.01  # faithful vs fake quant, relative to the largest output (see the module docstring)
EXPORT_TOL = 2e-3  # as tests/test_export_qonnx.py and tests/test_export_qdq.py


class Between(nn.Module):
    """conv -> ReLU -> ``op`` -> conv (-> ``tail``): the op between two quantized layers."""

    def __init__(self, op: nn.Module | Callable[[torch.Tensor], torch.Tensor], mid: int = 8, out: int = 4,
                 relu: bool = True, tail: nn.Module | None = None) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(SHAPE[0], mid, 3, padding=1)
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.op = op if isinstance(op, nn.Module) else _Fn(op)
        self.c2 = nn.Conv2d(self._channels(mid), out, 3, padding=1)
        self.tail = tail if tail is not None else nn.Identity()

    def _channels(self, mid: int) -> int:
        with torch.no_grad():
            return int(self.op(torch.zeros(1, mid, 8, 8)).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.c2(self.op(self.relu(self.c1(x)))))  # type: ignore[no-any-return]


class _Fn(nn.Module):
    """A module whose forward is a functional op (traced through: the engine sees the function)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def quantize(model: nn.Module, x: torch.Tensor, **layers: LayerPlan) -> nn.Module:
    torch.manual_seed(0)
    plan = api.default_plan("m", model, x)
    for name, lp in layers.items():
        plan = plan.with_layer(name, lp)
    return api.quantize(model.eval(), plan, x, fold=False)


def edge_batches(im: IntModel, shape: tuple[int, ...], seed: int = 1) -> list[torch.Tensor]:
    """Random, saturating (x8), first-quantizer ties (``(k + 1/2) * s``), and zeros with extremes."""
    g = torch.Generator().manual_seed(seed)
    s = float(next(n for n in im.nodes if n.op == "quantize").attrs["act_scale"])
    ties = (torch.randint(-140, 140, (4, *shape), generator=g).float() + 0.5) * s
    extremes = torch.zeros(4, *shape)
    extremes[:, ..., ::3] = 1e3
    extremes[:, ..., 1::3] = -1e3
    return [torch.randn(6, *shape, generator=g), 8 * torch.randn(4, *shape, generator=g), ties, extremes]


def check(q: nn.Module, calib: torch.Tensor, *, exports: bool = True, code_diff: int = 1) -> dict[str, object]:
    """Engine == faithful (codes, every layer), faithful ~ fake quant, exports ~ fake quant; the report."""
    im = to_integer(q, calib)
    engine, fm = IntEngine(im), faithful(q, im)
    grid = torch.from_numpy(np.asarray(im.node(im.output).scale, dtype=np.float64)).unsqueeze(0)
    batches = edge_batches(im, tuple(calib.shape[1:]))
    worst = 0.0
    for x in batches:
        r = engine(x)
        with torch.no_grad():
            y_f, y_q = fm(x), q(x).double()
        assert torch.equal(r.codes, torch.round(y_f / grid).to(torch.int64))
        assert torch.equal(r.real(), y_f)
        worst = max(worst, float((y_f - y_q).abs().max() / y_q.abs().max().clamp(min=1e-12)))
    assert worst <= FQ_TOL, worst
    rep = verify(q, torch.cat(batches))
    assert rep["exact"] and rep["mismatching_outputs"] == 0
    for layer in rep["layers"]:
        assert layer["mismatches"] == 0 and layer["input_mismatches"] == 0, layer
        assert layer["max_code_diff"] <= code_diff and layer["code_flip_rate"] <= 0.01, layer
    if exports:
        x = batches[0]
        with torch.no_grad():
            y = q(x).numpy()
        top = np.abs(y).max()
        y_o = run_qonnx(to_qonnx(im, batch=x.shape[0]), x)
        y_d = run_qdq(to_qdq(im, int_bias=False), x, optimize=False)
        assert y_o.shape == y.shape == y_d.shape
        assert np.abs(y_o - y).max() <= EXPORT_TOL * top
        assert np.abs(y_d - y).max() <= EXPORT_TOL * top
    return {"im": im, "report": rep, "fq_rel": worst}


def ops_of(im: IntModel) -> list[str]:
    return [n.op for n in im.nodes]


@functools.lru_cache(maxsize=1)
def calib() -> torch.Tensor:
    return torch.randn(32, *SHAPE, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- pad / zero insert


@pytest.mark.parametrize("op", [
    nn.ZeroPad2d((1, 2, 0, 3)), nn.ConstantPad2d(1, 0.0), lambda x: F.pad(x, (2, 0, 1, 1)),
    lambda x: F.pad(x, (1, 3), mode="constant", value=0.0)], ids=["ZeroPad2d", "ConstantPad2d", "F.pad4", "F.pad2"])
def test_pad(op: nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> None:
    torch.manual_seed(1)
    out = check(quantize(Between(op), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel) and "pad" in ops_of(im)


def test_nonzero_pad_is_refused() -> None:
    q = quantize(Between(nn.ConstantPad2d(1, 0.5)), calib())
    with pytest.raises(ModelError, match=r"layer 'op' \(ConstantPad2d\): padding mode 'constant' with value 0.5"):
        to_integer(q, calib())


@pytest.mark.parametrize("pads", [(0, 0, 0, 0, 0, 4), (1, 0, 0, 2, 3, 1)], ids=["channels", "channels and space"])
def test_channel_zero_padding(pads: tuple[int, ...]) -> None:
    """A PyramidNet / option-A shortcut's F.pad of the channels: zero channels on the grid of the nearest channel
    (per-channel grids after the per-channel conv c1)."""
    torch.manual_seed(26)
    out = check(quantize(Between(lambda x: F.pad(x, pads), relu=False), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    p = im.node("pad")
    c1 = np.asarray(im.node("c1").scale).reshape(-1)
    assert p.attrs["channel_pads"] == list(pads[4:]) and p.shape[0] == 8 + pads[4] + pads[5]
    grid = np.asarray(p.scale).reshape(p.shape[0], -1)[:, 0]
    assert np.array_equal(grid, np.concatenate([[c1[0]] * pads[4], c1, [c1[-1]] * pads[5]]))


@pytest.mark.parametrize("stride,extra", [((2, 2), (1, 1)), ((2, 3), (0, 2)), ((1, 2), (0, 0))])
def test_zero_insert_is_a_transposed_conv(stride: tuple[int, int], extra: tuple[int, int]) -> None:
    torch.manual_seed(2)
    out = check(quantize(Between(ZeroInsert(stride, extra)), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    zi = next(n for n in im.nodes if n.op == "zero_insert")
    assert zi.shape == (8, 7 * stride[0] + 1 + extra[0], 7 * stride[1] + 1 + extra[1])


# ----------------------------------------------------------------------------- pixel shuffle


def test_pixel_shuffle_moves_per_channel_grids_per_position() -> None:
    """After a per-channel conv the r*r source channels have different grids: the grid moves per position."""
    torch.manual_seed(3)
    out = check(quantize(Between(nn.PixelShuffle(2), mid=16, relu=False), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    ps = next(n for n in im.nodes if n.op == "pixel_shuffle")
    c1 = im.node("c1")
    assert ps.scale.shape == (4, 16, 16)
    src = np.asarray(c1.scale).reshape(4, 2, 2)  # out channel c, pixel (i, j) <- in channel 4c + 2i + j
    assert np.array_equal(ps.scale[:, :2, :2], src) and np.array_equal(ps.scale[:, 2:4, 2:4], src)


def test_pixel_shuffle_of_shared_grids_then_maxpool() -> None:
    torch.manual_seed(4)
    model = Between(lambda x: F.max_pool2d(F.pixel_shuffle(x, 2), 2), mid=16)
    per_tensor = LayerPlan(weight=parse_format("fixed8n"), weight_granularity="tensor", act=parse_format("fixed8"))
    out = check(quantize(model, calib(), c1=per_tensor), calib())
    im = out["im"]
    assert isinstance(im, IntModel) and im.node("pixel_shuffle").scale.ndim == 0
    with pytest.raises(ModelError, match=r"layer 'max_pool2d' \(max_pool2d\): pooling over a grid that "
                                         "varies in space"):
        to_integer(quantize(model, calib()), calib())


# ----------------------------------------------------------------------------- upsampling


@pytest.mark.parametrize("op", [
    nn.Upsample(scale_factor=2), nn.UpsamplingNearest2d(scale_factor=3),
    lambda x: F.interpolate(x, scale_factor=(2, 3), mode="nearest"),
    lambda x: F.interpolate(x, size=(16, 24), mode="nearest-exact"),
], ids=["Upsample", "UpsamplingNearest2d", "F.interpolate-scale", "F.interpolate-size"])
def test_nearest_upsample(op: nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> None:
    torch.manual_seed(5)
    out = check(quantize(Between(op), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel) and "upsample" in ops_of(im)


def test_nearest_upsample_moves_a_per_position_grid() -> None:
    torch.manual_seed(6)
    out = check(quantize(Between(lambda x: F.interpolate(F.pixel_shuffle(x, 2), scale_factor=2), mid=16,
                                 relu=False), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel) and im.node("interpolate").scale.shape == (4, 32, 32)


@pytest.mark.parametrize("op,denom", [
    (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), [4, 4]),
    (nn.UpsamplingBilinear2d(scale_factor=2), [15, 15]),
    (lambda x: F.interpolate(x, size=(13, 11), mode="bilinear", align_corners=True), [12, 10]),
    (lambda x: F.interpolate(x, size=(14, 9), mode="bilinear", align_corners=False), [14, 18]),
], ids=["x2", "x2-align_corners", "size-align_corners", "size"])
def test_bilinear_is_exact_on_a_finer_grid(op: nn.Module | Callable[[torch.Tensor], torch.Tensor],
                                          denom: list[int]) -> None:
    torch.manual_seed(7)
    out = check(quantize(Between(op), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    node = next(n for n in im.nodes if n.op == "interp")
    assert node.attrs["denom"] == denom
    src = im.node(node.inputs[0])
    assert np.allclose(node.scale * denom[0] * denom[1], src.scale, rtol=1e-15)
    assert node.bound == src.bound * denom[0] * denom[1]


def test_bilinear_weights_match_torch() -> None:
    w, d = linear_weights(4, 8, False, 2.0)
    assert d == 4 and w.sum(1).tolist() == [4] * 8
    assert w.tolist()[:3] == [[4, 0, 0, 0], [3, 1, 0, 0], [1, 3, 0, 0]] and w.tolist()[-1] == [0, 0, 0, 4]
    for n_in, n_out, ac, sf in [(5, 10, False, 2.0), (5, 15, False, 3.0), (4, 7, True, None), (6, 9, False, None)]:
        w, d = linear_weights(n_in, n_out, ac, sf)
        eye = torch.eye(n_in, dtype=torch.float64).reshape(1, 1, n_in, n_in)
        kw = {"scale_factor": (sf, 1.0)} if sf else {"size": (n_out, n_in)}
        ref = F.interpolate(eye, mode="bilinear", align_corners=ac, **kw)[0, 0]
        assert torch.allclose(ref, torch.from_numpy(w / d), atol=1e-12, rtol=0)


@pytest.mark.parametrize("op,match", [
    (lambda x: F.interpolate(x, scale_factor=1.7, mode="bilinear"), "weights on a grid of 1/"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"), "interpolation mode 'bicubic'"),
    (lambda x: F.interpolate(x, size=(12, 12)), r"nearest upsampling 8x8 -> 12x12"),
])
def test_inexact_upsampling_is_refused(op: Callable[[torch.Tensor], torch.Tensor], match: str) -> None:
    with pytest.raises(ModelError, match=r"layer 'interpolate' \(interpolate\): .*" + match):
        to_integer(quantize(Between(op), calib()), calib())


# ----------------------------------------------------------------------------- per-channel clamp


def test_clipped_relu_per_channel_bounds() -> None:
    torch.manual_seed(8)
    q = quantize(Between(nn.Identity(), relu=False), calib())
    q.relu = ClippedReLU(torch.linspace(0.05, 0.6, 8))  # type: ignore[assignment]
    out = check(q, calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    clamp = im.node("relu")
    assert clamp.op == "clamp" and clamp.arrays["hi"].shape == (8, 1, 1) and clamp.attrs["hi_real"] is None
    assert np.array_equal(clamp.arrays["hi_float"].reshape(-1), torch.linspace(0.05, 0.6, 8).numpy())


class _NotAClamp(nn.Hardtanh):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 0.5


def test_hardtanh_subclass_with_another_forward_is_refused() -> None:
    q = quantize(Between(nn.Identity(), relu=False), calib())
    q.relu = _NotAClamp(0.0, 1.0)  # type: ignore[assignment]
    with pytest.raises(ModelError, match=r"layer 'relu' \(_NotAClamp\): a Hardtanh subclass whose forward is not"):
        to_integer(q, calib())


class MobileBlock(nn.Module):
    """conv-BN-ReLU6 -> depthwise-BN-ReLU6 -> 1x1 -> pool -> linear: what DFQ's CLE equalizes."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                               nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                               nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)  # type: ignore[no-any-return]


def test_dfq_recipe_clipped_relu_verifies() -> None:
    """``--recipe dfq`` replaces ReLU6 by CLE's per-channel ClippedReLU; the engine verifies it exactly."""
    torch.manual_seed(9)
    m = MobileBlock().eval()
    x = calib()
    q = ptq_quantize(m, api.default_plan("m", m, x), x, recipe="dfq", input_shape=SHAPE)
    clipped = [n for n, mod in q.named_modules() if isinstance(mod, ClippedReLU)]
    assert clipped == ["f.2", "f.5"]
    out = check(q, x)
    im = out["im"]
    assert isinstance(im, IntModel) and all(im.node(n).arrays["hi"].shape == (16, 1, 1) for n in clipped)


# ----------------------------------------------------------------------------- lookup tables

LUTS = [nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(), nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.GELU("tanh"),
        nn.ELU(0.5), nn.LeakyReLU(0.2), nn.Mish()]


@pytest.mark.parametrize("act", LUTS, ids=[f"{type(a).__name__}{i}" for i, a in enumerate(LUTS)])
def test_lut_activation(act: nn.Module) -> None:
    torch.manual_seed(10)
    q = quantize(Between(act, relu=False), calib())
    assert q.mixq_lut_activations == ("op",) and isinstance(q.op, QLutAct)
    out = check(q, calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    lut = im.node("op")
    assert lut.op == "lut" and ops_of(im)[ops_of(im).index("lut") - 1] == "requant"
    assert lut.arrays["table"].shape == (256,) and lut.bound <= 2**15 - 1
    codes, s_out = q.op.table()
    assert np.array_equal(lut.arrays["table"], codes.numpy()) and lut.attrs["act_scale"] == float(s_out)
    # the saturating batch reads both ends of the table
    r = IntEngine(im)(edge_batches(im, SHAPE)[1], keep={lut.inputs[0]})
    assert int(r.values[lut.inputs[0]].min()) == -128 and int(r.values[lut.inputs[0]].max()) == 127


def test_lut_table_is_the_fake_quant_model() -> None:
    """The fake-quant forward of a QLutAct equals its table, element for element (the claim of QLutAct)."""
    q = quantize(Between(nn.GELU(), relu=False), calib())
    lut: QLutAct = q.op  # type: ignore[assignment]
    x = 3 * torch.randn(64, 8, 8, 8)
    codes, s_out = lut.table()
    in_codes = lut.in_fmt.quantize(x, lut.input_quant.scale)
    with torch.no_grad():
        y = lut(x)
    assert torch.equal(y, codes[in_codes - lut.in_fmt.qmin].float() * s_out)


def test_sigmoid_head_is_the_output() -> None:
    torch.manual_seed(11)
    q = quantize(Between(nn.Identity(), tail=nn.Sigmoid()), calib())
    out = check(q, calib())
    im = out["im"]
    assert isinstance(im, IntModel) and im.output == "tail" and im.node("tail").op == "lut"


def test_lut_trains_through_ste() -> None:
    q = quantize(Between(nn.SiLU(), relu=False), calib())
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    x, target = calib()[:16], torch.zeros(16, 4, 8, 8)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.mse_loss(q(x), target)
        loss.backward()
        losses.append(float(loss.detach()))
        opt.step()
    c1 = q.get_submodule("c1")
    assert isinstance(c1, nn.Conv2d)
    grad = c1.weight.grad
    assert grad is not None and int(torch.count_nonzero(grad)) > 0
    assert losses[-1] < losses[0]


def test_lut_wrapping_follows_the_plan() -> None:
    m = Between(nn.Hardswish(), relu=False).eval()
    plan = api.default_plan("m", m, calib())
    q = to_quantized(m, plan)
    assert isinstance(q.op, QLutAct) and q.op.in_fmt.bits == 8 and q.op.in_fmt.signed
    assert isinstance(m.op, nn.Hardswish)  # the input model is not changed
    no_act = plan.with_layer("c1", LayerPlan(weight=parse_format("fixed8n"))).with_layer(
        "c2", LayerPlan(weight=parse_format("fixed8n")))
    assert isinstance(to_quantized(m, no_act).op, nn.Hardswish)


def test_functional_activation_becomes_a_lookup_table() -> None:
    """``F.silu(x)`` is made a module by the front end (graph.normalize), so it is tabulated like nn.SiLU."""
    q = quantize(Between(F.silu, relu=False), calib())
    im = to_integer(q, calib())
    assert [n.name for n in im.nodes if n.op == "lut"] == ["silu_act"]


# ----------------------------------------------------------------------------- unit-dim shape ops


class Conv1dAs2d(nn.Module):
    """Conv1d written as unsqueeze(2) -> Conv2d(1 x k) -> squeeze(2), on a (C, L) input."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, (1, 3), padding=(0, 1))
        self.c2 = nn.Conv2d(8, 8, (1, 3))
        self.fc = nn.Linear(8 * 14, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x.unsqueeze(2))).squeeze(2)  # (N, 8, L)
        y = torch.unsqueeze(y, 2)
        y = self.c2(y.view(y.size(0), 8, 1, 16)).squeeze(2)
        return self.fc(torch.flatten(y, 1))  # type: ignore[no-any-return]


def test_unit_dim_shape_ops_and_the_float_input() -> None:
    torch.manual_seed(12)
    x = torch.randn(32, 3, 16)
    out = check(quantize(Conv1dAs2d().eval(), x), x)
    im = out["im"]
    assert isinstance(im, IntModel) and im.input_shape == (3, 16)
    assert im.nodes[0].op == "quantize" and im.nodes[0].shape == (3, 1, 16)
    sq = next(n for n in im.nodes if n.op == "reshape")
    assert sq.shape == (8, 16) and sq.scale.shape == (8, 1)


def test_squeeze_without_dim_is_refused() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, (1, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x.unsqueeze(2)).squeeze()  # type: ignore[no-any-return]

    x = torch.randn(8, 3, 16)
    with pytest.raises(ModelError, match=r"layer 'squeeze' \(Tensor.squeeze\): squeeze without a dim"):
        to_integer(quantize(M().eval(), x), x)


# ----------------------------------------------------------------------------- axis permutation


class PitchNet(nn.Module):
    """CREPE's shape: raw (N, L) samples -> x[:, None, :, None] -> (k, 1) convs over time -> permute(0, 2, 1, 3)
    (time before channels) -> flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, (8, 1), stride=(2, 1), padding=(3, 0))
        self.c2 = nn.Conv2d(8, 6, (4, 1), stride=(2, 1), padding=(1, 0))
        self.fc = nn.Linear(6 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(torch.relu(self.c1(x[:, None, :, None])))
        return self.fc(y.permute(0, 2, 1, 3).reshape(x.shape[0], -1))  # type: ignore[no-any-return]


def test_permute_of_per_channel_grids_before_a_linear() -> None:
    """The last conv's per-channel grids become one grid per position after the permute and the flatten."""
    torch.manual_seed(21)
    x = torch.randn(32, 32)
    out = check(quantize(PitchNet().eval(), x), x)
    im = out["im"]
    assert isinstance(im, IntModel) and im.input_shape == (32,)
    t = im.node("permute")
    assert t.op == "transpose" and t.attrs["perm"] == [1, 0, 2] and t.shape == (8, 6, 1)
    c2 = np.asarray(im.node("c2").scale).reshape(6)
    assert t.scale.shape == (8, 6, 1) and all(np.array_equal(t.scale[i, :, 0], c2) for i in range(8))


@pytest.mark.parametrize("op", [lambda x: x.transpose(1, 2), lambda x: torch.transpose(x, -1, -2),
                                lambda x: x.permute(0, 3, 2, 1), lambda x: torch.permute(x, (0, 2, 1, 3)),
                                lambda x: x.swapaxes(2, 3)],
                         ids=["Tensor.transpose", "torch.transpose", "Tensor.permute", "torch.permute", "swapaxes"])
def test_permutes_between_convs(op: Callable[[torch.Tensor], torch.Tensor]) -> None:
    torch.manual_seed(22)
    out = check(quantize(Between(op, relu=False), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel) and "transpose" in ops_of(im)


def test_permute_of_unit_dims_only_is_no_node() -> None:
    torch.manual_seed(23)
    x = torch.randn(16, 3, 12)
    model = Between(lambda y: y.permute(0, 1, 3, 2), relu=False)
    model.c1, model.c2 = nn.Conv2d(3, 8, (1, 3), padding=(0, 1)), nn.Conv2d(8, 4, (3, 1), padding=(1, 0))
    q = quantize(model.eval(), x[:, :, None, :])
    im = check(q, x[:, :, None, :])["im"]
    assert isinstance(im, IntModel) and "transpose" not in ops_of(im)


def test_permute_of_the_batch_axis_is_refused() -> None:
    x = torch.randn(8, *SHAPE)  # batch 8 == W, so the swapped tensor still fits c2
    model = Between(lambda y: y.transpose(0, 3), relu=False)
    with pytest.raises(ModelError, match=r"layer 'transpose' \(Tensor.transpose\): Tensor.transpose moves the "
                                         r"batch axis \(dims \[3, 1, 2, 0\]\)"):
        to_integer(quantize(model.eval(), x), x)


# ----------------------------------------------------------------------------- torch.clamp, division by a number


@pytest.mark.parametrize("op", [lambda x: torch.clamp(x, min=0.0, max=1.0), lambda x: x.clamp(max=0.5),
                                lambda x: torch.clip(x, -0.25, 2), lambda x: F.relu(x) / 6.0,
                                lambda x: x.clamp(0, 6).div(6) * 2],
                         ids=["torch.clamp", "Tensor.clamp max", "torch.clip", "truediv", "clamp div mul"])
def test_clamp_and_division_by_a_number(op: Callable[[torch.Tensor], torch.Tensor]) -> None:
    torch.manual_seed(25)
    out = check(quantize(Between(op, relu=False), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel) and {"clamp", "mul"} & set(ops_of(im))


@pytest.mark.parametrize("op", [lambda x: F.relu6(x + 3.0) / 6.0, lambda x: 0.5 + x, lambda x: torch.add(x, -1)],
                         ids=["hard sigmoid", "number + tensor", "torch.add"])
def test_sum_with_a_number_is_an_affine_map(op: Callable[[torch.Tensor], torch.Tensor]) -> None:
    torch.manual_seed(27)
    out = check(quantize(Between(op, relu=False), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    (a,) = [n for n in im.nodes if n.op == "affine"]
    assert a.attrs["float_op"] == "add_const" and np.all(np.asarray(a.arrays["scale_float"]) == 1)


def test_wide_products_round_their_operands() -> None:
    """x * x * x of an accumulator-domain map (before: 'beyond the engine's int64'): each product's operands are
    rounded half up to fewer bits first so that it fits 48 bits; engine == faithful exactly."""
    torch.manual_seed(28)
    out = check(quantize(Between(lambda x: (x * x) * x, mid=16, relu=False), calib()), calib(), code_diff=2)
    im = out["im"]
    assert isinstance(im, IntModel)
    first, second = (n for n in im.nodes if n.op == "mul")
    for m in (first, second):
        assert sum(m.attrs["shifts"]) > 0 and m.bound < 2**47, m.attrs


@pytest.mark.parametrize("op", [lambda x: F.avg_pool2d((x * x) * x, 2),
                                lambda x: x * torch.mean((x * x) * x, dim=(2, 3), keepdim=True)],
                         ids=["avg pool", "squeeze-excite mean"])
def test_pools_of_wide_products_round_their_input(op: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """An average pool of a 48-bit product (EfficientNet's swish written as x * sigmoid(x), pooled by its SE; before:
    'requantizing its input needs more than 62 bits'): the pool rounds its input half up to fewer bits first so
    that its window sums fit pool_bits (48); engine == faithful exactly."""
    torch.manual_seed(31)
    out = check(quantize(Between(op, mid=16, relu=False), calib()), calib(), code_diff=2)
    im = out["im"]
    assert isinstance(im, IntModel)
    (pool,) = [n for n in im.nodes if n.op == "sumpool"]
    wide = im.node(pool.inputs[0]).bound
    assert pool.attrs["shift"] > 0 and wide * pool.attrs["count"] >= 2**48 > pool.bound, (pool.attrs, wide)


@pytest.mark.parametrize("pool, edge", [
    (nn.AvgPool2d(3, 2, ceil_mode=True), [[9, 9, 9, 6], [9, 9, 9, 6], [9, 9, 9, 6], [6, 6, 6, 4]]),
    (nn.AvgPool2d(3, 1, padding=1, count_include_pad=False), None),
    (nn.AvgPool2d(2, ceil_mode=True, padding=1, count_include_pad=False), None),
    (nn.AvgPool2d(2, ceil_mode=True), None)],
    ids=["ceil mode", "padding without count_include_pad", "both", "ceil mode, no overhang"])
def test_average_pool_with_a_varying_divisor(pool: nn.AvgPool2d, edge: list[list[int]] | None) -> None:
    """ceil mode and padding without count_include_pad (PyramidNet's and ResNet-D's shortcut, TF-style pools;
    before: refused as 'a varying divisor'): the window sum on a grid that varies by output pixel, the divisor
    torch uses there; engine == faithful exactly, both exports within tolerance."""
    torch.manual_seed(33)
    im = check(quantize(Between(pool), calib()), calib())["im"]
    assert isinstance(im, IntModel)
    (node,) = [n for n in im.nodes if n.op == "sumpool"]
    ones = torch.ones(1, 1, *SHAPE[1:], dtype=torch.float64)
    torch_div = F.avg_pool2d(ones, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,  # type: ignore[arg-type]
                             divisor_override=1) / pool(ones)
    if pool.ceil_mode and not pool.padding and bool(torch.all(torch_div == torch_div.flatten()[0])):
        assert "divisors" not in node.attrs and np.asarray(node.scale).size in (1, node.shape[0])
        return
    assert np.array_equal(np.asarray(node.attrs["divisors"]), torch_div[0, 0].numpy())
    if edge is not None:
        assert node.attrs["divisors"] == edge
    g = np.asarray(node.scale) * np.asarray(node.attrs["divisors"])  # the input's grid at every output pixel
    assert np.asarray(node.scale).shape[-2:] == tuple(node.shape[-2:])
    assert np.allclose(g, np.asarray(im.node(node.inputs[0]).scale).reshape(-1, 1, 1) * np.ones_like(g), rtol=1e-15)


def test_rounding_pool_under_a_small_sum_budget() -> None:
    """pool_bits=16 makes a pool of conv accumulators round its input: engine == faithful on every output; the single
    engine refuses it by name; the network RTL's gather stage rounds each tap the same way (simulated in
    tests/test_rtl_network.py)."""
    from mixq.engine.program import lower
    from mixq.rtl.netgraph import lower_graph

    torch.manual_seed(32)
    x = calib()
    q = quantize(Between(nn.AvgPool2d(2), relu=False), x)
    im = to_integer(q, x, pool_bits=16)
    (pool,) = [n for n in im.nodes if n.op == "sumpool"]
    assert pool.attrs["shift"] > 0 and pool.bound < 2**15, pool.attrs
    fm = faithful(q, im)
    grid = torch.from_numpy(np.asarray(im.node(im.output).scale, dtype=np.float64)).unsqueeze(0)
    for b in edge_batches(im, SHAPE):
        with torch.no_grad():
            assert torch.equal(IntEngine(im)(b).codes, torch.round(fm(b) / grid).to(torch.int64))
    with pytest.raises(ModelError, match=rf"int model node {pool.name!r} \(op 'sumpool'\): an average pool that "
                                         r"rounds its input to fewer bits first \(shift\) has no conv form"):
        lower(im)
    (gs,) = [s for s in lower_graph(im, IntEngine(im)(x[:1], keep=True).values).nodes if s.name == pool.name]
    assert gs.op == "sum" and gs.shift == pool.attrs["shift"]


def test_square_reads_one_node_twice() -> None:
    """x * x: the engine frees a node after its last reader once, not once per operand (before: KeyError)."""
    torch.manual_seed(30)
    out = check(quantize(Between(lambda x: x * x, mid=16, relu=False), calib()), calib(), code_diff=2)
    im = out["im"]
    assert isinstance(im, IntModel) and im.node("mul").inputs == ("c1", "c1")


def test_division_by_a_tensor_is_refused() -> None:
    model = Between(lambda y: y / torch.relu(y), relu=False)
    with pytest.raises(ModelError, match=r"layer 'truediv' \(truediv\): a division of .* by relu_1; the engine "
                                         r"divides a tensor by a python number other than 0"):
        to_integer(quantize(model.eval(), calib()), calib())


# ----------------------------------------------------------------------------- channel split and shuffle


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's basic unit: the channels split in two (``chunk``), one half through 1x1 / depthwise 3x3 / 1x1,
    concatenated with the other half, then the channel shuffle (view to (g, C / g, H, W), transpose, view back);
    a head reads ``x[:, 2:6]`` and ``narrow``."""

    def __init__(self, split: str = "chunk") -> None:
        super().__init__()
        self.split = split
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pw1, self.dw, self.pw2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 4, 3, padding=1)
        self.tail = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        a, b = torch.chunk(y, 2, dim=1) if self.split == "chunk" else y.split(4, 1)
        b = torch.relu(self.pw2(self.dw(torch.relu(self.pw1(b)))))
        y = torch.cat((a, b), dim=1)
        n, c, h, w = y.size()
        y = torch.transpose(y.view(n, 2, c // 2, h, w), 1, 2).contiguous().view(n, c, h, w)
        return self.head(y[:, 2:6]) + self.tail(y.narrow(1, 5, 3))  # type: ignore[no-any-return]


@pytest.mark.parametrize("split", ["chunk", "Tensor.split"])
def test_channel_split_and_shuffle(split: str) -> None:
    torch.manual_seed(24)
    out = check(quantize(ShuffleUnit(split).eval(), calib()), calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    ops = ops_of(im)
    assert ops.count("slice") == 4 and "transpose" in ops and ops.count("reshape") == 2
    (t,) = [n for n in im.nodes if n.op == "transpose"]
    assert t.shape == (4, 2, 8, 8) and t.attrs["perm"] == [1, 0, 2, 3]
    head = next(n for n in im.nodes if n.op == "slice" and n.attrs["start"] == 2)
    assert head.attrs == {"dim": 0, "start": 2, "stop": 6} and head.shape == (4, 8, 8)


@pytest.mark.parametrize("op, cuts", [
    (lambda y: F.pad(y[:, :, :-1, :-1], (1, 0, 1, 0)), [(1, 0, 7), (2, 0, 7)]),
    (lambda y: y[:, 2:6, 1:, :5], [(0, 2, 6), (1, 1, 8), (2, 0, 5)]),
    (lambda y: y[:, :, 3:4], [(1, 3, 4)])], ids=["shake-shake shortcut", "three dims", "one row"])
def test_slice_of_several_dims(op: Callable[[torch.Tensor], torch.Tensor], cuts: list[tuple[int, int, int]]) -> None:
    """x[:, :, :-1, :-1] (Shake-Shake's shortcut; before: refused): one slice node per dim cut, the last named as
    the layer; engine == faithful exactly, both exports."""
    torch.manual_seed(34)
    im = check(quantize(Between(op), calib()), calib())["im"]
    assert isinstance(im, IntModel)
    slices = [n for n in im.nodes if n.op == "slice"]
    assert [(n.attrs["dim"], n.attrs["start"], n.attrs["stop"]) for n in slices] == cuts
    assert slices[-1].name == "getitem" and [n.inputs[0] for n in slices[1:]] == [n.name for n in slices[:-1]]


class MixConv(nn.Module):
    """MixNet's mixed depthwise conv: the channels split into a list of sizes, each part through its own kernel
    size, iterated with zip (before: 'torch.fx cannot trace ... Proxy object cannot be iterated')."""

    def __init__(self, sizes: tuple[int, ...] = (3, 3, 2)) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 2 * i + 3, padding=i + 1, groups=c) for i, c in enumerate(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.sizes, dim=1)
        return torch.cat([conv(p) for p, conv in zip(parts, self.convs, strict=True)], dim=1)


def test_split_into_sizes_is_iterable() -> None:
    torch.manual_seed(35)
    im = check(quantize(Between(MixConv()), calib()), calib())["im"]
    assert isinstance(im, IntModel)
    slices = [n for n in im.nodes if n.op == "slice"]
    assert [(n.attrs["start"], n.attrs["stop"]) for n in slices] == [(0, 3), (3, 6), (6, 8)]
    assert sum(n.op == "conv" for n in im.nodes) == 5


class Select(nn.Module):
    """CondenseNet's input selection: ``index_select`` of the channels by a constant index buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("index", torch.tensor([5, 0, 0, 7, 2, 3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, dim=1, index=self.index) + x.index_select(1, self.index)  # type: ignore[arg-type]


def test_index_select_by_a_constant_index() -> None:
    """Before: 'layer _tensor_constant (tensor constant): not supported by the integer engine'."""
    torch.manual_seed(36)
    im = check(quantize(Between(Select()), calib()), calib())["im"]
    assert isinstance(im, IntModel)
    gathers = [n for n in im.nodes if n.op == "gather"]
    assert len(gathers) == 2 and all(n.attrs == {"dim": 0, "index": [5, 0, 0, 7, 2, 3]} for n in gathers)
    sel = Select()  # an index computed while tracing (a closure's tensor): a constant too
    im2 = check(quantize(Between(lambda y: y.index_select(1, sel.index // 2), relu=False), calib()), calib())["im"]
    assert isinstance(im2, IntModel)
    assert [n.attrs["index"] for n in im2.nodes if n.op == "gather"] == [[2, 0, 0, 3, 1, 1]]


def test_slice_of_the_batch_dim_is_refused() -> None:
    model = Between(lambda y: y[1:], relu=False)
    x = torch.randn(8, *SHAPE)
    with pytest.raises(ModelError, match=r"layer 'getitem' \(function getitem\): not supported by the integer "
                                         r"engine \(indexing: it takes x\[:, None\] and contiguous ranges"):
        to_integer(quantize(model.eval(), x), x)


# ----------------------------------------------------------------------------- a U-Net block


class UNetBlock(nn.Module):
    """Encoder conv, max-pool, bottleneck, transposed conv as ZeroInsert + conv, concat skip, nearest and
    bilinear upsampling, pixel shuffle, sigmoid head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.zi = ZeroInsert((2, 2), (1, 1))
        self.up = nn.Conv2d(16, 8, 3, padding=1)  # ConvTranspose2d(16, 8, 3, 2, 1, 1) as a conv
        self.dec = nn.Conv2d(16, 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.bil = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head = nn.Conv2d(4, 1, 1)
        self.out = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.relu(self.enc(x))
        y = self.act(self.mid(self.pool(skip)))
        y = F.relu(self.up(self.zi(y)))
        y = torch.cat([y, skip], 1)
        y = F.interpolate(self.dec(y), scale_factor=2, mode="nearest")  # (16, 32, 32)
        y = self.bil(F.max_pool2d(F.relu(y), 2))  # (16, 32, 32)
        y = self.shuffle(y)  # (4, 64, 64): channels on different grids, moved per position
        return self.out(self.head(y))  # type: ignore[no-any-return]


def test_unet_block_end_to_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(13)
    x = torch.randn(16, 3, 16, 16)
    q = quantize(UNetBlock().eval(), x)
    assert q.mixq_lut_activations == ("act", "out")
    out = check(q, x, code_diff=4)
    im = out["im"]
    assert isinstance(im, IntModel)
    assert {"zero_insert", "cat", "upsample", "interp", "pixel_shuffle", "lut", "maxpool"} <= set(ops_of(im))
    import onnx

    for proto in (to_qonnx(im), to_qdq(im)):
        onnx.checker.check_model(proto)
    back = load_int_model(save_int_model(im, tmp_path / "unet.json"))
    xb = edge_batches(im, (3, 16, 16))[1]
    assert torch.equal(IntEngine(back)(xb).codes, IntEngine(im)(xb).codes)


# ----------------------------------------------------------------------------- channel reductions and products


class AttentionGate(nn.Module):
    """A spatial attention gate (a published pupil-segmentation U-Net's): the channel mean and max, a 7x7 conv,
    a sigmoid, the features times the gate broadcast over the channels."""

    def __init__(self, mean: Callable[[torch.Tensor], torch.Tensor], amax: Callable[[torch.Tensor], torch.Tensor],
                 mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.mean, self.amax, self.mul = mean, amax, mul
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.sig = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.sig(self.conv(torch.cat([self.mean(x), self.amax(x)], 1)))
        return self.mul(x, g)


GATES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor],
                       Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    # as ONNX ReduceMean / ReduceMax / Mul import (mixq.zoo.onnx_ops)
    "onnx": (lambda x: torch.mean(x, dim=(1,), keepdim=True), lambda x: torch.amax(x, dim=(1,), keepdim=True),
             lambda a, b: a * b),
    "methods": (lambda x: x.mean(1, keepdim=True), lambda x: x.amax(dim=1, keepdim=True), lambda a, b: a.mul(b)),
    "no-keepdim": (lambda x: x.mean(1).unsqueeze(1), lambda x: torch.amax(x, 1).unsqueeze(1), torch.mul),
}


def int_semantics(im: IntModel, x: torch.Tensor) -> dict[str, int]:
    """Every ``reduce`` and ``mul`` node against its definition on the engine's own integers: the reduction of
    ``x_c * M_c`` then ``(r + 2**(n-1)) >> n``, the product of the codes, and the grids."""
    r = IntEngine(im)(x, keep=True)
    seen = {"reduce": 0, "mul": 0}
    for n in im.nodes:
        if n.op not in seen:
            continue
        seen[n.op] += 1
        ins = [r.values[i] for i in n.inputs]
        srcs = [im.node(i) for i in n.inputs]
        if n.op == "reduce":
            shift = int(n.arrays["n"])
            p = ins[0] * torch.from_numpy(np.asarray(n.arrays["M"], dtype=np.int64))
            keep = bool(n.attrs["keepdim"])
            red = p.sum(1, keepdim=keep) if n.attrs["fn"] == "sum" else p.amax(1, keepdim=keep)
            ref = (red + (1 << shift >> 1)) >> shift
            g = np.asarray(srcs[0].scale).reshape(-1)
            common = float(np.asarray(n.scale)) * (n.attrs["count"] if n.attrs["fn"] == "sum" else 1)
            assert np.allclose(g / common, np.asarray(n.arrays["M"]).reshape(-1) * 2.0**-shift, rtol=2**-14)
        elif n.attrs["const"] is None:
            ref = ins[0] * ins[1]
            assert np.array_equal(np.broadcast_to(n.scale, n.shape),
                                  np.broadcast_to(np.asarray(srcs[0].scale) * np.asarray(srcs[1].scale), n.shape))
        else:
            ref = ins[0] * int(n.attrs["sign"])
            assert np.array_equal(n.scale, np.asarray(srcs[0].scale) * abs(n.attrs["const"]))
        assert torch.equal(r.values[n.name], ref), n.name
        assert int(r.values[n.name].abs().max()) <= n.bound
    return seen


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "signed"])
@pytest.mark.parametrize("form", list(GATES))
def test_attention_gate_channel_mean_max_and_product(form: str, relu: bool) -> None:
    torch.manual_seed(14)
    q = quantize(Between(AttentionGate(*GATES[form]), relu=relu), calib())
    out = check(q, calib())
    im = out["im"]
    assert isinstance(im, IntModel)
    assert int_semantics(im, edge_batches(im, SHAPE)[1]) == {"reduce": 2, "mul": 1}
    means = [n for n in im.nodes if n.op == "reduce" and n.attrs["fn"] == "sum"]
    maxes = [n for n in im.nodes if n.op == "reduce" and n.attrs["fn"] == "max"]
    assert len(means) == len(maxes) == 1
    # per-channel weights: the channels are on different grids, brought onto one 8 bits finer than the coarsest
    src = im.node(means[0].inputs[0])
    assert src.scale.shape == (8, 1, 1) and len(np.unique(src.scale)) == 8
    assert float(maxes[0].scale) == float(means[0].scale) * 8 == np.ldexp(src.scale.max(), -8)
    mul = next(n for n in im.nodes if n.op == "mul")
    assert mul.shape == (8, 8, 8) and mul.scale.shape == (8, 1, 1)
    assert mul.bound == src.bound * im.node(mul.inputs[1]).bound


def test_channel_reductions_on_one_grid_are_the_codes_max_and_sum() -> None:
    """Per-tensor weights: one grid for every channel, no rescaling — the max of the codes, their sum on grid / C."""
    torch.manual_seed(15)
    per_tensor = LayerPlan(weight=parse_format("fixed8n"), weight_granularity="tensor", act=parse_format("fixed8"))
    q = quantize(Between(AttentionGate(*GATES["onnx"])), calib(), c1=per_tensor)
    im = check(q, calib())["im"]
    assert isinstance(im, IntModel)
    red = [n for n in im.nodes if n.op == "reduce"]
    assert all(int(n.arrays["n"]) == 0 and set(n.arrays["M"].reshape(-1).tolist()) == {1} for n in red)
    g = float(np.asarray(im.node("c1").scale).reshape(-1)[0])
    assert {float(n.scale) for n in red} == {g, g / 8}
    x = edge_batches(im, SHAPE)[1]
    r = IntEngine(im)(x, keep=True)
    codes = r.values["relu"]
    assert torch.equal(r.values["mean"], codes.sum(1, keepdim=True))
    assert torch.equal(r.values["amax"], codes.amax(1, keepdim=True))


@pytest.mark.parametrize("op,mult_bits", [(lambda x: x.mean(1, keepdim=True), 24),
                                           (lambda x: x.amax(1, keepdim=True), 27)], ids=["mean", "amax"])
def test_channel_reductions_in_int64(op: Callable[[torch.Tensor], torch.Tensor], mult_bits: int) -> None:
    """With wide multipliers the rescaled reductions pass 2**52: the engine's int64 path, still == faithful."""
    torch.manual_seed(16)
    q = quantize(Between(op, relu=False), calib())
    im = to_integer(q, calib(), mult_bits=mult_bits)
    red = next(n for n in im.nodes if n.op == "reduce")
    terms = 8 if red.attrs["fn"] == "sum" else 1
    assert im.node(red.inputs[0]).bound * int(red.arrays["M"].max()) * terms >= 2**52
    fm, engine = faithful(q, im), IntEngine(im)
    for x in edge_batches(im, SHAPE):
        with torch.no_grad():
            assert torch.equal(engine(x).real(), fm(x))
        assert int_semantics(im, x) == {"reduce": 1, "mul": 0}


@pytest.mark.parametrize("op,c", [(lambda x: x * 0.375, 0.375), (lambda x: -2.0 * x, -2.0),
                                  (lambda x: torch.mul(x, 3), 3.0)], ids=["x*0.375", "-2*x", "torch.mul(x,3)"])
def test_product_by_a_scalar_moves_into_the_grid(op: Callable[[torch.Tensor], torch.Tensor], c: float) -> None:
    torch.manual_seed(17)
    im = check(quantize(Between(op), calib()), calib())["im"]
    assert isinstance(im, IntModel)
    mul = next(n for n in im.nodes if n.op == "mul")
    assert mul.attrs["const"] == c and mul.bound == im.node(mul.inputs[0]).bound
    assert int_semantics(im, edge_batches(im, SHAPE)[1]) == {"reduce": 0, "mul": 1}


class SpatialMax(nn.Module):
    """conv -> ReLU -> amax over (H, W) -> linear: a global max pool written as a reduction."""

    def __init__(self, keepdim: bool) -> None:
        super().__init__()
        self.keepdim = keepdim
        self.c1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.amax(F.relu(self.c1(x)), dim=(2, 3), keepdim=self.keepdim)
        return self.fc(y.flatten(1) if self.keepdim else y)  # type: ignore[no-any-return]


@pytest.mark.parametrize("keepdim", [True, False])
def test_spatial_amax_is_a_global_max_pool(keepdim: bool) -> None:
    torch.manual_seed(18)
    im = check(quantize(SpatialMax(keepdim).eval(), calib()), calib())["im"]
    assert isinstance(im, IntModel)
    pool = next(n for n in im.nodes if n.op == "maxpool")
    assert pool.attrs["kernel"] == [8, 8] and pool.shape == (8, 1, 1) and "flatten" in ops_of(im)


@pytest.mark.parametrize("op,match", [
    (lambda x: x.amax((1, 2), keepdim=True), r"'amax' \(Tensor.amax\): amax over dims \[1, 2\]"),
    (lambda x: x.mean((1, 2), keepdim=True), r"'mean' \(Tensor.mean\): mean over dims \(1, 2\)"),
    (lambda x: x * 0.0, r"'mul' \(mul\): a product with 0.0"),
    (lambda x: F.pixel_shuffle(x, 2).mean(1, keepdim=True),
     r"'mean' \(Tensor.mean\): a channel reduction of a grid that varies in space"),
], ids=["amax-dims", "mean-dims", "times-zero", "varying-grid"])
def test_inexact_reductions_and_products_are_refused_by_name(op: Callable[[torch.Tensor], torch.Tensor],
                                                             match: str) -> None:
    q = quantize(Between(op, mid=16, relu=False), calib())
    with pytest.raises(ModelError, match=r"layer " + match):
        to_integer(q, calib())


def test_attention_gate_imported_from_onnx() -> None:
    """ReduceMean / ReduceMax / Sigmoid / Mul of an ONNX file, as mixq's importer maps them."""
    import io
    import warnings

    onnx = pytest.importorskip("onnx")
    from mixq.zoo.onnx_import import import_onnx

    class Cbam(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1)
            self.att = nn.Conv2d(2, 1, 7, padding=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.c1(x))
            att = self.att(torch.cat([y.mean(1, keepdim=True), torch.max(y, 1, keepdim=True)[0]], 1))
            return self.c2(y * torch.sigmoid(att))  # type: ignore[no-any-return]

    torch.manual_seed(19)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Cbam().eval(), (torch.randn(1, *SHAPE),), cast(Any, buf), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
    gm = import_onnx(onnx.load_from_string(buf.getvalue()))
    assert {torch.mean, torch.amax} <= {n.target for n in gm.graph.nodes}
    im = check(quantize(gm, calib()), calib())["im"]
    assert isinstance(im, IntModel) and ops_of(im).count("reduce") == 2 and "mul" in ops_of(im)


class GateUNet(nn.Module):
    """Encoder conv-BN-ReLU, max pool, conv, the attention gate, a ConvTranspose2d up, a concat skip, decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.gate = AttentionGate(*GATES["onnx"])
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.dec = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        y = self.gate(self.mid(self.pool(skip)))
        y = torch.cat([F.relu(self.up(y)), skip], 1)
        return self.head(F.relu(self.dec(y)))  # type: ignore[no-any-return]


def test_attention_gate_unet_end_to_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mixq.graph import capture
    from mixq.hw.estimate import estimate

    torch.manual_seed(20)
    model = GateUNet()
    bn = model.enc[1]
    assert isinstance(bn, nn.BatchNorm2d)
    bn.running_mean.uniform_(-0.2, 0.2)  # type: ignore[union-attr]
    bn.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
    model.eval()
    x = torch.randn(16, 3, 16, 16)
    plan = api.default_plan("gate-unet", model, x)
    assert list(plan.layers) == ["enc.0", "mid.0", "gate.conv", "up", "dec", "head"]
    q = api.quantize(model, plan, x)
    im = check(q, x, code_diff=4)["im"]
    assert isinstance(im, IntModel)
    assert {"maxpool", "reduce", "mul", "lut", "zero_insert", "cat"} <= set(ops_of(im))
    assert int_semantics(im, edge_batches(im, (3, 16, 16))[1]) == {"reduce": 2, "mul": 1}
    back = load_int_model(save_int_model(im, tmp_path / "gate.json"))
    for xb in edge_batches(im, (3, 16, 16)):
        assert torch.equal(IntEngine(back)(xb).codes, IntEngine(im)(xb).codes)
    specs = capture(model, (3, 16, 16))
    kinds = {s.name: s.kind for s in specs}
    assert all(s.extra["support"] == "ok" for s in specs[1:])
    assert (kinds["mean"], kinds["amax"], kinds["mul"], kinds["up_zeros"]) == ("reduce", "reduce", "mul", "zero_insert")
    for arch in ("streaming", "overlay"):
        est = estimate(specs, plan, "xc7z020", arch)
        assert est.fps > 0
        by = {le.name: le for le in est.layers}
        assert {"mean", "amax", "mul"} <= set(by)
        if arch == "streaming":
            assert all(by[n].cycles > 0 and by[n].resources.lut > 0 for n in ("mean", "amax", "mul"))
            assert by["mul"].resources.dsp >= 1  # a multiplier per lane


def test_products_of_sizes_stay_python_numbers() -> None:
    """``x.size(2) * 2`` is a product too (the same op-table kind): no integer node, the graph as written."""
    torch.manual_seed(21)
    model = Between(lambda x: F.interpolate(x, size=(x.size(2) * 2, x.size(3) * 2)))
    im = check(quantize(model, calib()), calib())["im"]
    assert isinstance(im, IntModel) and "mul" not in ops_of(im) and im.node("interpolate").shape == (8, 16, 16)


# ----------------------------------------------------------------------------- BatchNorm left unfolded


def _random_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, seed: int, tiny: float = 1e-3) -> None:
    """Random running statistics and affine parameters, some gammas negative, one ``tiny``."""
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
        gamma = torch.randn(c, generator=g) * 1.5
        gamma[0] = -abs(float(gamma[0])) - 0.3
        gamma[1] = tiny
        bn.weight.copy_(gamma)
        bn.bias.copy_(torch.randn(c, generator=g))


class BnAfterRelu(nn.Module):
    """conv -> ReLU -> BatchNorm2d -> conv -> flatten -> linear (pre-activation style: the BN cannot fold)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(SHAPE[0], 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1, stride=2)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        _random_bn(self.bn, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.c2(self.bn(self.relu(self.c1(x)))), 1))  # type: ignore[no-any-return]


class Bn1dAfterRelu(nn.Module):
    """conv -> flatten -> linear -> ReLU -> BatchNorm1d on (N, F) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(SHAPE[0], 4, 3, padding=1, stride=2)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 5)
        _random_bn(self.bn, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.bn(self.relu(self.fc1(torch.flatten(self.c1(x), 1)))))  # type: ignore[no-any-return]


def affine_semantics(im: IntModel, x: torch.Tensor) -> int:
    """Every ``affine`` node against its definition on the engine's own integers, its constants against the BN."""
    r = IntEngine(im)(x, keep=True)
    seen = 0
    for n in im.nodes:
        if n.op != "affine":
            continue
        seen += 1
        q = r.values[n.inputs[0]]
        m, s, b = (torch.from_numpy(np.asarray(n.arrays[k], dtype=np.int64)) for k in ("M", "n", "B"))
        exact = torch.floor((q.double() * m.double() / torch.pow(2.0, s.double()) + b.double()) + 0.5)
        assert torch.equal(r.values[n.name], exact.to(torch.int64)), n.name
        assert torch.equal(r.values[n.name], ((q * m + (1 << s >> 1)) >> s) + b)
        assert int(r.values[n.name].abs().max()) <= n.bound
        g_in = np.broadcast_to(np.asarray(im.node(n.inputs[0]).scale), n.arrays["M"].shape)
        a = np.asarray(n.arrays["scale_float"], dtype=np.float64)
        ratio = np.asarray(n.arrays["M"]) * np.exp2(-np.asarray(n.arrays["n"], dtype=np.float64))
        assert np.allclose(ratio, a * g_in / float(n.scale), rtol=2**-14)
        assert (np.asarray(n.arrays["M"]) < 0).any()  # negative gammas: signed multipliers
        eff = np.abs(a) * g_in
        assert float(n.scale) <= eff.min() * (1 + 1e-6) or float(n.scale) <= eff.max() * 2.0**-8 * (1 + 1e-6)
    return seen


@pytest.mark.parametrize("net", [BnAfterRelu, Bn1dAfterRelu], ids=["bn2d", "bn1d"])
def test_batchnorm_after_relu_is_an_integer_affine(net: type[nn.Module], tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(21)
    model = net().eval()
    q = quantize(model, calib())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in q.modules())
    out = check(q, calib())
    im = out["im"]
    assert isinstance(im, IntModel) and ops_of(im).count("affine") == 1
    for x in edge_batches(im, SHAPE):
        assert affine_semantics(im, x) == 1
    # the integer model round-trips through its file format
    im2 = load_int_model(save_int_model(im, tmp_path / "bn.json"))
    x = calib()[:4]
    assert torch.equal(IntEngine(im2)(x).codes, IntEngine(im)(x).codes)


def test_batchnorm_after_conv_is_still_folded() -> None:
    """With the default ``fold=True`` a BN right after a conv is folded (no ``affine``); one after a ReLU stays."""
    torch.manual_seed(22)

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(SHAPE[0], 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu = nn.ReLU()
            self.bn2 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 4, 3, padding=1)
            _random_bn(self.bn1, 5, tiny=0.05)  # folded: its scales spread c1's accumulator grids
            _random_bn(self.bn2, 6, tiny=0.05)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c2(self.bn2(self.relu(self.bn1(self.c1(x)))))  # type: ignore[no-any-return]

    model = Both().eval()
    x = calib()
    q = api.quantize(model, api.default_plan("m", model, x), x)
    assert isinstance(q.get_submodule("bn1"), nn.Identity)
    assert isinstance(q.get_submodule("bn2"), nn.BatchNorm2d)
    im = to_integer(q, x)
    assert [n.name for n in im.nodes if n.op == "affine"] == ["bn2"]
    fm = faithful(q, im)
    for b in edge_batches(im, SHAPE):
        with torch.no_grad():
            assert torch.equal(IntEngine(im)(b).real(), fm(b))


def test_batchnorm_without_running_stats_is_refused() -> None:
    model = BnAfterRelu().eval()
    model.bn = nn.BatchNorm2d(8, track_running_stats=False).eval()
    q = quantize(model, calib())
    with pytest.raises(ModelError, match="running statistics"):
        to_integer(q, calib())


def test_lowerings_refuse_what_they_cannot_run_by_name() -> None:
    """The single-engine program names the node it cannot run: zero channels added by a pad. The network RTL takes a
    product whose operands are rounded first (its pointwise stage rounds them the same way)."""
    from mixq.engine.program import lower
    from mixq.rtl.netgraph import PointStage, lower_graph

    torch.manual_seed(29)
    im = to_integer(quantize(Between(lambda x: F.pad(x, (0, 0, 0, 0, 0, 2)), relu=False), calib()), calib())
    with pytest.raises(ModelError, match=r"int model node 'pad' \(op 'pad'\): zero padding of the channels has no "
                                         "conv form on the single engine"):
        lower(im)
    im = to_integer(quantize(Between(lambda x: x * x, mid=16, relu=False), calib()), calib())
    assert im.node("mul").attrs.get("shifts")
    (st,) = [s for s in lower_graph(im, IntEngine(im)(calib()[:1], keep=True).values).nodes
             if isinstance(s, PointStage) and s.ops[0].op == "mul"]
    assert st.ops[0].n == tuple(im.node("mul").attrs["shifts"])
