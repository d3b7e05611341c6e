"""Model definitions (torchvision-compatible module names) and real-weight loaders.

``load(name, pretrained=False)`` is the one entry point; the registry is an
explicit dict, filled by explicit imports.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mixq.errors import ModelError

# name -> (builder module, builder function, default input shape (C, H, W), num_classes)
_REGISTRY: dict[str, tuple[str, str, tuple[int, int, int], int]] = {
    "cnv": ("mixq.zoo.cnv", "cnv", (1, 28, 28), 10),
    "resnet18": ("mixq.zoo.resnet", "resnet18", (3, 224, 224), 1000),
    "resnet20": ("mixq.zoo.resnet", "resnet20", (3, 32, 32), 10),
    "resnet50": ("mixq.zoo.resnet", "resnet50", (3, 224, 224), 1000),
    "resnet152": ("mixq.zoo.resnet", "resnet152", (3, 224, 224), 1000),
    "mobilenet_v1": ("mixq.zoo.mobilenet_v1", "mobilenet_v1", (3, 224, 224), 1000),
    "mobilenet_v2": ("mixq.zoo.mobilenet", "mobilenet_v2", (3, 224, 224), 1000),
    "vgg16": ("mixq.zoo.vgg", "vgg16", (3, 224, 224), 1000),
    "unet": ("mixq.zoo.unet", "unet", (3, 64, 64), 3),
}

# name -> (module, function(model) -> model) loading real weights into a built model
_PRETRAINED: dict[str, tuple[str, str]] = {
    "cnv": ("mixq.zoo.cnv", "load_pretrained"),
    "mobilenet_v2": ("mixq.zoo.pretrained", "load_mobilenet_v2"),
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def input_shape(name: str) -> tuple[int, int, int]:
    """Default input shape (C, H, W) of a zoo model."""
    return _entry(name)[2]


def _entry(name: str) -> tuple[str, str, tuple[int, int, int], int]:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def _resolve(module: str, func: str) -> Callable[..., nn.Module]:
    import importlib

    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def load(name: str, pretrained: bool = False, num_classes: int | None = None) -> nn.Module:
    """Build a zoo model; with ``pretrained`` load its real weights (eval mode)."""
    mod, fn, _, default_classes = _entry(name)
    model = _resolve(mod, fn)(num_classes=num_classes or default_classes)
    if pretrained:
        if name not in _PRETRAINED:
            raise ModelError(
                f"no pretrained weights for {name!r}; pretrained models: {', '.join(sorted(_PRETRAINED))}"
            )
        model = _resolve(*_PRETRAINED[name])(model)
        model.eval()
    return model
