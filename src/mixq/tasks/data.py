"""The inputs of a model: a ``--calib`` / ``--eval`` source, a model's default data, an artifact's recorded data.

Every loader names the option or file it reads in its one-line error (:class:`~mixq.errors.DataError` /
:class:`~mixq.errors.OptionError`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from mixq import data, zoo
from mixq.data.sources import CALIB_PATH, KEYWORDS, ImageSet, Preprocess, has_image_preset, load_images, load_signals
from mixq.errors import DataError, MixqError, OptionError

FMNIST_SETS = ("fmnist-subset", "fmnist")


def load_source(source: str, pre: Preprocess | None, limit: int | None, option: str,
                shape: tuple[int, ...] = ()) -> ImageSet:
    """The images of a ``--calib`` / ``--eval`` source (:func:`mixq.data.sources.load_images`): the
    keywords take their first ``limit`` images, a folder or an .npz file a seeded random subset (so a
    folder of class subfolders gives every class). With ``pre`` None (a 1-D model of input ``shape``),
    the signals of an .npz (:func:`mixq.data.sources.load_signals`)."""
    seed = None if source in KEYWORDS else 0
    if pre is None:
        return load_signals(source, shape, limit, seed=seed, name=f"{option} {source}")
    return load_images(source, pre, limit, seed=seed, name=f"{option} {source}")


def held_out(evalset: ImageSet, calib: torch.Tensor) -> tuple[ImageSet, int]:
    """``evalset`` without the images that are (bit for bit) calibration images, and how many went: an
    evaluation on the calibration data (``--eval`` the ``--calib`` source, or a folder holding copies) would
    report the fit, not the quantized model. One :class:`~mixq.errors.DataError` when none is left."""
    def digest(x: torch.Tensor) -> bytes:
        return hashlib.sha1(x.detach().contiguous().numpy().tobytes()).digest()

    seen = {digest(x) for x in calib}
    keep = [i for i, x in enumerate(evalset.x) if digest(x) not in seen]
    if not keep:
        raise DataError(f"{evalset.source}: every one of its {len(evalset)} images is a calibration image; "
                        "give another source, or calibrate on fewer (--images) so some are held out")
    if len(keep) == len(evalset):
        return evalset, 0
    idx = torch.tensor(keep)
    y = evalset.y[idx] if evalset.y is not None else None
    return ImageSet(evalset.x[idx], y, evalset.classes, evalset.source), len(evalset) - len(keep)


def recorded(source: str | None) -> str | None:
    """A data source as an artifact records it: a keyword as it is, a file or folder as its absolute path, so a
    later ``--from`` finds it from any working directory."""
    if source is None or source in KEYWORDS:
        return source
    return str(Path(source).resolve())


def preprocess(shape: tuple[int, ...], model: str, size: tuple[int, int] | None = None,
               mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
               gray: bool | None = None) -> Preprocess | None:
    """The preprocessing of ``model``'s images with the ``--input-size`` / ``--mean`` / ``--std`` /
    ``--grayscale/--rgb`` overrides; ``None`` for a 1-D model or one whose channels are neither gray nor RGB (a
    registration net's image pair): its .npz inputs are fed as they are, and any image option is an
    :class:`OptionError` naming it."""
    if not has_image_preset(shape):  # its .npz inputs are fed as they are
        given = [o for o, v in (("--input-size", size), ("--mean", mean), ("--std", std),
                                ("--grayscale/--rgb", gray)) if v is not None]
        what = "1-D signals" if len(shape) < 3 else f"{shape[0]}-channel inputs"
        if given:
            raise OptionError(f"{', '.join(given)}: {model} takes {what} ({','.join(map(str, shape))}); "
                              "image preprocessing does not apply")
        return None
    try:
        pre = Preprocess.for_input(shape, size=size, mean=mean, std=std,
                                   channels=None if gray is None else (1 if gray else 3))
    except OptionError as e:  # "mean: ..." -> "--mean: ..."
        field, _, rest = str(e).partition(":")
        raise OptionError(f"--{ {'size': 'input-size'}.get(field, field)}:{rest}") from None
    if pre.channels != shape[0]:
        raise OptionError(f"--{'grayscale' if gray else 'rgb'}: {model} takes {shape[0]}-channel input")
    return pre


def auto_calib(pre: Preprocess | None, shape: tuple[int, ...], model: str) -> str:
    """``--calib auto``: the model's own kind of data (gray Fashion-MNIST or ImageNet-style photos)."""
    if pre is None:
        raise OptionError(f"--calib: give an .npz of ({', '.join(map(str, shape))}) model inputs for {model}")
    return "shipped" if pre.channels == 1 else "photos"


def recorded_data(summary: dict[str, Any]) -> tuple[str | None, str | None, Preprocess | None]:
    """``(calibration source, --eval source, Preprocess or None)`` a quantize ``summary.json`` records (None
    for what it does not record; a 1-D model records no preprocessing)."""
    cal = summary.get("calibration") or {}
    pre_d = cal.get("preprocess")
    source, evalsrc = cal.get("source"), (summary.get("eval") or {}).get("source")
    return (source if isinstance(source, str) else None, evalsrc if isinstance(evalsrc, str) else None,
            Preprocess(**pre_d) if isinstance(pre_d, dict) else None)


def fmnist_eval(dataset: str = "fmnist-subset", calib_images: int | None = 512
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eval images, eval labels, calibration images) of Fashion-MNIST, normalised: the shipped test subset
    or the full test split, and the first ``calib_images`` (None: all) of 1000 training images."""
    if dataset == "fmnist-subset":
        x, y = data.load_fmnist_subset()
    elif dataset == "fmnist":
        x, y = data.load_fashion_mnist("test")
    else:
        raise MixqError(f"dataset {dataset!r} is unknown ({', '.join(FMNIST_SETS)})")
    calib, _ = data.load_fmnist_subset(CALIB_PATH)
    calib_images = calib.shape[0] if calib_images is None else calib_images
    if not 0 < calib_images <= calib.shape[0]:
        raise MixqError(f"calib_images: must be in 1..{calib.shape[0]}, got {calib_images}")
    return data.normalize_gray(x), torch.as_tensor(y), data.normalize_gray(calib[:calib_images])


def builder_inputs(source: Any, size: int | None, images: int, calib: bool = True) -> tuple[Any, Any]:
    """(evaluation inputs, calibration inputs or None) for a builder model, by its input channels: 1 -> the
    shipped Fashion-MNIST test / train images, 3 -> the bundled photos (ImageNet statistics), at its H x W
    (``size`` overrides both)."""
    c, h, w = source.shape()
    try:
        pre = Preprocess.for_input((c, h, w), size=(size, size) if size else None)
    except OptionError as e:
        raise OptionError(f"{source.spec}: no default data for a {c}-channel input (1 gray or 3 RGB): {e}") from None
    if c == 1:
        x = load_images("shipped-test", pre, images, name=f"{source.name}: shipped-test").x
        cal = load_images("shipped", pre, 512, name=f"{source.name}: shipped").x if calib else None
    else:
        x = load_images("photos", pre, max(images, 1), seed=1, name=f"{source.name}: photos").x
        cal = load_images("photos", pre, 64, seed=0, name=f"{source.name}: photos").x if calib else None
    return x[:images], cal


def default_inputs(model: Any, size: int | None, images: int, calib: bool = True) -> tuple[Any, Any]:
    """(evaluation inputs, calibration inputs or None) for a zoo model (a name or a zoo
    :class:`~mixq.zoo.source.ModelSource`) or a builder's (:func:`builder_inputs`)."""
    if not isinstance(model, str):
        if model.kind != "zoo":
            return builder_inputs(model, size, images, calib)
        model = model.name
    if model == "cnv":
        xe, _, shipped = fmnist_eval(calib_images=512)
        return xe[:images], shipped
    c, h, _ = zoo.input_shape(model)
    s = size or h
    if c != 3:
        raise MixqError(f"{model}: only CNV and 3-channel ImageNet models have data here")
    cal = data.calibration_set(64, size=s, seed=0) if calib else None
    try:
        imgs, _ = data.foolbox_samples("imagenet")
        x = torch.stack([data.imagenet_preprocess(i, resize=max(s * 256 // 224, s), crop=s) for i in imgs])
    except MixqError:
        x = data.calibration_set(max(images, 1), size=s, seed=1)
    return x[:images], cal


def artifact_inputs(art: Any, images: int) -> Any:
    """Inputs for an artifact's checks from the data it records: its ``--eval`` source, else its calibration
    source, with its preprocessing (the .npz inputs of a 1-D model or of one with no image preset as they are);
    ``None`` when it records none."""
    calib, evalsrc, pre = recorded_data(art.summary)
    source = evalsrc or calib
    if source is None or art.source is None:
        return None
    shape = tuple(art.source.shape())
    if pre is None and has_image_preset(shape):  # an image model's data need its preprocessing
        return None
    return load_source(source, pre, images, f"--from {art.folder}:", shape).x[:images]
