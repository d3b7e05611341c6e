"""Validation at the door: option, path, weight, data, plan and hardware checks fail early, in one line."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mixq import validate, zoo
from mixq.errors import DataError, HardwareError, MixqError, ModelError, NumericError, OptionError, PlanError
from mixq.formats import FixedPoint, SumOfPowers
from mixq.graph.capture import capture
from mixq.graph.spec import LayerSpec
from mixq.hw import ArchOptions, estimate, get_part
from mixq.plan import HwMapping, QuantPlan, uniform_plan, validate_plan
from mixq.zoo.cnv import WEIGHTS_PATH, cnv, load_pretrained
from mixq.zoo.pretrained import load_state_dict_file

W4, A4 = FixedPoint(4), FixedPoint(4, signed=False)


def _one_line(err: pytest.ExceptionInfo[MixqError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "file an issue" not in msg.lower() and "Traceback" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def specs() -> list[LayerSpec]:
    return capture(zoo.load("cnv"), zoo.input_shape("cnv"))


@pytest.fixture(scope="module")
def rows(specs: list[LayerSpec]) -> dict[str, int]:
    return {s.name: s.weight_rows for s in specs if s.is_compute}


@pytest.fixture(scope="module")
def plan(rows: dict[str, int]) -> QuantPlan:
    return uniform_plan("cnv", list(rows), W4, A4, signed_inputs=list(rows)[:1])


# ------------------------------------------------------------------ options


def test_count() -> None:
    assert validate.count("--batch-size", 32) == 32
    assert validate.count("--batch-size", None) is None
    assert validate.count("--workers", 0, minimum=0) == 0
    for bad in (0, -5, True, 2.5, "3"):
        with pytest.raises(OptionError, match=r"^--batch-size: must be an integer >= 1, got ") as err:
            validate.count("--batch-size", bad)  # type: ignore[arg-type]
        _one_line(err)


def test_positive() -> None:
    assert validate.positive("--clock-mhz", 200) == 200.0
    assert validate.positive("--lr", None) is None
    assert validate.positive("--wd", 0.0, allow_zero=True) == 0.0
    for bad in (0, -100, math.inf, math.nan, -math.inf, True, "1"):
        with pytest.raises(OptionError, match=r"^--clock-mhz: must be a finite number > 0"):
            validate.positive("--clock-mhz", bad)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=">= 0, got -1"):
        validate.positive("--wd", -1.0, allow_zero=True)


def test_fraction_and_choice() -> None:
    assert validate.fraction("--sparsity", 0.5) == 0.5
    assert validate.fraction("--sparsity", 1) == 1.0
    assert validate.fraction("--sparsity", None) is None
    for bad in (1.5, -0.1, math.nan, math.inf):
        with pytest.raises(OptionError, match=r"^--sparsity: must be a number in \[0, 1\], got "):
            validate.fraction("--sparsity", bad)
    with pytest.raises(OptionError, match=r"\(0, 1\), got 0"):
        validate.fraction("--max-drop", 0.0, inclusive=False)
    assert validate.choice("--arch", "overlay", ("streaming", "overlay")) == "overlay"
    with pytest.raises(OptionError, match="^--arch: 'fpga' is not one of streaming, overlay$"):
        validate.choice("--arch", "fpga", ("streaming", "overlay"))


def test_output_paths(tmp_path: Path) -> None:
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    assert validate.writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing is created
    assert validate.writable_file(tmp_path / "new" / "e.json") == tmp_path / "new" / "e.json"
    assert validate.writable_file(afile) == afile  # overwriting a file is fine
    with pytest.raises(OptionError, match="^--out: .*a.txt is a file, not a folder$"):
        validate.writable_dir(afile)
    with pytest.raises(OptionError, match="^--out-dir: cannot create folder .*a.txt is a file"):
        validate.writable_dir(afile / "sub" / "dir", name="--out-dir")
    with pytest.raises(OptionError, match="is a folder, not a file"):
        validate.writable_file(tmp_path)
    with pytest.raises(OptionError, match="a.txt is a file, not a folder"):
        validate.writable_file(afile / "x" / "e.json")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OptionError, match="not writable"):
            validate.writable_dir(ro / "out")
        with pytest.raises(OptionError, match="not writable"):
            validate.writable_file(ro / "e.json")
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------ weights


def test_state_dict_finite_and_sane() -> None:
    model = load_pretrained(cnv())
    validate.model(model, "cnv_fmnist.pt")  # the shipped weights pass
    state = {k: v.clone() for k, v in model.state_dict().items()}
    w = state["features.0.weight"]
    w.view(-1)[:12] = math.nan
    with pytest.raises(NumericError, match="^weights.pt: tensor features.0.weight has 12 NaN values$"):
        validate.state_dict(state, "weights.pt")
    w.view(-1)[:12] = 0.0
    w.view(-1)[3:5] = -math.inf
    with pytest.raises(NumericError, match="tensor features.0.weight has 2 Inf values"):
        validate.state_dict(state, "weights.pt")
    w.view(-1)[0] = math.nan
    with pytest.raises(NumericError, match="has 1 NaN and 2 Inf values"):
        validate.state_dict(state, "weights.pt")
    w.view(-1)[:5] = 0.0
    state["classifier.3.bias"][1] = 1e38
    with pytest.raises(NumericError, match="tensor classifier.3.bias has an absurd magnitude 1e\\+38"):
        validate.state_dict(state, "weights.pt")
    state["classifier.3.bias"][1] = 0.0
    state["features.4.running_var"][7] = -0.5
    with pytest.raises(NumericError, match="tensor features.4.running_var has 1 negative values"):
        validate.state_dict(state, "weights.pt")
    state["features.4.running_var"][7] = 1.0
    validate.state_dict(state, "weights.pt")  # repaired: passes (integer num_batches_tracked is skipped)


def test_model_check_names_the_tensor() -> None:
    model = zoo.load("cnv")
    with torch.no_grad():
        model.classifier[0].weight[0, 0] = math.inf  # type: ignore[index]
    with pytest.raises(NumericError, match="^cnv: tensor classifier.0.weight has 1 Inf values$"):
        validate.model(model, "cnv")


def test_load_state(tmp_path: Path) -> None:
    good = validate.load_state(WEIGHTS_PATH, "cnv_fmnist.pt")
    assert set(good) == set(cnv().state_dict())
    bad = tmp_path / "w.pt"
    bad.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(DataError) as err:
        validate.load_state(bad, "w.pt")
    assert _one_line(err) == "w.pt: not a PyTorch state dict (corrupt or not saved with torch.save)"
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(WEIGHTS_PATH.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"t.pt: not a PyTorch state dict \(corrupt"):
        validate.load_state(truncated)
    whole = tmp_path / "model.pt"
    torch.save(cnv(), whole)  # a pickled module, not a state dict
    with pytest.raises(DataError, match=r"model.pt: not a PyTorch state dict \(it holds a pickled "
                                        r"mixq.zoo.cnv.CNV; save model.state_dict") as err:
        validate.load_state(whole)
    _one_line(err)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(DataError, match="holds a list"):
        validate.load_state(listed)
    with pytest.raises(DataError, match="nothere.pt: file not found"):
        validate.load_state(tmp_path / "nothere.pt")
    nan = tmp_path / "nan.pt"
    state = cnv().state_dict()
    state["features.3.weight"][0, 0, 0, 0] = math.nan
    torch.save(state, nan)
    with pytest.raises(NumericError, match="nan.pt: tensor features.3.weight has 1 NaN values"):
        validate.load_state(nan)


def test_zoo_loaders_give_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "w.pt"
    bad.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(ModelError) as err:
        load_pretrained(cnv(), bad)
    assert _one_line(err).endswith("w.pt: not a PyTorch state dict (corrupt or not saved with torch.save)")
    with pytest.raises(ModelError, match="^toy: cannot read weights file .*w.pt: not a PyTorch state dict") as err:
        load_state_dict_file(cnv(), bad, "toy")
    _one_line(err)
    state = cnv().state_dict()
    state["features.1.running_var"][:3] = -1.0
    torch.save(state, tmp_path / "neg.pt")
    with pytest.raises(NumericError, match="neg.pt: tensor features.1.running_var has 3 negative values"):
        load_pretrained(cnv(), tmp_path / "neg.pt")
    torch.save(cnv(num_classes=3).state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(ModelError, match="wrong.pt: the weights do not match CNV: .*shape mismatches") as err:
        load_pretrained(cnv(), tmp_path / "wrong.pt")
    _one_line(err)


# ------------------------------------------------------------------ data and training


def test_images() -> None:
    x = torch.rand(16, 1, 28, 28)
    validate.images(x, "train")
    with pytest.raises(DataError, match=r"^calib: images of 1x1 pixels are too small"):
        validate.images(torch.rand(4, 3, 1, 1), "calib")
    with pytest.raises(DataError, match="no images"):
        validate.images(torch.rand(0, 1, 28, 28), "calib")
    with pytest.raises(DataError, match=r"expected an \(N, C, H, W\) image batch, got \(1, 28, 28\)"):
        validate.images(torch.rand(1, 28, 28), "calib")
    black = x.clone()
    black[5] = 0.0
    black[9] = -0.4242  # a normalised all-black image
    with pytest.raises(DataError, match=r"^calib: 2 of 16 images are constant .*: images 5, 9$"):
        validate.images(black, "calib")
    nan = x.clone()
    nan[3, 0, 4, 4] = math.nan
    nan[11, 0, 0, 0] = math.inf
    with pytest.raises(DataError, match=r"^calib: 2 of 16 images have NaN or Inf pixels: images 3, 11$"):
        validate.images(nan, "calib")


def test_loss() -> None:
    validate.loss(0.25, 3, "qat")
    validate.loss(torch.tensor(1.5), 3, "qat")  # type: ignore[arg-type]
    with pytest.raises(NumericError, match="^qat: loss became nan at step 12 "):
        validate.loss(math.nan, 12, "qat")
    with pytest.raises(NumericError, match="loss became inf at step 1 "):
        validate.loss(math.inf, 1, "train")


# ------------------------------------------------------------------ plans


def test_validate_plan_accepts_a_real_plan(plan: QuantPlan, rows: dict[str, int]) -> None:
    from mixq import api

    model = zoo.load("cnv", pretrained=True)
    p = api.default_plan("cnv", model, torch.rand(4, *zoo.input_shape("cnv")))
    assert validate_plan(p, model="cnv", layers=rows) is p
    assert validate_plan(plan, model="cnv", layers=list(rows)) is plan
    assert validate_plan(QuantPlan("", dict(plan.layers)), model="cnv")  # no model recorded: not checked


def test_validate_plan_model_mismatch(plan: QuantPlan) -> None:
    with pytest.raises(PlanError, match="^model: the plan was made for model 'cnv', not 'resnet20'$"):
        validate_plan(plan, model="resnet20")


def test_validate_plan_alt_rows(plan: QuantPlan, rows: dict[str, int]) -> None:
    lp = plan["features.3"].with_(weight_alt=SumOfPowers(4), alt_ratio=0.5)
    for bad in ((9999,), (-1,), (0, 40)):
        with pytest.raises(PlanError, match=r"^layers.features.3.alt_rows: (rows \[(9999|40)\] out of range "
                                            r"for 32 rows|row indices must be integers >= 0, got \[-1\])$"):
            validate_plan(plan.with_layer("features.3", lp.with_(alt_rows=bad)), layers=rows)
    with pytest.raises(PlanError, match="alt_rows: row indices must be integers >= 0, got \\[-1\\]"):
        plan.with_layer("features.3", lp.with_(alt_rows=(3, -1)))  # refused even without the row counts
    ok = plan.with_layer("features.3", lp.with_(alt_rows=(0, 31)))
    assert validate_plan(ok, layers=rows) is ok


def test_validate_plan_quantizes_something(plan: QuantPlan, rows: dict[str, int]) -> None:
    with pytest.raises(PlanError, match="^layers: the plan has no layers, so it quantizes nothing$"):
        validate_plan(QuantPlan("cnv", {}))
    float_plan = uniform_plan("cnv", list(rows), None, None)
    with pytest.raises(PlanError, match="^layers: all 6 layers are float .*quantizes nothing$"):
        validate_plan(float_plan, model="cnv", layers=rows)
    weights_only = uniform_plan("cnv", list(rows), W4, None)
    assert validate_plan(weights_only, layers=rows) is weights_only
    with pytest.raises(PlanError, match="layers.conv9: unknown layer"):
        validate_plan(plan.with_layer("conv9", plan["features.0"]), layers=rows)
    with pytest.raises(PlanError, match="mapping.pe: must be a positive integer, got 0"):
        plan.with_layer("features.0", plan["features.0"].with_(mapping=HwMapping(pe=0)))


# ------------------------------------------------------------------ hardware


def test_part_clock_is_checked() -> None:
    p = get_part("xc7z020")
    assert p.with_(clock_mhz=200).clock_mhz == 200
    for bad in (-100, 0, math.inf, math.nan):
        with pytest.raises(HardwareError, match="^clock_mhz: must be a finite number > 0, got "):
            p.with_(clock_mhz=bad)
    with pytest.raises(HardwareError, match="ddr_gbps"):
        p.with_(ddr_gbps=0)
    with pytest.raises(HardwareError, match="link_gbps: must be a finite number > 0, got 0"):
        ArchOptions(link_gbps=0)
    with pytest.raises(HardwareError, match="link_gbps"):
        ArchOptions(link_gbps=-10.0)


def test_estimate_refuses_bad_options_and_plans(specs: list[LayerSpec], plan: QuantPlan,
                                                rows: dict[str, int]) -> None:
    e = estimate(specs, plan, "xc7z020", fold="plan")
    assert e.fps > 0
    with pytest.raises(HardwareError, match="clock_mhz"):
        estimate(specs, plan, get_part("xc7z020").with_(clock_mhz=-100), fold="plan")
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(HardwareError, match="^target_fps: must be a finite number > 0"):
            estimate(specs, plan, "xc7z020", target_fps=bad)
    with pytest.raises(HardwareError, match="^parts: must be an integer >= 1, got 0"):
        estimate(specs, plan, "xc7z020", parts=0)
    with pytest.raises(PlanError, match="quantizes nothing"):
        estimate(specs, uniform_plan("cnv", list(rows), None, None), "xc7z020", fold="plan")
    with pytest.raises(PlanError, match="quantizes nothing"):
        estimate(specs, QuantPlan("cnv", {}), "xc7z020", fold="plan")
    lp = plan["features.3"].with_(weight_alt=SumOfPowers(4), alt_rows=(9999,))
    with pytest.raises(PlanError, match=r"layers.features.3.alt_rows: rows \[9999\] out of range for 32 rows"):
        estimate(specs, plan.with_layer("features.3", lp), "xc7z020", fold="plan")
    # a plan that leaves layers out is estimated, with the W8A8 assumption in the notes
    partial = QuantPlan("cnv", {"features.3": plan["features.3"]})
    notes = estimate(specs, partial, "xc7z020", fold="plan").notes
    assert any("float layer modelled as W8A8" in n for n in notes)


def test_float_image_with_nan_pixels_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    from mixq.data import read_image

    f = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    f[3, 4] = np.nan
    Image.fromarray(f, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="NaN or Inf pixels"):
        read_image(tmp_path / "nan.tif", "RGB")


def test_black_photo_normalised_per_channel_is_still_constant() -> None:
    from mixq import data

    black = data.imagenet_preprocess(np.zeros((64, 64, 3), np.uint8), resize=36, crop=32)
    ok = data.imagenet_preprocess(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8),
                                  resize=36, crop=32)
    assert not torch.equal(black[0], black[1])  # the channels differ after normalisation
    with pytest.raises(DataError, match="1 of 2 images are constant"):
        validate.images(torch.stack([ok, black]), "--calib")


def test_a_blank_image_with_float_noise_from_resizing_is_still_constant() -> None:
    x = torch.rand(3, 1, 28, 28)
    x[1] = 2.0227 + 2e-7 * torch.rand(1, 28, 28)  # an all-white image after bilinear resize + normalisation
    with pytest.raises(DataError, match=r"1 of 3 images are constant .*images 1$"):
        validate.images(x, "--calib")
    validate.images(torch.rand(2, 1, 28, 28) * (1 / 255 / 0.35), "--calib")  # faint but real images pass
