"""End to end: `mixq run` on the bundled default, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixq.cli import main
from mixq.plan import load_plan


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["run", "--out", str(out), "--quiet"]) == 0
    return out


def test_run_writes_summary_plan_report(demo: Path) -> None:
    s = json.loads((demo / "summary.json").read_text())
    for key in ("model", "dataset", "target_part", "fp32_accuracy", "quant_accuracy", "layers",
                "size_bytes_fp32", "size_bytes_quant"):
        assert key in s, key
    assert s["model"] == "cnv" and s["dataset"] == "fmnist-subset" and s["target_part"] == "xc7z020"
    assert s["eval_images"] == 2000
    assert s["fp32_accuracy"] >= 91.0
    assert abs(s["fp32_accuracy"] - s["quant_accuracy"]) <= 0.3  # W8A8 per channel
    assert len(s["layers"]) == 6
    assert all(layer["weight"] == {"fixed8": layer["weight_shape"][0]} for layer in s["layers"])
    assert s["layers"][0]["act"] == "fixed8" and s["layers"][1]["act"] == "ufixed8"
    # 8-bit weights: ~4x smaller than fp32 (plus per-row scales and float biases)
    assert 3.5 < s["size_bytes_fp32"] / s["size_bytes_quant"] < 4.0
    assert s["macs_per_image"] == 18_691_840
    hw = s["hardware"]
    assert hw["part"] == "xc7z020" and hw["fits"] is True and hw["fps"] > 0
    assert all(0 < hw["utilization"][k] <= 1.0 for k in ("lut", "dsp", "bram"))
    v = s["verify"]
    assert v["exact"] is True and v["mismatching_outputs"] == 0 and v["images"] == 128
    assert v["argmax_agreement_faithful"] == 1.0
    msq = s["designs"][1]
    assert msq["plan"] == "plan_msq.json" and msq["hardware"]["fits"] is True
    assert msq["size_bytes"] < s["size_bytes_quant"]  # 4-bit rows beat 8-bit rows
    assert msq["accuracy"] >= s["fp32_accuracy"] - 1.0  # GPTQ rounding (round-to-nearest: -1.5 allowed)
    vm = s["verify_msq"]  # the GPTQ-rounded MSQ design is exact on the integer engine too
    assert vm["exact"] is True and vm["mismatching_outputs"] == 0 and vm["images"] == 128


def test_run_searches_a_plan_that_beats_uniform(demo: Path) -> None:
    s = json.loads((demo / "summary.json").read_text())
    sr = s["search"]
    assert sr["part"] == "xc7z020" and sr["search_images"] == 1000
    rows = {r["design"]: r for r in sr["compare"]}
    searched, w8, w4 = rows["searched"], rows["uniform W8A8"], rows["uniform W4A4"]
    assert searched["fits"] and w8["fits"] and w4["fits"]
    # chosen on training images: the fastest plan within 1 point of FP32 there
    assert searched["search_accuracy"] >= sr["reference_search_accuracy"] - 1.0
    # it dominates uniform W4A4 (faster and more accurate) and is faster than W8A8
    assert searched["fps"] > w4["fps"] and searched["search_accuracy"] >= w4["search_accuracy"]
    assert searched["fps"] > w8["fps"]
    assert searched["fps"] <= sr["best_reachable_fps"] + 1e-6
    design = s["designs"][2]
    assert design["plan"] == "search/plan.json" and design["hardware"]["fits"] is True
    assert abs(design["hardware"]["fps"] - searched["fps"]) <= 0.1
    plan = load_plan(demo / "search" / "plan.json")
    assert len(plan) == 6 and any(lp.mapping.pe * lp.mapping.simd > 1 for _, lp in plan.items())
    pareto = json.loads((demo / "search" / "pareto.json").read_text())
    assert pareto["chosen"]["label"] == sr["chosen"] and len(pareto["pareto"]) >= 1


def test_run_plan_round_trips_and_report_is_self_contained(demo: Path) -> None:
    plan = load_plan(demo / "plan.json")
    assert plan.model == "cnv" and len(plan) == 6
    msq = load_plan(demo / "plan_msq.json")
    mixed = [lp for _, lp in msq.items() if lp.weight_alt is not None]
    assert len(mixed) == 4 and all(lp.alt_rows is not None for lp in mixed)
    # GPTQ re-chose which rows are SP2 but kept each layer's count (the hardware's rho = 0.5)
    rows = {lay["name"]: lay["weight_shape"][0] for lay in json.loads((demo / "summary.json").read_text())["layers"]}
    for name, lp in msq.items():
        if lp.weight_alt is not None:
            assert lp.alt_ratio == 0.5 and 2 * len(lp.alt_rows or ()) == rows[name]
    html = (demo / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7  # one weight histogram per layer + the search plot
    assert "features.10" in html and "<table>" in html
    assert 'src="http' not in html and "<link" not in html


def test_bad_input_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--out", str(tmp_path / "o"), "--weight", "fixed99", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "mixq: error:" in err and "--weight" in err and "Traceback" not in err
    assert main(["run", "--out", str(tmp_path / "o"), "--dataset", "cifar", "--quiet"]) == 2  # a usage error
    assert "cifar" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_every_command_group_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    commands = ["run", "train", "capture", "quantize", "verify", "export", "estimate", "calibrate-hw", "qat",
                "prune", "search", "rtl"]
    for cmd in commands:
        assert main([cmd, "--help"]) == 0, cmd
        assert "Usage" in capsys.readouterr().out, cmd


def test_run_keeps_going_when_the_search_finds_nothing(tmp_path: Path) -> None:
    from mixq.run import RunConfig, run

    cfg = RunConfig(calib_images=64, verify_images=8, search_points=0, search_eval_images=100,
                    search_max_drop=-100.0)  # no plan can be 100 points *better* than FP32
    s = run(tmp_path / "r", cfg)
    assert "no searched plan stays within -100 points" in s["search"]["error"]
    assert len(s["designs"]) == 2 and s["verify"]["exact"] is True
    assert (tmp_path / "r" / "report.html").is_file() and (tmp_path / "r" / "summary.json").is_file()


def test_run_checks_the_searched_design_in_rtl(tmp_path: Path) -> None:
    """`mixq run` builds the searched design as one Verilog accelerator, simulates it on test images and
    reports RTL = integer engine with its measured cycles per frame beside the estimator's."""
    from mixq.rtl.netsim import available
    from mixq.run import RunConfig, run

    if not available("verilator"):
        pytest.skip("verilator is not installed")
    cfg = RunConfig(calib_images=64, verify_images=8, search_points=0, search_eval_images=100, rtl_images=3)
    s = run(tmp_path / "r", cfg)
    rtl = s["rtl"]
    assert rtl["verdict"] == "RTL = integer engine", rtl
    assert rtl["images"] == 3 and rtl["output_elements"] == 30 and rtl["mismatching_elements"] == 0
    assert abs(rtl["measured_over_estimator"] - 1.0) < 0.1
    assert rtl["folder"] == str(tmp_path / "r" / "rtl")
    assert (tmp_path / "r" / "rtl" / "build.json").is_file() and not (tmp_path / "r" / ".rtl.partial").exists()
    assert "RTL = integer engine" in (tmp_path / "r" / "report.html").read_text()
