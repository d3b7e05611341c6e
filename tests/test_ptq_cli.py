"""`mixq quantize` through the command line (its own Typer app: the CLI module registers one command)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mixq.cli import main
from mixq.errors import DataError
from mixq.plan import load_plan
from mixq.tasks import data as quantize_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quantize_shipped_calibration_writes_checkpoint_plan_summary(tmp_path: Path) -> None:
    out = tmp_path / "q"
    assert main(["quantize", "cnv", "--random", "--calib", "shipped", "--images", "32",
                                   "--recipe", "dfq", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["recipe"]["name"] == "dfq" and s["calibration"]["source"] == "shipped" and s["calibration"]["images"] == 32
    assert len(s["layers"]) == 6 and s["size_bytes_quant"] < s["size_bytes_fp32"]
    assert {"fold_bn", "cle", "calibrate", "bias_correction"} <= set(s["timings_s"])
    ck = torch.load(out / "quantized.pt", weights_only=False)
    assert ck["format"] == "mixq-ptq" and ck["model"] == "cnv" and "features.0.weight" in ck["state_dict"]
    assert load_plan(out / "plan.json").model == "cnv"


def test_quantize_with_plan_file_and_msq(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["quantize", "cnv", "--random", "--images", "16", "--msq", "0.5",
                                   "--out", str(out)]) == 0
    plan = load_plan(out / "plan.json")
    assert plan["features.3"].alt_rows is not None and len(plan["features.3"].alt_rows) == 16
    assert plan["features.0"].weight_alt is None  # first/last layer policy: 8-bit fixed
    again = tmp_path / "again"
    assert main(["quantize", "cnv", "--random", "--images", "16", "--plan",
                                   str(out / "plan.json"), "--out", str(again)]) == 0
    assert load_plan(again / "plan.json") == plan


def test_calibration_from_an_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    from mixq.data.sources import Preprocess

    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(tmp_path / "sub" / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    x = quantize_cli.load_source(str(tmp_path), Preprocess.for_input((1, 28, 28)), 10, "--calib").x
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all()
    rgb = quantize_cli.load_source(str(tmp_path), Preprocess.for_input((3, 32, 32)), 2, "--calib").x
    assert rgb.shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match="--calib .*no images"):
        quantize_cli.load_source(str(_empty(tmp_path)), Preprocess.fmnist(), 2, "--calib")
    with pytest.raises(DataError, match="does not exist"):
        quantize_cli.load_source(str(tmp_path / "missing"), Preprocess.fmnist(), 2, "--calib")


def test_quantize_preprocessing_options_and_eval(tmp_path: Path) -> None:
    out = tmp_path / "e"
    assert main(["quantize", "cnv", "--random", "--images", "16", "--eval", "shipped-test", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["eval"]["source"] == "shipped-test" and s["eval"]["images"] == 2000
    assert {"top1_float", "top1_quant"} <= set(s["eval"])
    assert s["calibration"]["preprocess"] == {"size": [28, 28], "channels": 1, "mean": [0.286], "std": [0.353],
                                              "resize": "stretch"}
    assert main(["quantize", "cnv", "--random", "--images", "16", "--eval", "photos", "--out", str(out)]) == 0
    assert 0.0 <= json.loads((out / "summary.json").read_text())["eval"]["agreement"] <= 100.0
    for bad in (["--input-size", "0x5"], ["--mean", "1,x"], ["--std", "nan"]):
        assert main(["quantize", "cnv", *bad, "--out", str(out)]) == 2, bad
    for bad in (["--mean", "0.1,0.2"], ["--rgb"], ["--std", "0"], ["--input-size", "32"], ["--calib", "/nope"]):
        assert main(["quantize", "cnv", "--random", "--images", "4", *bad, "--out", str(out)]) == 1, bad


def test_eval_leaves_the_calibration_images_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--eval` of the `--calib` source judged the model partly on its calibration images: they are left out now
    (found bit for bit, so a seeded folder subset or a copy of a file counts too), the count recorded and printed;
    with nothing left, one line and exit 1. A folder holding copies of two calibration photos keeps its third."""
    from PIL import Image

    from mixq.data.sources import Preprocess

    out = tmp_path / "h"
    assert main(["quantize", "cnv", "--random", "--calib", "shipped", "--images", "64", "--eval", "shipped",
                 "--out", str(out)]) == 0
    ev = json.loads((out / "summary.json").read_text())["eval"]
    assert ev["calibration_images_left_out"] == 64 and ev["images"] == 1000 - 64
    assert "936 images (64 calibration images left out)" in capsys.readouterr().out
    assert main(["quantize", "cnv", "--random", "--calib", "shipped", "--images", "1000", "--eval", "shipped",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every one of its 1000 images is a calibration image" in err[0]
    rng = np.random.default_rng(0)
    for d in ("cal", "ev"):
        (tmp_path / d).mkdir()
    for i in range(3):
        img = Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8))
        img.save(tmp_path / "ev" / f"{i}.png")
        if i < 2:
            img.save(tmp_path / "cal" / f"copy{i}.png")
    pre = Preprocess.for_input((1, 28, 28))
    calib = quantize_cli.load_source(str(tmp_path / "cal"), pre, None, "--calib").x
    kept, gone = quantize_cli.held_out(quantize_cli.load_source(str(tmp_path / "ev"), pre, None, "--eval"), calib)
    assert gone == 2 and len(kept) == 1


def _empty(root: Path) -> Path:
    d = root / "empty"
    d.mkdir(exist_ok=True)
    return d


def test_quantize_with_output_aware_weight_scales(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert main(["quantize", "cnv", "--random", "--images", "16", "--weight-scales", "output",
                                   "--act-ranges", "output", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["recipe"]["weight_scales"] == "output" and "weight_scales" in s["timings_s"]
    assert s["recipe"]["act_ranges"] == "output" and len(s["details"]["act_ranges"]) == 6
    assert list(s["details"]["weight_scales"]) == ["features.0", "features.3", "features.7", "features.10",
                                                   "classifier.0", "classifier.3"]  # every layer, forward order
    assert main(["quantize", "cnv", "--random", "--images", "8", "--weight-scales", "hessian",
                 "--out", str(tmp_path / "x")]) == 2  # a usage error, before any work
    assert not (tmp_path / "x").exists()


def test_quantize_gptq_msq_rows_free(tmp_path: Path) -> None:
    out = tmp_path / "g"
    assert main(["quantize", "cnv", "--images", "16", "--msq", "0.5", "--recipe", "gptq",
                                   "--msq-rows", "output_auto", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["recipe"]["name"] == "gptq" and s["recipe"]["msq_rows"] == "output_auto" and "gptq" in s["timings_s"]
    plan = load_plan(out / "plan.json")
    rows = {lay["name"]: lay["weight_shape"][0] for lay in s["layers"]}
    mixed = 0
    for name, rep in s["details"]["gptq"].items():
        assert rep["error_gptq"] <= rep["error_nearest"] * (1 + 1e-6)
        if "alt_rows" in rep:  # the rows GPTQ chose are the plan's, and ρ is their real fraction
            mixed += 1
            assert plan[name].alt_rows == tuple(rep["alt_rows"])
            assert plan[name].alt_ratio == pytest.approx(len(rep["alt_rows"]) / rows[name])
    assert mixed == 4  # every layer but the first and the last


def test_bad_recipe_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", "cnv", "--random", "--images", "8", "--recipe", "nope",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--recipe" in err[0]


def test_msq_rows_on_a_plan_without_msq_rows_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", "cnv", "--random", "--images", "8", "--recipe", "gptq", "--msq-rows", "output",
                 "--out", str(tmp_path / "x")]) == 1
    assert "--msq-rows" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_act_calibration_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f"
    assert main(["quantize", "cnv", "--random", "--images", "16", "--msq", "0.5", "--recipe", "gptq",
                 "--act-calibration", "float", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["recipe"]["act_calibration"] == "float" and "gptq" in s["timings_s"]
    capsys.readouterr()
    assert main(["quantize", "cnv", "--random", "--images", "8", "--act-calibration", "weights",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--act-calibration" in err[0] and not (tmp_path / "x").exists()
