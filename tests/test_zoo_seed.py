"""The seed designs' networks in the zoo: MobileNet-V1, ResNet-50 and ResNet-152 (torchvision layouts)."""

from __future__ import annotations

import pytest
import torch

from mixq import zoo
from mixq.graph.capture import capture

pytestmark = pytest.mark.usefixtures("one_thread")

# Published parameter counts (torchvision.models.resnet50 / resnet152; MobileNet-V1 width 1.0 with BN and a
# 1024 -> 1000 Linear) and state-dict sizes; multiply-accumulates per 224x224 image.
PUBLISHED = {
    "resnet50": (25_557_032, 320, 4_089_184_256),
    "resnet152": (60_192_808, 932, 11_513_626_624),
    "mobilenet_v1": (4_231_976, 164, 568_740_352),
}
KEYS = {
    "resnet50": {
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer4.2.bn3.running_var": (2048,),
        "fc.weight": (1000, 2048),
    },
    "resnet152": {
        "layer3.35.conv3.weight": (1024, 256, 1, 1),
        "layer4.0.downsample.1.weight": (2048,),
        "fc.bias": (1000,),
    },
    "mobilenet_v1": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.0.weight": (32, 1, 3, 3),
        "features.1.3.weight": (64, 32, 1, 1),
        "features.13.3.weight": (1024, 1024, 1, 1),
        "features.13.4.running_mean": (1024,),
        "classifier.weight": (1000, 1024),
    },
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_layout(name: str) -> None:
    model = zoo.load(name)
    n_params, n_keys, _ = PUBLISHED[name]
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert len(sd) == n_keys
    for key, shape in KEYS[name].items():
        assert tuple(sd[key].shape) == shape, key
    assert zoo.input_shape(name) == (3, 224, 224)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v1"])
def test_forward_shape(name: str) -> None:
    model = zoo.load(name, num_classes=7).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 224, 224))
    assert y.shape == (2, 7) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_capture(name: str) -> None:
    specs = capture(zoo.load(name).eval(), (3, 224, 224))
    compute = [s for s in specs if s.is_compute]
    _, _, macs = PUBLISHED[name]
    assert sum(s.macs for s in compute) == macs
    convs = {"resnet50": 53, "resnet152": 155, "mobilenet_v1": 27}[name]  # + the classifier
    assert len(compute) == convs + 1
    if name == "mobilenet_v1":
        dw = [s for s in compute if s.groups > 1]
        assert [s.name for s in dw][:2] == ["features.1.0", "features.2.0"] and len(dw) == 13
        assert compute[-1].name == "classifier"
    else:
        assert compute[0].name == "conv1" and compute[-1].name == "fc"
        assert sum(1 for s in specs if s.kind == "add") == {"resnet50": 16, "resnet152": 50}[name]


def test_existing_resnets_unchanged() -> None:
    """ResNet-18 and ResNet-20 keep their torchvision / He et al. layouts after the bottleneck was added."""
    r18 = zoo.load("resnet18")
    assert sum(p.numel() for p in r18.parameters()) == 11_689_512 and len(r18.state_dict()) == 122
    r20 = zoo.load("resnet20")
    assert sum(p.numel() for p in r20.parameters()) == 272_474
