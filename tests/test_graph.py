"""mixq.graph: capture to LayerSpec (MACs, edges, fallback), BN folding, module swap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq import zoo
from mixq.errors import ModelError
from mixq.graph import (
    LayerSpec,
    capture,
    compute_layers,
    fold_bn,
    foldable_pairs,
    named_compute_layers,
    summary_table,
    swap_modules,
    total_macs,
)

# Exact MACs per sample (conv + linear) at the zoo's default input sizes.
# ResNet-18: 1,814,073,344 = 1.814 G. The often quoted 1,814,073,856 is 512 more: profilers such as
# thop also count one op per output of the 512-channel global average pool, which is not a MAC.
RESNET18_MACS = 1_814_073_344
MOBILENET_V2_MACS = 300_774_272  # 300.8 M
VGG16_MACS = 15_470_264_320  # 15.47 G
RESNET20_MACS = 40_813_184  # 40.8 M with 1x1-conv shortcuts (option B, the zoo default)
RESNET20_A_MACS = 40_551_040  # option A (zero-pad shortcuts): no shortcut convs


def _check_edges(specs: list[LayerSpec]) -> None:
    by_name = {s.name: s for s in specs}
    assert len(by_name) == len(specs), "spec names must be unique"
    for s in specs:
        for p in s.inputs:
            assert s.name in by_name[p].outputs, (p, s.name)
        for c in s.outputs:
            assert s.name in by_name[c].inputs, (s.name, c)


def _capture_zoo(name: str) -> tuple[nn.Module, list[LayerSpec]]:
    model = zoo.load(name)
    return model, capture(model, zoo.input_shape(name))


def test_resnet18_capture() -> None:
    model, specs = _capture_zoo("resnet18")
    assert total_macs(specs) == RESNET18_MACS
    assert round(total_macs(specs) / 1e9, 3) == 1.814
    assert sum(s.params for s in specs) == sum(p.numel() for p in model.parameters()) == 11_689_512
    _check_edges(specs)
    assert specs[0].name == "input"
    assert all(s.extra["support"] == "ok" for s in specs[1:])
    by_name = {s.name: s for s in specs}
    conv1 = by_name["conv1"]
    assert (conv1.kind, conv1.in_shape, conv1.out_shape) == ("conv", (3, 224, 224), (64, 112, 112))
    assert (conv1.kernel, conv1.stride, conv1.padding, conv1.macs) == ((7, 7), (2, 2), (3, 3), 118_013_952)
    assert by_name["fc"].kind == "linear" and by_name["fc"].macs == 512 * 1000 and by_name["fc"].bias
    assert by_name["avgpool"].kind == "gap" and by_name["maxpool"].kind == "maxpool"
    adds = [s for s in specs if s.kind == "add"]
    assert len(adds) == 8 and all(len(a.inputs) == 2 for a in adds)
    # the first block's residual: the block's last BN plus the stem's max pool output
    assert set(adds[0].inputs) == {"layer1.0.bn2", "maxpool"}
    # a downsampling block: main path plus the 1x1-conv shortcut
    assert set(by_name["add_2"].inputs) == {"layer2.0.bn2", "layer2.0.downsample.1"}
    # torchvision's shared block ReLU: second call named with ":1"
    assert by_name["layer1.0.relu:1"].inputs == (adds[0].name,)
    assert len(compute_layers(specs)) == 21
    table = summary_table(specs)
    assert "layer4.1.conv2" in table and f"{RESNET18_MACS:,}" in table


def test_mobilenet_v2_capture() -> None:
    model, specs = _capture_zoo("mobilenet_v2")
    assert total_macs(specs) == MOBILENET_V2_MACS
    assert round(total_macs(specs) / 1e6, 1) == 300.8
    assert sum(s.params for s in specs) == 3_504_872
    _check_edges(specs)
    kinds = [s.kind for s in specs]
    assert kinds.count("dwconv") == 17 and kinds.count("conv") == 35 and kinds.count("relu6") == 35
    dw = next(s for s in specs if s.name == "features.1.conv.0.0")
    assert (dw.kind, dw.groups, dw.in_channels, dw.row_length, dw.macs) == ("dwconv", 32, 32, 9, 32 * 112 * 112 * 9)
    adds = [s for s in specs if s.kind == "add"]
    assert len(adds) == 10 and all(len(a.inputs) == 2 for a in adds)
    assert adds[0].inputs == ("features.2.conv.3", "features.3.conv.3")
    assert specs[-1].name == "classifier.1" and specs[-1].inputs == ("flatten",)  # Dropout is passed through


def test_vgg16_capture() -> None:
    _, specs = _capture_zoo("vgg16")
    assert total_macs(specs) == VGG16_MACS
    assert round(total_macs(specs) / 1e9, 2) == 15.47
    _check_edges(specs)
    assert [s.kind for s in specs].count("conv") == 13 and len(compute_layers(specs)) == 16
    pool = next(s for s in specs if s.name == "avgpool")
    assert (pool.kind, pool.out_shape, pool.kernel) == ("avgpool", (512, 7, 7), (1, 1))
    # every spec feeds the next one: a plain chain
    assert all(b.inputs == (a.name,) for a, b in zip(specs, specs[1:], strict=False))


def test_resnet20_capture() -> None:
    model, specs = _capture_zoo("resnet20")
    assert total_macs(specs) == RESNET20_MACS
    from mixq.zoo.resnet import resnet20

    specs_a = capture(resnet20(shortcut="A"), (3, 32, 32))
    assert total_macs(specs_a) == RESNET20_A_MACS
    _check_edges(specs_a)
    assert all(len(s.inputs) == 2 for s in specs_a if s.kind == "add")


class _Untraceable(nn.Module):
    """Data-dependent control flow (FX cannot trace it), a residual add, a concat and a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > -1e9:  # data-dependent
            y = self.relu(y + self.branch(y))
        z = torch.cat([y, self.branch(y)], dim=1)
        return self.fc(torch.flatten(z, 1))


def test_untraceable_model_is_refused_with_the_onnx_route() -> None:
    with pytest.raises(ModelError, match=r"capture: torch.fx cannot trace _Untraceable .*torch.onnx.export"):
        capture(_Untraceable(), (3, 4, 4))


def test_capture_does_not_change_the_model() -> None:
    resnet = zoo.load("resnet20").train()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (resnet,)]
    capture(resnet, (3, 32, 32))
    for m, sd in zip((resnet,), before, strict=True):
        assert m.training
        assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
        assert not m._forward_hooks and not m._forward_pre_hooks
    with pytest.raises(ModelError, match="input_shape"):
        capture(resnet, ())
    with pytest.raises(ModelError, match="forward"):
        capture(resnet, (1, 32, 32))


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


class _ConvBNLinearBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 6 * 6, 10, bias=False)
        self.bn1d = nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1d(self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1)))


@pytest.mark.parametrize(
    ("name", "shape", "n_bn"),
    [("resnet18", (3, 64, 64), 20), ("mobilenet_v2", (3, 64, 64), 52), ("small", (3, 8, 8), 2)],
)
def test_fold_bn_matches_eval_output(name: str, shape: tuple[int, ...], n_bn: int) -> None:
    model = _randomize_bn(_ConvBNLinearBN() if name == "small" else zoo.load(name))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_bn(model)
    assert sum(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in folded.modules()) == 0
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) == n_bn
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert _rel_err(out, ref) < 1e-5
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())  # input untouched


class _SharedOutput(nn.Module):
    """conv output read by the BN and by the residual: folding would change the residual, so it must not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn2(self.conv2(self.bn(y) + y))


def test_fold_bn_only_safe_pairs() -> None:
    model = _randomize_bn(_SharedOutput())
    assert foldable_pairs(model) == [("conv2", "bn2")]
    folded = fold_bn(model)
    assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert _rel_err(folded(x), model(x)) < 1e-5
    with pytest.raises(ModelError, match="fold_bn: torch.fx cannot trace _Untraceable"):
        fold_bn(_randomize_bn(_Untraceable()), input_shape=(3, 4, 4))


def test_swap_modules_and_compute_layers() -> None:
    model = zoo.load("resnet18")
    names = [n for n, _ in named_compute_layers(model)]
    assert len(names) == 21 and names[0] == "conv1" and names[-1] == "fc"
    assert names[5:8] == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"]  # forward order

    class Tagged(nn.Conv2d):
        pass

    seen: list[str] = []

    def to_tagged(name: str, m: nn.Module) -> nn.Module | None:
        seen.append(name)
        if type(m) is not nn.Conv2d:
            return None
        new = Tagged(m.in_channels, m.out_channels, 1, bias=False)
        new.kernel_size, new.stride, new.padding = m.kernel_size, m.stride, m.padding
        new.weight = m.weight
        return new

    swapped = swap_modules(model, to_tagged)
    assert "layer1.0.relu" in seen and "layer1.0" not in seen  # leaves only
    assert sum(isinstance(m, Tagged) for m in swapped.modules()) == 20
    assert not any(isinstance(m, Tagged) for m in model.modules())  # input untouched
    assert [n for n, _ in named_compute_layers(swapped)] == names  # subclasses still count
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(swapped.eval()(x), model.eval()(x))
    # a module registered twice keeps being shared after the swap
    shared = nn.ReLU()
    seq = nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2), shared)
    out = swap_modules(seq, lambda n, m: nn.ReLU6() if isinstance(m, nn.ReLU) else None)
    assert isinstance(out[1], nn.ReLU6) and out[1] is out[3]
    with pytest.raises(ModelError, match="not an nn.Module"):
        swap_modules(seq, lambda n, m: 3)  # type: ignore[arg-type, return-value]
