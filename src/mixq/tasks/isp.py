"""The AI-ISP denoising task of ``mixq isp`` and ``benchmarks/unet_isp.py``: photos, camera noise, metrics,
the training objective, quantization at each precision, and evaluation on held-out photos.

* Photos: the colour photos shipped in installed packages (:func:`mixq.data.natural_photos`: scikit-image and
  scikit-learn; :func:`mixq.data.foolbox_samples`: foolbox's 20 ImageNet JPEGs), split **by photo**
  (:func:`split_photos`: every ``TEST_EVERY``-th photo of the fixed order is held out; no photo is on both sides).
* Noise (:func:`add_noise`): Poisson-Gaussian, ``y = a * Poisson(x / a) + N(0, b^2)`` on the clean signal
  ``x`` in [0, 1], so ``E[y] = x`` and ``Var[y] = a x + b^2`` (shot noise + read noise); not clipped (a raw
  signal after black-level subtraction goes below 0). Levels in :data:`NOISE_LEVELS`.
* Metrics: :func:`psnr` (peak 1) and :func:`ssim` (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03, valid region, mean over channels; equal to scikit-image's
  ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``).
* Baselines: a Gaussian filter (sigma chosen per level on training photos) and scikit-image's non-local means
  when it is installed (:func:`baselines`).
* Training: the one trainer (:func:`mixq.training.fit`) minimises cross-entropy against labels; the
  :class:`DenoiseObjective` wrapper turns any loss ``L >= 0`` into exactly that: logits ``(0, log(e^L - 1))``
  against class 0 have cross-entropy ``log(1 + e^L - 1) = L``. It draws fresh noise for every batch. Float
  training is called by the CLI (:mod:`mixq.cli.isp`; ``tasks`` may not import ``training``); QAT
  (:func:`qat_denoiser`) runs on :func:`mixq.algorithms.qat.fit`, the same loop.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixq.errors import DataError, OptionError

#: every TEST_EVERY-th photo (of natural photos then foolbox's, in order) is held out
TEST_EVERY = 4


@dataclass(frozen=True)
class NoiseLevel:
    """Poisson-Gaussian noise: ``Var[y] = a * x + b**2`` for a clean value ``x`` in [0, 1]."""

    a: float
    b: float

    def std_at(self, x: float) -> float:
        return math.sqrt(self.a * x + self.b**2)


NOISE_LEVELS: dict[str, NoiseLevel] = {
    "low": NoiseLevel(a=0.002, b=0.01),
    "mid": NoiseLevel(a=0.01, b=0.02),
    "high": NoiseLevel(a=0.04, b=0.04),
}

#: the precisions of the study: name -> (weight bits, activation bits)
PRECISIONS: dict[str, tuple[int, int]] = {"w8a8": (8, 8), "w4a4": (4, 4), "w2a2": (2, 2)}
#: the U-Net's layers that touch the image — the convs reading the noisy input and the head that writes the
#: residual — stay at W8A8 below 8 bits (an image needs 8-bit codes in and out)
IMAGE_LAYERS = ("enc.0.0", "skip", "head")


# ----------------------------------------------------------------------------- photos


def load_photos() -> list[torch.Tensor]:
    """Every shipped colour photo as float (3, H, W) in [0, 1]: the natural photos, then foolbox's ImageNet
    images (when foolbox is installed)."""
    from mixq.data import foolbox_samples, natural_photos, to_float_chw

    photos = [to_float_chw(p) for p in natural_photos()]
    with contextlib.suppress(DataError):
        photos.extend(to_float_chw(p) for p in foolbox_samples("imagenet")[0])
    return photos


def split_photos(n: int, every: int = TEST_EVERY) -> tuple[list[int], list[int]]:
    """(train, test) photo indices: every ``every``-th photo is held out.

    >>> split_photos(9, 4)
    ([1, 2, 3, 5, 6, 7], [0, 4, 8])
    """
    test = list(range(0, n, every))
    return [i for i in range(n) if i % every], test


def random_patches(photos: Sequence[torch.Tensor], n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` clean (3, size, size) patches, photo ``i % len(photos)`` for patch ``i`` at a seeded random place,
    with a random flip and 90-degree rotation."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        src = photos[i % len(photos)]
        h, w = int(src.shape[1]), int(src.shape[2])
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        p = src[:, top : top + size, left : left + size]
        if bool(torch.rand(1, generator=gen) < 0.5):
            p = p.flip(-1)
        out[i] = torch.rot90(p, int(torch.randint(0, 4, (1,), generator=gen)), (1, 2))
    return out


def read_photo(path: Any) -> torch.Tensor:
    """An image file as float (3, H, W) in [0, 1] (a missing or broken file: one ``DataError`` naming it)."""
    from mixq.data import read_image, to_float_chw

    return to_float_chw(read_image(path))


def center_crops(photos: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` crop of each photo, stacked."""
    crops = []
    for p in photos:
        h, w = int(p.shape[1]), int(p.shape[2])
        if min(h, w) < size:
            raise DataError(f"photo of {h}x{w} is smaller than the {size}x{size} crop")
        top, left = (h - size) // 2, (w - size) // 2
        crops.append(p[:, top : top + size, left : left + size])
    return torch.stack(crops)


# ----------------------------------------------------------------------------- noise and metrics


def add_noise(x: torch.Tensor, a: float | torch.Tensor, b: float | torch.Tensor,
              gen: torch.Generator | None = None) -> torch.Tensor:
    """Poisson-Gaussian noise on the clean signal ``x`` (>= 0): ``a * Poisson(x / a) + b * N(0, 1)``.
    ``a`` / ``b`` may be per-sample tensors of shape (N, 1, 1, 1)."""
    a_t = torch.as_tensor(a, dtype=x.dtype)
    shot = torch.poisson(x.clamp_min(0) / a_t, generator=gen) * a_t
    return shot + torch.as_tensor(b, dtype=x.dtype) * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def noisy_set(clean: torch.Tensor, level: str, seed: int) -> torch.Tensor:
    """``clean`` with the noise of ``level`` (a fixed draw for ``seed``)."""
    nl = NOISE_LEVELS[level]
    return add_noise(clean, nl.a, nl.b, torch.Generator().manual_seed(seed))


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image of ``x`` against ``ref`` (peak 1; ``x`` clipped to [0, 1] first).

    >>> round(float(psnr(torch.full((1, 3, 4, 4), 0.1), torch.zeros(1, 3, 4, 4))[0]), 6)
    20.0
    """
    mse = ((x.clamp(0, 1) - ref) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-20))


def gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``2 * radius + 1`` taps."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, k: torch.Tensor, pad: str | None) -> torch.Tensor:
    """Separable filtering of every channel of (N, C, H, W) with the 1-D kernel ``k`` (``pad``: reflect or
    None for the valid region)."""
    c, r = x.shape[1], k.numel() // 2
    if pad is not None:
        x = F.pad(x, (r, r, r, r), mode=pad)
    kk = k.to(x.dtype)
    x = F.conv2d(x, kk.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kk.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each image (N, C, H, W) of ``x`` (clipped to [0, 1]) against ``ref`` (module doc)."""
    x, y = x.clamp(0, 1).double(), ref.double()
    k = gaussian_kernel(1.5, 5)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, k, None), _blur(y, k, None)
    vx = _blur(x * x, k, None) - mx * mx
    vy = _blur(y * y, k, None) - my * my
    cxy = _blur(x * y, k, None) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


# ----------------------------------------------------------------------------- baselines


def gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian filter (reflected borders, radius ``ceil(3 sigma)``)."""
    return _blur(x.double(), gaussian_kernel(sigma, max(1, math.ceil(3 * sigma))), "reflect").float()


GAUSS_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5)


def best_gauss_sigma(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """The sigma of :data:`GAUSS_SIGMAS` with the best mean PSNR on (clean, noisy) training patches."""
    scores = [float(psnr(gaussian_filter(noisy, s), clean).mean()) for s in GAUSS_SIGMAS]
    return GAUSS_SIGMAS[int(np.argmax(scores))]


def nl_means(noisy: torch.Tensor, level: NoiseLevel) -> torch.Tensor | None:
    """scikit-image's non-local means (fast mode, 5x5 patches, 13x13 search, ``h = 0.8 sigma``; sigma the noise
    model's at the image's mean level); None when scikit-image is not installed."""
    try:
        from skimage.restoration import denoise_nl_means
    except ImportError:
        return None
    out = []
    for img in noisy.clamp(0, 1).permute(0, 2, 3, 1).double().numpy():
        sig = level.std_at(float(img.mean()))
        out.append(denoise_nl_means(img, h=0.8 * sig, sigma=sig, patch_size=5, patch_distance=6, fast_mode=True,
                                    channel_axis=-1))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


# ----------------------------------------------------------------------------- training objective


class DenoiseObjective(nn.Module):
    """What the one trainer trains: fresh Poisson-Gaussian noise on the clean batch (each image at a level drawn
    from ``levels``, global torch RNG — seeded by the trainer), the denoiser, and its mean squared error written
    as 2-class logits whose cross-entropy against label 0 equals it (module doc).

    With a ``teacher`` (a float denoiser, frozen: not a submodule, so neither trained nor checkpointed) and
    ``kd_alpha`` > 0 the error is the regression distillation loss
    ``(1 - kd_alpha) * MSE(net(y), x) + kd_alpha * MSE(net(y), teacher(y))`` on the same noisy batch ``y``:
    the teacher's output is a low-variance target (its estimate of the clean image given ``y``) beside the
    noisy-gradient one of the clean patch."""

    def __init__(self, net: nn.Module, levels: Sequence[NoiseLevel], teacher: nn.Module | None = None,
                 kd_alpha: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= kd_alpha <= 1.0:
            raise OptionError(f"DenoiseObjective: kd_alpha must be in [0, 1], got {kd_alpha!r}")
        if kd_alpha > 0 and teacher is None:
            raise OptionError("DenoiseObjective: kd_alpha > 0 needs a teacher")
        self.net = net
        self.levels = torch.tensor([[lv.a, lv.b] for lv in levels])
        self.kd_alpha = float(kd_alpha)
        # a copy: moving it to the batch's device must leave the caller's model where it is
        self._teacher = (copy.deepcopy(teacher).eval(),) if teacher is not None and kd_alpha > 0 else ()

    def forward(self, clean: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(0, self.levels.shape[0], (clean.shape[0],))
        ab = self.levels[pick].to(clean.device).view(-1, 2, 1, 1)
        a, b = ab[:, :1], ab[:, 1:]
        noisy = add_noise(clean, a, b)
        out = self.net(noisy)
        mse = ((out - clean) ** 2).flatten(1).mean(1)
        if self._teacher:
            teacher = self._teacher[0].to(clean.device)
            with torch.no_grad():
                target = teacher(noisy)
            kd = ((out - target) ** 2).flatten(1).mean(1)
            mse = (1 - self.kd_alpha) * mse + self.kd_alpha * kd
        mse = mse.clamp_min(1e-12)
        return torch.stack([torch.zeros_like(mse), torch.log(torch.expm1(mse))], 1)


def train_labels(clean: torch.Tensor) -> torch.Tensor:
    """The trainer's labels for :class:`DenoiseObjective`: class 0 for every patch."""
    return torch.zeros(clean.shape[0], dtype=torch.int64)


def objective_loss(net: nn.Module, clean: torch.Tensor, levels: Sequence[NoiseLevel], seed: int) -> float:
    """The mean squared error of ``net`` on ``clean`` with seeded noise (the loss the trainer sees)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        logits = DenoiseObjective(net, levels).eval()(clean)
    return float(F.cross_entropy(logits, train_labels(clean)))


# ----------------------------------------------------------------------------- quantization


def calibration_inputs(clean: torch.Tensor, seed: int) -> torch.Tensor:
    """Noisy calibration inputs: the clean patches with each noise level in turn."""
    names = list(NOISE_LEVELS)
    return torch.cat([noisy_set(clean[i :: len(names)], lv, seed + i) for i, lv in enumerate(names)])


def precision_plan(name: str, model: nn.Module, calib: torch.Tensor) -> Any:
    """The plan of ``name`` (:data:`PRECISIONS`): per-channel signed narrow weights, activations signed where
    the data is (the noisy input), the :data:`IMAGE_LAYERS` at W8A8."""
    from mixq import api

    if name not in PRECISIONS:
        raise OptionError(f"precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    wb, ab = PRECISIONS[name]
    plan = api.default_plan("unet", model, calib, weight=replace(api.W8, bits=wb), act=replace(api.A8, bits=ab))
    for layer in IMAGE_LAYERS:
        if layer in plan.layers:
            lp = plan.layers[layer]
            signed = bool(getattr(lp.act, "signed", False))
            plan = plan.with_layer(layer, lp.with_(weight=api.W8, act=replace(api.A8, signed=signed)))
    return plan


def share_input_quantizer(q: nn.Module) -> nn.Module:
    """Give ``skip`` the input quantizer (scale) of ``enc.0.0``: both read the noisy image, and one quantizer
    of the network input is what the single engine lowers (a second one, which QAT's learned steps or a
    recipe's ranges can make, has no conv form). Both are 8-bit; the model is evaluated after this."""
    first, skip = q.get_submodule("enc.0.0"), q.get_submodule("skip")
    fq, sq = getattr(first, "input_quant", None), getattr(skip, "input_quant", None)
    src, dst = getattr(fq, "scale", None), getattr(sq, "scale", None)
    if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
        with torch.no_grad():
            dst.copy_(src)
    return q


def ptq_denoiser(model: nn.Module, name: str, calib: torch.Tensor, recipe: str = "plan") -> nn.Module:
    """``model`` quantized at precision ``name`` with a PTQ recipe on ``calib`` (noisy inputs), one input
    quantizer (:func:`share_input_quantizer`)."""
    from mixq import api

    return share_input_quantizer(api.quantize(model.eval(), precision_plan(name, model, calib), calib,
                                              recipe=recipe))


@dataclass(frozen=True)
class QatSettings:
    """A short QAT run: epochs, batch, Adam peak learning rate (cosine decay to ``min_lr``; the quantizer steps
    at ``scale_lr``, None: ``lr``), seed, threads, and where the steps start (``init``): ``"observer"`` — the
    plan's layers calibrated afresh with the ``observer`` (``mse``, ``minmax``, ``percentile``), or the name of
    a PTQ recipe (``plan``, ``dfq``, ...) whose quantized model (:func:`ptq_denoiser`: its weights, e.g. DFQ's
    equalized and bias-corrected ones, and its scales) QAT then trains. ``kd_alpha``: the weight of the
    regression distillation from a float teacher (:class:`DenoiseObjective`; 0: the plain MSE against the clean
    patch)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-4
    seed: int = 0
    threads: int | None = 1
    min_lr: float = 0.0
    scale_lr: float | None = None
    init: str = "observer"
    observer: str = "mse"
    kd_alpha: float = 0.0


def qat_denoiser(model: nn.Module, name: str, clean: torch.Tensor, calib: torch.Tensor, settings: QatSettings,
                 folder: Any, teacher: nn.Module | None = None) -> nn.Module:
    """QAT of ``model`` at precision ``name`` on the clean patches (fresh noise every batch, all levels):
    LSQ steps initialised by PTQ on ``calib`` (``settings.init``: the plan calibrated with an observer, or a PTQ
    recipe's model, see :class:`QatSettings`), the one trainer through :func:`mixq.algorithms.qat.fit`
    (checkpoint in ``folder``); the plain quantized model the integer engine reads. With ``settings.kd_alpha``
    > 0 the loss distills from ``teacher`` (None: ``model`` itself, the float model QAT starts from)."""
    from pathlib import Path

    from mixq.algorithms.ptq.recipes import RECIPES
    from mixq.algorithms.qat import QatConfig, export_plain, fit, prepare_qat
    from mixq.algorithms.qat.modules import qat_from_quantized

    cfg = QatConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, optimizer="adam",
                    seed=settings.seed, threads=settings.threads, augment=False, weight_decay=0.0,
                    eval_every_epoch=False, kd_alpha=0.0, calib_images=int(calib.shape[0]),
                    min_lr=settings.min_lr, scale_lr=settings.scale_lr, init_observer=settings.observer)
    if settings.init != "observer" and settings.init not in RECIPES:
        raise OptionError(f"QatSettings.init: {settings.init!r} is neither 'observer' nor a PTQ recipe "
                          f"({', '.join(RECIPES)})")
    if settings.init == "observer":
        qmodel = prepare_qat(model, precision_plan(name, model, calib), calib, cfg)
    else:
        qmodel = qat_from_quantized(ptq_denoiser(model, name, calib, settings.init), cfg.weight_quant,
                                    cfg.act_quant)
    ckpt = Path(folder) / f"qat-{name}.pt"
    ckpt.unlink(missing_ok=True)
    objective = DenoiseObjective(qmodel, list(NOISE_LEVELS.values()), teacher if teacher is not None else model,
                                 settings.kd_alpha)
    fit(objective, clean, train_labels(clean), cfg, ckpt, desc="isp qat")
    return share_input_quantizer(export_plain(qmodel).eval())


# ----------------------------------------------------------------------------- evaluation


Denoiser = Callable[[torch.Tensor], torch.Tensor]


def run_model(model: nn.Module, batch_size: int = 8) -> Denoiser:
    """A model as a batched, gradient-free denoiser (eval mode)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.eval()(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    return run


def scores(out: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of ``out`` against ``clean``, rounded."""
    return {"psnr": round(float(psnr(out, clean).mean()), 3), "ssim": round(float(ssim(out, clean).mean()), 4)}


def evaluate(denoise: Denoiser, clean: torch.Tensor, levels: Sequence[str], seed: int) -> dict[str, dict[str, float]]:
    """PSNR / SSIM of ``denoise`` on ``clean`` at each noise level (noise drawn with ``seed + level index``)."""
    return {lv: scores(denoise(noisy_set(clean, lv, seed + i)), clean)
            for i, lv in enumerate(NOISE_LEVELS) if lv in levels}


def baselines(clean: torch.Tensor, train_clean: torch.Tensor, seed: int) -> dict[str, dict[str, Any]]:
    """The classical references at every level: the noisy input, the best Gaussian filter, NL-means."""
    out: dict[str, dict[str, Any]] = {"noisy": {}, "gaussian": {}, "nl_means": {}}
    for i, lv in enumerate(NOISE_LEVELS):
        noisy = noisy_set(clean, lv, seed + i)
        sigma = best_gauss_sigma(train_clean, noisy_set(train_clean, lv, seed + 100 + i))
        out["noisy"][lv] = scores(noisy, clean)
        out["gaussian"][lv] = {**scores(gaussian_filter(noisy, sigma), clean), "sigma": sigma}
        nlm = nl_means(noisy, NOISE_LEVELS[lv])
        if nlm is not None:
            out["nl_means"][lv] = scores(nlm, clean)
    if not out["nl_means"]:
        del out["nl_means"]
    return out
