"""ONNX import (mixq.zoo.onnx_import) and model files (mixq.zoo.model_files): every mapped op against
onnxruntime and the torch original, the module types it yields, and the one-line errors."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq.errors import ModelError
from mixq.zoo.model_files import MODEL_FILE_SUFFIXES, load_model_file
from mixq.zoo.onnx_import import import_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")]
TOL = 1e-5


# ---------------------------------------------------------------------------------------------- helpers


def _export(model: nn.Module, shape: tuple[int, ...], *, dynamo: bool = False, opset: int = 17,
            dynamic_batch: bool = True) -> Any:
    model.eval()
    x = torch.randn(1, *shape)
    axes = {"input": {0: "n"}, "output": {0: "n"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
            assert program is not None
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), cast(Any, buf), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes)
    return onnx.load_from_string(buf.getvalue())


def _ort(proto: Any, x: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _max_diff(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = a.detach(), torch.as_tensor(b).detach()
    assert tuple(a.shape) == tuple(b.shape)
    return float((a - b).abs().max())


def _check(proto: Any, shape: tuple[int, ...], types: set[type], batch: int = 3,
           original: nn.Module | None = None) -> fx.GraphModule:
    """Import, then compare with onnxruntime (and the torch original) on random inputs."""
    gm = import_onnx(proto)
    found = {type(m) for m in gm.modules()}
    assert types <= found, f"missing {types - found}; found {found}"
    static_batch = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    x = torch.randn(static_batch or batch, *shape)
    with torch.no_grad():
        assert _max_diff(gm(x), _ort(proto, x)) < TOL
        if original is not None:
            xb = torch.randn(batch, *shape)
            assert _max_diff(gm(xb), original.eval()(xb)) < TOL
    return gm


def _graph(nodes: list[Any], inits: dict[str, np.ndarray], in_shape: list[Any], opset: int = 17,
           out_shape: list[Any] | None = None) -> Any:
    """A hand-made ONNX model x -> y."""
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _children(module: nn.Module) -> dict[str, Any]:
    """A module's direct submodules by name (typed Any, for their attributes)."""
    return dict(module.named_children())


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class Fn(nn.Module):
    """A module computing ``fn(self, x)``; submodules given as keywords."""

    def __init__(self, fn: Callable[..., torch.Tensor], **mods: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        for k, m in mods.items():
            self.add_module(k, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _bn(c: int, cls: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    bn = cls(c)
    with torch.no_grad():
        for name, (lo, hi) in {"running_mean": (-0.5, 0.5), "running_var": (0.5, 2.0), "weight": (0.5, 1.5),
                               "bias": (-0.5, 0.5)}.items():
            getattr(bn, name).uniform_(lo, hi)
    return bn.eval()


torch.manual_seed(0)

# name -> (model, per-sample input shape, expected module types, export opset)
CASES: dict[str, tuple[nn.Module, tuple[int, ...], set[type], int]] = {
    "conv2d": (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 9, 9), {nn.Conv2d}, 17),
    "conv2d_groups_dilation": (nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), (4, 8, 8), {nn.Conv2d}, 17),
    "conv2d_rect": (nn.Conv2d(2, 3, (3, 1), stride=(1, 2), padding=(1, 0), bias=False), (2, 6, 7), {nn.Conv2d}, 13),
    "conv1d": (nn.Conv1d(3, 4, 5, stride=2, padding=2), (3, 16), {nn.Conv1d}, 17),
    "conv_transpose2d": (nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), (4, 5, 5),
                         {nn.ConvTranspose2d}, 17),
    "conv_transpose2d_groups": (nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2), (4, 3, 3), {nn.ConvTranspose2d}, 17),
    "gemm": (nn.Linear(8, 5), (8,), {nn.Linear}, 17),
    "matmul_add": (nn.Linear(8, 5), (3, 8), {nn.Linear}, 17),
    "matmul": (nn.Linear(8, 5, bias=False), (3, 8), {nn.Linear}, 17),
    "batchnorm2d": (Fn(lambda s, x: s.bn(torch.relu(x)), bn=_bn(3)), (3, 5, 5), {nn.BatchNorm2d}, 17),
    "batchnorm1d": (_bn(4, nn.BatchNorm1d), (4, 7), {nn.BatchNorm1d}, 17),
    "relu": (nn.ReLU(), (3, 4, 4), {nn.ReLU}, 17),
    "relu6": (nn.ReLU6(), (3, 4, 4), {nn.ReLU6}, 17),
    "relu6_opset10": (nn.ReLU6(), (3, 4, 4), {nn.ReLU6}, 10),
    "hardtanh": (nn.Hardtanh(-0.5, 1.5), (3, 4, 4), {nn.Hardtanh}, 17),
    "leaky_relu": (nn.LeakyReLU(0.2), (3, 4, 4), {nn.LeakyReLU}, 17),
    "hardswish": (nn.Hardswish(), (3, 4, 4), {nn.Hardswish}, 17),
    "hardswish_opset13": (nn.Hardswish(), (3, 4, 4), {nn.Hardswish}, 13),
    "hardsigmoid": (nn.Hardsigmoid(), (3, 4, 4), {nn.Hardsigmoid}, 17),
    "sigmoid": (nn.Sigmoid(), (3, 4, 4), {nn.Sigmoid}, 17),
    "tanh": (nn.Tanh(), (3, 4, 4), {nn.Tanh}, 17),
    "silu": (nn.SiLU(), (3, 4, 4), {nn.SiLU}, 17),
    "maxpool2d": (nn.MaxPool2d(3, 2, 1), (3, 9, 9), {nn.MaxPool2d}, 17),
    "maxpool2d_ceil": (nn.MaxPool2d(2, 2, ceil_mode=True), (3, 7, 7), {nn.MaxPool2d}, 17),
    "maxpool1d": (nn.MaxPool1d(3, 2), (3, 11), {nn.MaxPool1d}, 17),
    "avgpool2d": (nn.AvgPool2d(3, 2, 1, count_include_pad=False), (3, 9, 9), {nn.AvgPool2d}, 17),
    "avgpool2d_include_pad": (nn.AvgPool2d(3, 2, 1), (3, 8, 8), {nn.AvgPool2d}, 17),
    "avgpool2d_ceil": (nn.AvgPool2d(2, 2, ceil_mode=True), (3, 7, 7), {nn.AvgPool2d}, 17),
    "avgpool1d": (nn.AvgPool1d(2), (3, 10), {nn.AvgPool1d}, 17),
    "global_avgpool": (nn.AdaptiveAvgPool2d(1), (3, 5, 6), {nn.AdaptiveAvgPool2d}, 17),
    "reduce_mean_keepdims": (Fn(lambda s, x: x.mean((2, 3), keepdim=True)), (3, 5, 6), {nn.AdaptiveAvgPool2d}, 17),
    "reduce_mean": (Fn(lambda s, x: x.mean((-2, -1))), (3, 5, 6), {nn.AdaptiveAvgPool2d, nn.Flatten}, 17),
    "reduce_mean_opset18": (Fn(lambda s, x: x.mean((2, 3))), (3, 5, 6), {nn.AdaptiveAvgPool2d}, 18),
    "reduce_mean_channels": (Fn(lambda s, x: x.mean(1, keepdim=True)), (3, 5, 6), set(), 17),
    "reduce_max_channels": (Fn(lambda s, x: torch.max(x, 1, keepdim=True)[0]), (3, 5, 6), set(), 17),
    "reduce_min_channels": (Fn(lambda s, x: x.amin(1, keepdim=True)), (3, 5, 6), set(), 17),
    "reduce_max_spatial": (Fn(lambda s, x: x.amax((2, 3), keepdim=True)), (3, 5, 6), {nn.AdaptiveMaxPool2d}, 17),
    "reduce_max_opset18": (Fn(lambda s, x: x.amax((1, 3))), (3, 5, 6), set(), 18),
    "reduce_min_1d_opset18": (Fn(lambda s, x: x.amin(-1)), (4, 7), set(), 18),
    "mul_sigmoid_gate": (Fn(lambda s, x: x * torch.sigmoid(s.conv(x)), conv=nn.Conv2d(3, 3, 1)), (3, 4, 4),
                         {nn.Conv2d, nn.Sigmoid}, 17),
    "add_sub_mul_div": (Fn(lambda s, x: (s.a(x) + s.b(x)) * torch.linspace(-1, 1, 4).view(4, 1, 1) / 3.0 - 0.25,
                           a=nn.Conv2d(3, 4, 1), b=nn.Conv2d(3, 4, 3, padding=1)), (3, 5, 5), {nn.Conv2d}, 17),
    "concat": (Fn(lambda s, x: torch.cat([s.a(x), s.b(x)], 1), a=nn.Conv2d(3, 2, 1), b=nn.Conv2d(3, 5, 1)),
               (3, 4, 4), {nn.Conv2d}, 17),
    "flatten": (nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), (3, 4, 4), {nn.Flatten, nn.Linear}, 17),
    "view_batch": (Fn(lambda s, x: s.fc(x.view(x.size(0), -1)), fc=nn.Linear(48, 3)), (3, 4, 4), {nn.Linear}, 17),
    "reshape": (Fn(lambda s, x: x.reshape(x.shape[0], 6, 2, 4) * 2.0), (3, 4, 4), set(), 17),
    "squeeze_unsqueeze": (Fn(lambda s, x: s.conv(x.unsqueeze(2)).squeeze(2), conv=nn.Conv2d(3, 4, (1, 3))),
                          (3, 9), {nn.Conv2d}, 17),
    "transpose": (Fn(lambda s, x: s.fc(x.permute(0, 2, 1)), fc=nn.Linear(4, 5)), (4, 6), {nn.Linear}, 17),
    "depth_to_space": (nn.PixelShuffle(2), (8, 3, 3), {nn.PixelShuffle}, 17),
    "slice_chunk": (Fn(lambda s, x: torch.cat([s.a(torch.chunk(x, 2, 1)[1]), x[:, :2], x[:, 2:, 1:-1]], 2),
                       a=nn.Conv2d(2, 2, 1)), (4, 5, 5), {nn.Conv2d}, 17),
    "split_sizes": (Fn(lambda s, x: s.a(x.split([1, 3], 1)[0]) * x.split([1, 3], 1)[1][:, :1], a=nn.Conv2d(1, 1, 1)),
                    (4, 5, 5), {nn.Conv2d}, 11),
    "split_equal_opset18": (Fn(lambda s, x: torch.cat(torch.chunk(x, 2, 3)[::-1], 3)), (3, 4, 6), set(), 18),
    "resize_nearest": (nn.Upsample(scale_factor=2, mode="nearest"), (3, 4, 5), {nn.Upsample}, 17),
    "resize_nearest_size": (nn.Upsample(size=(9, 6), mode="nearest"), (3, 3, 2), {nn.Upsample}, 17),
    "resize_bilinear": (nn.Upsample(scale_factor=2, mode="bilinear"), (3, 4, 5), {nn.Upsample}, 17),
    "resize_bilinear_align": (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), (3, 4, 5),
                              {nn.Upsample}, 17),
    "resize_bilinear_size": (nn.Upsample(size=(7, 9), mode="bilinear"), (3, 4, 5), {nn.Upsample}, 17),
    "pad_zero": (nn.ZeroPad2d((1, 2, 0, 1)), (3, 4, 4), {nn.ZeroPad2d}, 17),
    "pad_zero_opset10": (nn.ZeroPad2d((1, 2, 0, 1)), (3, 4, 4), {nn.ZeroPad2d}, 10),
    "pad_constant": (nn.ConstantPad2d((2, 0, 1, 1), 0.5), (3, 4, 4), {nn.ConstantPad2d}, 17),
    "pad_reflect": (nn.ReflectionPad2d(1), (3, 4, 4), {nn.ReflectionPad2d}, 17),
    "pad_1d": (nn.ConstantPad1d((1, 2), 0.0), (3, 6), {nn.ZeroPad1d}, 17),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_onnxruntime_and_torch(case: str) -> None:
    model, shape, types, opset = CASES[case]
    _check(_export(model, shape, opset=opset), shape, types, original=model)


def test_case_list_covers_the_mapped_ops() -> None:
    """Every op of the handler table appears in the exported or hand-made models of this file."""
    from mixq.zoo.onnx_ops import OPS

    seen = set()
    for model, shape, _, opset in CASES.values():
        seen |= {n.op_type for n in _export(model, shape, opset=opset).graph.node}
    hand_made = {"Conv", "Gemm", "Identity", "Dropout", "DepthToSpace", "Upsample", "GlobalMaxPool", "Clip",
                 "Squeeze", "Unsqueeze", "MaxPool", "AveragePool", "Pad", "ConvTranspose", "Resize"}
    assert set(OPS) - seen - hand_made == set()


def test_matmul_add_fuses_into_one_linear() -> None:
    model = nn.Linear(8, 5)
    gm = import_onnx(_export(model, (3, 8)))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    lin = gm.get_submodule(str(next(n.target for n in gm.graph.nodes if n.op == "call_module")))
    assert isinstance(lin, nn.Linear) and lin.bias is not None
    assert torch.equal(lin.weight, model.weight) and torch.equal(lin.bias, model.bias)


def test_sigmoid_used_twice_is_not_fused() -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="gate"), helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node("Add", ["m", "s"], ["y"])]
    gm = _check(_graph(nodes, {}, ["N", 3, 4]), (3, 4), {nn.Sigmoid})
    assert not any(isinstance(m, nn.SiLU) for m in gm.modules())


# ---------------------------------------------------------------------------------------------- hand-made graphs


def _conv_graph(**attrs: Any) -> Any:
    return _graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="/stem/conv/Conv", **attrs)],
                  {"w": _rand(4, 3, 3, 3), "b": _rand(4, seed=1)}, ["N", 3, 7, 8])


@pytest.mark.parametrize("attrs,types", [
    ({"pads": [0, 1, 2, 1]}, {nn.ZeroPad2d, nn.Conv2d}),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {nn.ZeroPad2d, nn.Conv2d}),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, {nn.ZeroPad2d, nn.Conv2d}),
    ({"auto_pad": "SAME_UPPER"}, {nn.Conv2d}),
    ({"auto_pad": "VALID", "dilations": [2, 1]}, {nn.Conv2d}),
])
def test_conv_pads_and_auto_pad(attrs: dict[str, Any], types: set[type]) -> None:
    gm = _check(_conv_graph(**attrs), (3, 7, 8), types)
    assert isinstance(gm.stem_conv, nn.Conv2d)


def test_conv1d_asymmetric_pads() -> None:
    proto = _graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 0], strides=[2])],
                   {"w": _rand(5, 3, 3)}, ["N", 3, 10])
    _check(proto, (3, 10), {nn.ZeroPad1d, nn.Conv1d})


@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(0, 0.5, 2.0, (6,)), (1, 1.0, 1.0, (1, 6)),
                                                         (1, 1.5, 0.5, ())])
def test_gemm_attributes(trans_b: int, alpha: float, beta: float, c_shape: tuple[int, ...]) -> None:
    w = _rand(6, 5) if trans_b else _rand(5, 6)
    proto = _graph([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=trans_b, alpha=alpha, beta=beta)],
                   {"w": w, "c": _rand(*c_shape, seed=2)}, ["N", 5])
    gm = _check(proto, (5,), {nn.Linear})
    lin = next(m for m in gm.modules() if isinstance(m, nn.Linear))
    assert np.allclose(lin.weight.detach().numpy(), alpha * (w if trans_b else w.T))


def test_identity_dropout_global_max_and_clip_inputs() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a"], ["b"], name="drop"),
        helper.make_node("Clip", ["b", "lo", ""], ["c"], name="clip_min_only"),
        helper.make_node("GlobalMaxPool", ["c"], ["y"], name="gmp"),
    ]
    proto = _graph(nodes, {"lo": np.array(0.25, np.float32)}, ["N", 3, 4, 4])
    gm = _check(proto, (3, 4, 4), {nn.Hardtanh, nn.AdaptiveMaxPool2d})
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_module", "output"]


def test_depth_to_space_dcr_is_exact() -> None:
    proto = _graph([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="DCR")], {}, ["N", 12, 3, 4])
    _check(proto, (12, 3, 4), set())


def test_upsample_opset9_and_nearest_half_pixel() -> None:
    up = _graph([helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")],
                {"s": np.array([1, 1, 2, 3], np.float32)}, ["N", 2, 3, 4], opset=9)
    assert isinstance(_check(up, (2, 3, 4), {nn.Upsample}).get_submodule("upsample"), nn.Upsample)
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                              coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor")]
    _check(_graph(nodes, {"s": np.array([1, 1, 3, 2], np.float32)}, ["N", 2, 3, 4]), (2, 3, 4), {nn.Upsample})


def test_maxpool_asymmetric_pads_and_same_upper() -> None:
    nodes = [helper.make_node("MaxPool", ["x"], ["a"], kernel_shape=[3, 3], pads=[0, 1, 1, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["a"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_UPPER",
                              count_include_pad=1)]
    proto = _graph(nodes, {}, ["N", 3, 9, 8])
    mods = _children(_check(proto, (3, 9, 8), {nn.MaxPool2d, nn.AvgPool2d, nn.ConstantPad2d, nn.ZeroPad2d}))
    assert mods["maxpool_pad"].padding == (1, 2, 0, 1) and mods["maxpool_pad"].value == float("-inf")
    assert mods["averagepool_pad"].padding == (0, 1, 0, 1) and mods["averagepool"].padding == (0, 0)


@pytest.mark.parametrize("mode,cls", [("edge", nn.ReplicationPad2d), ("wrap", nn.CircularPad2d)])
def test_pad_edge_and_wrap(mode: str, cls: type[nn.Module]) -> None:
    nodes = [helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)]
    proto = _graph(nodes, {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, ["N", 2, 4, 5], opset=19)
    _check(proto, (2, 4, 5), {cls})


def test_squeeze_unsqueeze_opset11_attributes() -> None:
    nodes = [helper.make_node("Unsqueeze", ["x"], ["a"], axes=[2, -1]),
             helper.make_node("Squeeze", ["a"], ["y"], axes=[4, 2])]
    _check(_graph(nodes, {}, ["N", 3, 5], opset=11), (3, 5), set())


def test_conv_transpose_1d() -> None:
    proto = _graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3], pads=[1, 1],
                                     output_padding=[2])], {"w": _rand(3, 2, 4)}, ["N", 3, 5])
    _check(proto, (3, 5), {nn.ConvTranspose1d})


# ---------------------------------------------------------------------------------------------- whole models


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.downsample(x))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(ResBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.relu(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.enc2 = nn.Conv2d(8, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Conv2d(16, 8, 3, padding=1)
        self.near = nn.Upsample(scale_factor=2, mode="nearest")
        self.bilin = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head = nn.Conv2d(8, 16, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = torch.relu(self.enc1(x))
        e2 = torch.relu(self.enc2(self.pool(e1)))
        d = torch.relu(self.dec(torch.cat([self.up(e2), e1], 1)))
        d = self.near(self.pool(d)) + self.bilin(F.avg_pool2d(d, 2))
        return torch.sigmoid(self.shuffle(self.head(d)))


RES_SHAPE, UNET_SHAPE = (3, 16, 16), (3, 16, 16)


def test_resnet_block_legacy_exporter() -> None:
    model = TinyResNet().eval()
    gm = _check(_export(model, RES_SHAPE), RES_SHAPE, {nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear},
                original=model)
    names = dict(gm.named_children())
    assert {"conv1", "layer1_0_conv1", "layer1_0_conv2", "layer1_0_downsample_0", "fc"} <= set(names)
    assert isinstance(names["layer1_0_downsample_0"], nn.Conv2d) and isinstance(names["fc"], nn.Linear)
    assert gm.input_shape == RES_SHAPE and gm.source_format == "onnx"


def test_resnet_block_dynamo_exporter_names_match_legacy() -> None:
    model = TinyResNet().eval()
    gm = _check(_export(model, RES_SHAPE, dynamo=True), RES_SHAPE, {nn.Conv2d, nn.Linear}, original=model)
    legacy = import_onnx(_export(model, RES_SHAPE))
    convs = {n for n, m in gm.named_children() if isinstance(m, nn.Conv2d)}
    assert convs == {n for n, m in legacy.named_children() if isinstance(m, nn.Conv2d)}
    assert convs == {"conv1", "layer1_0_conv1", "layer1_0_conv2", "layer1_0_downsample_0"}  # both fold BN into conv


@pytest.mark.parametrize("dynamo", [False, True])
def test_unet_end_to_end(dynamo: bool) -> None:
    model = TinyUNet().eval()
    types = {nn.Conv2d, nn.MaxPool2d, nn.ConvTranspose2d, nn.Upsample, nn.PixelShuffle, nn.Sigmoid, nn.AvgPool2d}
    gm = _check(_export(model, UNET_SHAPE, dynamo=dynamo), UNET_SHAPE, types, original=model)
    modes = sorted((m.mode, m.align_corners) for m in gm.modules() if isinstance(m, nn.Upsample))
    assert modes == [("bilinear", False), ("nearest", None)]


def test_graph_module_retrace_deepcopy_and_state_dict() -> None:
    model = TinyUNet().eval()
    gm = import_onnx(_export(model, UNET_SHAPE))
    x = torch.randn(2, *UNET_SHAPE)
    with torch.no_grad():
        ref = gm(x)
        assert _max_diff(fx.symbolic_trace(gm)(x), ref) == 0.0
        dup = copy.deepcopy(gm)
        assert _max_diff(dup(x), ref) == 0.0
    assert dup.input_shape == UNET_SHAPE and dup.source_format == "onnx"
    buf = io.BytesIO()
    torch.save(gm.state_dict(), buf)
    fresh = import_onnx(_export(TinyUNet().eval(), UNET_SHAPE))
    with torch.no_grad():
        assert _max_diff(fresh(x), ref) > 1e-3
        buf.seek(0)
        fresh.load_state_dict(torch.load(buf, weights_only=True))
        assert _max_diff(fresh(x), ref) == 0.0


def test_weights_are_exact_copies() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    gm = import_onnx(_export(model, (3, 6, 6)))
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    lins = [m for m in gm.modules() if isinstance(m, nn.Linear)]
    conv, lin = _children(model)["0"], _children(model)["3"]
    assert torch.equal(convs[0].weight, conv.weight) and torch.equal(convs[0].state_dict()["bias"], conv.bias)
    assert torch.equal(lins[0].weight, lin.weight) and lins[0].weight.dtype == torch.float32


def test_input_shape_of_a_dynamic_graph_is_none_unless_given() -> None:
    proto = _graph([helper.make_node("Relu", ["x"], ["y"])], {}, ["N", 3, "H", "W"])
    gm = import_onnx(proto)
    assert gm.input_shape is None
    assert _max_diff(gm(torch.tensor([[[[-1.0, 2.0]]]])), torch.tensor([[[[0.0, 2.0]]]])) == 0.0
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 6, 3)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 6, 8),), buf, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    dynamic = onnx.load_from_string(buf.getvalue())
    gm = import_onnx(dynamic, input_shape=(3, 6, 8))  # the Flatten-Gemm needs static H, W
    assert gm.input_shape == (3, 6, 8)
    x = torch.randn(2, 3, 6, 8)
    assert _max_diff(gm(x), model(x)) < TOL
    with pytest.raises(ModelError, match=r"per-sample shape \(3, '\?', '\?'\), not the given \(4, 6, 8\)"):
        import_onnx(dynamic, input_shape=(4, 6, 8))


# ---------------------------------------------------------------------------------------------- exporter patterns
# The legacy exporter's subgraphs that ONNX shape inference loses dims through (a Pad whose pads a
# ConstantOfShape / Slice / Transpose subgraph computes, a Transpose after it), as in EfficientNet-Lite
# (TF "same" ZeroPad2d, global pool, view(batch, -1)), CREPE (1-D signal as (k, 1) convs, BN after ReLU,
# permute + reshape) and a CBAM-style spatial attention (channel mean / max, a sigmoid gate).


def _call_targets(gm: fx.GraphModule) -> set[Any]:
    return {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")}


def _same_pad(x: torch.Tensor, k: int = 3, s: int = 2) -> torch.Tensor:
    """TF "same" padding computed from the input's shape (EfficientNet's dynamic-padding convolution)."""
    ih, iw = x.shape[-2:]
    ph, pw = (max((-(-n // s) - 1) * s + k - n, 0) for n in (ih, iw))
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class TfSameNet(nn.Module):
    """EfficientNet-Lite's stem and head: an asymmetric ZeroPad2d before a stride-2 conv, GAP, view(batch, -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.stem = nn.Conv2d(3, 8, 3, 2)
        self.act = nn.ReLU6()
        self.head = nn.Conv2d(8, 16, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gap(self.head(self.act(self.stem(self.pad(x)))))
        return self.fc(x.view(x.size(0), -1))


class CrepeLike(nn.Module):
    """CREPE's layout: (N, L) -> (N, 1, L, 1), F.pad on L, a (k, 1) conv, ReLU then BN, (2, 1) max pool,
    permute(0, 2, 1, 3) + reshape(-1, features), Linear, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, (8, 1), (2, 1))
        self.bn = _bn(8)
        self.fc = nn.Linear(8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(F.relu(self.conv(F.pad(x[:, None, :, None], (0, 0, 3, 4)))))
        x = F.max_pool2d(x, (2, 1), (2, 1)).permute(0, 2, 1, 3).reshape(-1, 8 * 8)
        return torch.sigmoid(self.fc(x))


class SpatialAttention(nn.Module):
    """CBAM-style: the channel mean and max, a 7x7 conv, a sigmoid gate multiplied into the features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.att = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        gate = torch.sigmoid(self.att(torch.cat([y.mean(1, keepdim=True), torch.max(y, 1, keepdim=True)[0]], 1)))
        return y * gate


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_tf_same_pad_then_gap_and_batch_reshape(dynamic_batch: bool) -> None:
    model, shape = TfSameNet().eval(), (3, 9, 9)
    proto = _export(model, shape, dynamic_batch=dynamic_batch)
    assert "ConstantOfShape" in {n.op_type for n in proto.graph.node}  # the pads are a computed subgraph
    gm = _check(proto, shape, {nn.ZeroPad2d, nn.Conv2d, nn.ReLU6, nn.AdaptiveAvgPool2d, nn.Linear}, original=model)
    assert _children(gm)["pad"].padding == (0, 1, 0, 1) and torch.flatten in _call_targets(gm)


def test_same_pad_computed_from_the_input_shape() -> None:
    model = Fn(lambda s, x: s.fc(s.gap(s.conv(_same_pad(x))).view(x.size(0), -1)), conv=nn.Conv2d(3, 4, 3, 2),
               gap=nn.AdaptiveAvgPool2d(1), fc=nn.Linear(4, 2)).eval()
    proto = _export(model, (3, 8, 10))
    assert {"Shape", "Div", "Pad"} <= {n.op_type for n in proto.graph.node}
    gm = _check(proto, (3, 8, 10), {nn.ZeroPad2d, nn.Conv2d, nn.Linear}, original=model)
    assert next(m for m in gm.modules() if isinstance(m, nn.ZeroPad2d)).padding == (0, 1, 0, 1)


def test_reshape_after_gap_with_dynamic_spatial_dims() -> None:
    """No static input shape to run: a (batch, -1) target after lost dims is still a flatten."""
    model = TfSameNet().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 9, 9),), cast(Any, buf), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    gm = import_onnx(onnx.load_from_string(buf.getvalue()))
    assert gm.input_shape is None
    for size in ((9, 9), (12, 7)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert _max_diff(gm(x), model(x)) < TOL


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_unsqueeze_pad_transpose_reshape_of_a_1d_signal(dynamic_batch: bool) -> None:
    model = CrepeLike().eval()
    proto = _export(model, (32,), dynamic_batch=dynamic_batch)
    gm = _check(proto, (32,), {nn.ZeroPad2d, nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.MaxPool2d, nn.Linear,
                               nn.Sigmoid}, original=model)
    assert gm.input_shape == (32,) and {"unsqueeze", "permute", torch.flatten} <= _call_targets(gm)


def test_transpose_reshape_chain() -> None:
    def chain(s: Any, x: torch.Tensor) -> torch.Tensor:
        y = s.conv(F.pad(x, (1, 0, 0, 1)))  # pads from a computed subgraph: the inferred dims are lost
        y = y.permute(0, 2, 3, 1).reshape(y.size(0), -1, 4)
        return s.fc(y).transpose(1, 2).reshape(-1, 5, 3, 5)

    model = Fn(chain, conv=nn.Conv2d(3, 4, 2), fc=nn.Linear(4, 5)).eval()
    gm = _check(_export(model, (3, 3, 5)), (3, 3, 5), {nn.Conv2d, nn.Linear}, original=model)
    assert {"permute", "reshape"} <= _call_targets(gm)


def test_channel_reductions_and_sigmoid_gate() -> None:
    import operator

    model = SpatialAttention().eval()
    proto = _export(model, (3, 8, 8))
    assert {"ReduceMean", "ReduceMax", "Mul"} <= {n.op_type for n in proto.graph.node}
    gm = _check(proto, (3, 8, 8), {nn.Conv2d, nn.Sigmoid}, original=model)
    assert {torch.mean, torch.amax, operator.mul} <= _call_targets(gm)
    assert not any(isinstance(m, nn.SiLU) for m in gm.modules())


def test_crepe_like_torchscript_file(tmp_path: Path) -> None:
    model = CrepeLike().eval()
    path = tmp_path / "crepe.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, (torch.randn(1, 32),)), str(path))
    gm = load_model_file(path, input_shape=(32,))
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert _max_diff(gm(x), model(x)) < TOL
    assert gm.source_format == "torchscript" and gm.input_shape == (32,)


# ---------------------------------------------------------------------------------------------- model files


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = _bn(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


SMALL = (3, 8, 8)


def _compare_to(model: nn.Module, gm: nn.Module, batch: int = 4) -> None:
    x = torch.randn(batch, *SMALL)
    with torch.no_grad():
        assert _max_diff(gm(x), model(x)) < TOL


def test_onnx_file(tmp_path: Path) -> None:
    model = SmallNet().eval()
    path = tmp_path / "small.onnx"
    path.write_bytes(_export(model, SMALL).SerializeToString())
    gm = load_model_file(path)
    _compare_to(model, gm)
    assert gm.source_format == "onnx" and gm.input_shape == SMALL and type(gm).__name__ == "small"


@pytest.mark.parametrize("suffix", [".pt", ".ts"])
def test_torchscript_file(tmp_path: Path, suffix: str) -> None:
    model = SmallNet().eval()
    path = tmp_path / f"small{suffix}"
    torch.jit.save(torch.jit.script(model), str(path))
    gm = load_model_file(path, input_shape=SMALL)
    _compare_to(model, gm)
    assert gm.source_format == "torchscript" and gm.input_shape == SMALL
    assert {nn.Conv2d, nn.Linear, nn.MaxPool2d} <= {type(m) for m in gm.modules()}
    assert copy.deepcopy(gm).source_format == "torchscript"


def test_pt2_file(tmp_path: Path) -> None:
    model = SmallNet().eval()
    path = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, *SMALL),)), str(path))
    gm = load_model_file(path)
    _compare_to(model, gm)  # exported at batch 1, imported for any batch
    assert gm.source_format == "pt2" and gm.input_shape == SMALL
    assert {nn.Conv2d, nn.Linear, nn.MaxPool2d} <= {type(m) for m in gm.modules()}


def test_model_file_errors(tmp_path: Path) -> None:
    assert ".onnx" in MODEL_FILE_SUFFIXES and ".pt2" in MODEL_FILE_SUFFIXES
    state = tmp_path / "weights.pt"
    torch.save(SmallNet().state_dict(), state)
    scripted = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(SmallNet().eval()), str(scripted))
    corrupt_pt, corrupt_onnx, odd = tmp_path / "bad.pt", tmp_path / "bad.onnx", tmp_path / "net.h5"
    corrupt_pt.write_bytes(b"PK\x03\x04 not really a zip")
    corrupt_onnx.write_bytes(b"\x08\x07\x12\xff\xff\xff garbage")
    odd.write_bytes(b"x")
    pickled = tmp_path / "module.pth"
    torch.save(nn.ReLU(), pickled)
    cases = [
        (state, None, "a state dict, not a model: pass it as --weights with a builder"),
        (scripted, None, "--input-shape"),
        (corrupt_pt, SMALL, "not a TorchScript, torch.export (.pt2) or ONNX model"),
        (corrupt_onnx, None, "not a readable ONNX model"),
        (tmp_path / "missing.onnx", None, "no such model file"),
        (odd, None, "unknown model file suffix '.h5'"),
        (tmp_path, None, "not a file"),
        (pickled, None, "a torch.save pickle, not a model file"),
    ]
    for path, shape, message in cases:
        with pytest.raises(ModelError) as err:
            load_model_file(path, input_shape=shape)
        text = str(err.value)
        assert message in text and str(path) in text and "\n" not in text, text


# ---------------------------------------------------------------------------------------------- refusals


def _refused(proto: Any) -> str:
    with pytest.raises(ModelError) as err:
        import_onnx(proto)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_unsupported_op_names_the_node() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="act"), helper.make_node("Sin", ["a"], ["y"], name="wave")]
    text = _refused(_graph(nodes, {}, ["N", 3]))
    assert text == ("ONNX model: ONNX node 'wave' (Sin): not supported by the ONNX import "
                    "(no mapping to torch for this op)")


def test_unsupported_op_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sin.onnx"
    onnx.save(_graph([helper.make_node("Sin", ["x"], ["y"], name="wave")], {}, ["N", 3]), str(path))
    with pytest.raises(ModelError, match=r"sin\.onnx: ONNX node 'wave' \(Sin\): not supported"):
        load_model_file(path)


@pytest.mark.parametrize("node,inits,shape,message", [
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="r", mode="cubic"),
     {"s": np.array([1, 1, 2, 2], np.float32)}, ["N", 2, 3, 3],
     "'r' (Resize): not supported by the ONNX import (mode=cubic)"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="r", mode="nearest"),
     {"s": np.array([1, 1, 1.5, 1.5], np.float32)}, ["N", 2, 4, 4], "nearest with"),
    (helper.make_node("HardSigmoid", ["x"], ["y"], name="h", alpha=0.2), {}, ["N", 3], "alpha=0.2, beta=0.5"),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", output_shape=[5, 5]),
     {"w": _rand(2, 2, 3, 3)}, ["N", 2, 3, 3], "output_shape"),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", auto_pad="SAME_UPPER", strides=[2, 2]),
     {"w": _rand(2, 2, 3, 3)}, ["N", 2, 3, 3], "auto_pad=SAME_UPPER"),
    (helper.make_node("DepthToSpace", ["x"], ["y"], name="d", blocksize=2, mode="XYZ"), {}, ["N", 4, 2, 2],
     "mode=XYZ"),
    (helper.make_node("Conv", ["x", "w"], ["y"], name="c"), {"w": _rand(2, 2, 1, 1, 1)}, ["N", 2, 3, 3, 3],
     "3-D convolution"),
    (helper.make_node("Flatten", ["x"], ["y"], name="f", axis=2), {}, ["N", 2, 3, 3], "merges the batch axis"),
    (helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[1, 0, 2]), {}, ["N", 2, 3], "moves the batch"),
    (helper.make_node("Conv", ["x", "x"], ["y"], name="c"), {}, ["N", 2, 1, 1], "computed at run time"),
    (helper.make_node("Reshape", ["x", "s"], ["y"], name="rs"), {"s": np.array([2, -1], np.int64)},
     ["N", 4, 3], "moves data across the batch axis"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                      ceil_mode=1), {}, ["N", 2, 7, 7], "(torch computes shape (1, 2, 4, 4), ONNX (1, 2, 5, 5))"),
])
def test_unmappable_attributes_are_refused(node: Any, inits: dict[str, np.ndarray], shape: list[Any],
                                           message: str) -> None:
    assert message in _refused(_graph([node], inits, shape))


def test_batch_dependent_constant_is_refused() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["ones"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Add", ["x", "ones"], ["y"], name="plus")]
    assert "'plus' (Add)" in (text := _refused(_graph(nodes, {}, ["N", 3, 4]))) and "batch size" in text


def test_two_inputs_or_outputs_are_refused() -> None:
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in "ab"],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert "has 2 inputs ('a', 'b')" in _refused(helper.make_model(g))
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "yz"])
    assert "has 2 outputs" in _refused(helper.make_model(g))
