"""The quantize artifact (``mixq.artifact``) and the ``--from`` flow: verify, export, estimate and rtl use the
quantized model exactly as ``mixq quantize`` left it (no re-calibration), bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mixq import api, data, zoo
from mixq.algorithms.ptq import quantize_report
from mixq.artifact import ARTIFACT_VERSION, CHECKPOINT_FILE, load_artifact, read_checkpoint, save_artifact
from mixq.cli import main
from mixq.errors import DataError, MixqError, ModelError, NumericError

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 28, 28)


def _calib(n: int = 32) -> torch.Tensor:
    from mixq.data.sources import Preprocess
    from mixq.tasks.data import load_source

    # what `mixq quantize cnv --images n` calibrates on
    return load_source("shipped", Preprocess.for_input(SHAPE), n, "--calib").x


def _test_images(n: int = 256) -> torch.Tensor:
    images, _ = data.load_fmnist_subset()  # the shipped Fashion-MNIST test images
    return data.normalize_gray(images[:n])


@torch.no_grad()
def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def gptq_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """`mixq quantize cnv --recipe gptq --images 32 --out A`: the folder, and the PTQ result the command
    computed (recorded on its way to the artifact)."""
    import mixq.algorithms.ptq as ptq

    out = tmp_path_factory.mktemp("artifact") / "A"
    seen: list[Any] = []
    real = ptq.quantize_report

    def record(*args: Any, **kwargs: Any) -> Any:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ptq, "quantize_report", record)
        assert main(["--quiet", "quantize", "cnv", "--recipe", "gptq", "--images", "32", "--out", str(out)]) == 0
    assert len(seen) == 1
    return out, seen[0]


@pytest.fixture(scope="module")
def gptq_dir(gptq_run: tuple[Path, Any]) -> Path:
    return gptq_run[0]


# ---------------------------------------------------------------- the library: save -> load, bit for bit


@pytest.mark.parametrize("recipe,msq", [("dfq", None), ("minmax", 0.5)], ids=["dfq", "minmax-msq"])
def test_round_trip_is_bit_identical(recipe: str, msq: float | None, tmp_path: Path) -> None:
    from mixq.algorithms.msq import MSQConfig, msq_plan

    net = zoo.load("cnv", pretrained=True).eval()
    calib = _calib(32)
    plan = msq_plan("cnv", net, calib[:8], MSQConfig(ratio=msq)) if msq else api.default_plan("cnv", net, calib[:8])
    res = quantize_report(net, plan, calib, recipe, input_shape=SHAPE)
    save_artifact(tmp_path, "cnv", res.plan, res.recipe.to_dict(), res.model, {"note": "x"})
    rng = torch.get_rng_state()
    art = load_artifact(tmp_path)
    assert torch.equal(rng, torch.get_rng_state())  # the random init of the rebuild does not move the caller's RNG
    x = _test_images()
    assert torch.equal(_out(art.qmodel, x), _out(res.model, x))
    assert not art.qmodel.training and art.model_name == "cnv" and art.summary == {"note": "x"}
    assert art.plan == res.plan and art.recipe == res.recipe.to_dict()
    if msq:
        assert any(lp.alt_rows for _, lp in art.plan.items())


def test_recipe_modules_are_rebuilt(tmp_path: Path) -> None:
    """An activation a recipe replaced (CLE's per-channel clipped ReLU6) comes back as that module."""
    from mixq.algorithms.ptq.cle import ClippedReLU
    from mixq.graph.swap import set_submodule

    net = zoo.load("cnv", pretrained=True).eval()
    calib = _calib(16)
    q = quantize_report(net, api.default_plan("cnv", net, calib[:8]), calib, "minmax", input_shape=SHAPE)
    set_submodule(q.model, "features.2", ClippedReLU(torch.linspace(0.5, 4.0, 32)))
    save_artifact(tmp_path, "cnv", q.plan, q.recipe.to_dict(), q.model)
    art = load_artifact(tmp_path)
    assert isinstance(art.qmodel.get_submodule("features.2"), ClippedReLU)
    x = _test_images(64)
    assert torch.equal(_out(art.qmodel, x), _out(q.model, x))
    set_submodule(q.model, "features.2", nn.Sigmoid())  # not a module any mixq recipe makes
    save_artifact(tmp_path, "cnv", q.plan, q.recipe.to_dict(), q.model)
    with pytest.raises(ModelError, match=r"quantized\.pt: module features\.2 is a Sigmoid"):
        load_artifact(tmp_path)


def test_cli_artifact_is_the_recipes_model_not_a_recalibration(gptq_run: tuple[Path, Any]) -> None:
    folder, res = gptq_run  # res.model: the model `mixq quantize` computed, before it was written
    art = load_artifact(folder)
    x = _test_images()
    assert torch.equal(_out(art.qmodel, x), _out(res.model, x))
    assert art.recipe["name"] == "gptq" and art.summary["recipe"]["name"] == "gptq" and art.plan == res.plan
    net = zoo.load("cnv", pretrained=True).eval()
    recalibrated = api.quantize(net, art.plan, _calib(32))  # what export did before --from: min-max, same plan
    assert not torch.equal(_out(recalibrated, x), _out(art.qmodel, x))


# ---------------------------------------------------------------- the command line: --from


def test_verify_from(gptq_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--from", str(gptq_dir), "--images", "16", "--out", str(tmp_path)]) == 0
    assert "EXACT (0 of 160 outputs differ, 16 inputs)" in capsys.readouterr().out
    rep = json.loads((tmp_path / "verify.json").read_text())
    assert rep["exact"] and rep["artifact"] == str(gptq_dir) and rep["argmax_agreement"] == 1.0


def _int_weights(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "model.npz") as z:
        return {k: z[k] for k in z.files if k.endswith("::weight")}


def test_export_from_is_the_artifact_model(gptq_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mixq.engine import to_integer
    from mixq.export import EXPORTERS

    out = tmp_path / "from"
    assert main(["export", "--from", str(gptq_dir), "--format", "int", "--check", "--images", "4",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max |difference| 0," in text and "argmax agreement 100.00%" in text
    exported = _int_weights(out)
    art = load_artifact(gptq_dir)  # the artifact's own integer model, built here
    mine = tmp_path / "mine"
    EXPORTERS["int"](to_integer(art.qmodel, _test_images(4)), mine / "model.json")
    assert exported.keys() == _int_weights(mine).keys() and len(exported) == 6
    assert all(np.array_equal(v, _int_weights(mine)[k]) for k, v in exported.items())
    # the same plan re-calibrated with min-max (export without --from) rounds the weights differently
    again = tmp_path / "again"
    assert main(["--quiet", "export", "cnv", "--plan", str(gptq_dir / "plan.json"), "--format", "int",
                 "--out", str(again)]) == 0
    other = _int_weights(again)
    assert sum(int((v != other[k]).sum()) for k, v in exported.items()) > 1000


def test_estimate_from_uses_the_artifacts_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "msq"
    assert main(["--quiet", "quantize", "cnv", "--msq", "0.5", "--images", "16", "--out", str(art)]) == 0
    assert main(["--quiet", "estimate", "--from", str(art), "--out", str(tmp_path / "e")]) == 0
    est = json.loads((tmp_path / "e" / "estimate.json").read_text())
    assert est["model"] == "cnv" and any("sp2_4@sp2" in layer["formats"] for layer in est["layers"])
    assert main(["--quiet", "estimate", "cnv", "--out", str(tmp_path / "w8")]) == 0  # the default plan: no SP2
    w8 = json.loads((tmp_path / "w8" / "estimate.json").read_text())
    assert not any("sp2" in layer["formats"] for layer in w8["layers"])


def test_rtl_generate_from(gptq_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "rtl", "generate", "--from", str(gptq_dir), "--layer", "features.3", "--pe", "2",
                 "--simd", "4", "--out", str(tmp_path)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["top"] == "layer_features_3" and any(f.endswith(".v") for f in res["files"])
    assert all(Path(f).is_file() for f in res["files"])


@pytest.mark.parametrize("args,code,needle", [
    (["verify", "cnv", "--from", "{A}"], 1, "not both"),
    (["verify"], 2, "MODEL"),
    (["export", "--format", "int"], 2, "MODEL"),
    (["rtl", "generate", "--layer", "features.3"], 2, "--model"),
    (["rtl", "generate", "--model", "cnv", "--from", "{A}", "--layer", "features.3"], 1, "not both"),
    (["verify", "--from", "{A}", "--plan", "{A}/plan.json"], 1, "--plan"),
    (["estimate", "--from", "{A}", "--weight", "fixed4"], 1, "--weight"),
    (["rtl", "generate", "--from", "{A}", "--layer", "features.3", "--config", "fixed8"], 1, "--config"),
    (["verify", "--from", "{tmp}/nowhere"], 1, "no such artifact folder"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_model_or_from_one_line_errors(args: list[str], code: int, needle: str, gptq_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{A}", str(gptq_dir)).replace("{tmp}", str(tmp_path)) for a in args]
    assert main([*argv, "--out", str(tmp_path / "o")]) == code
    line = _one_line_error(capsys)
    assert needle in line and ("usage error" in line if code == 2 else "mixq: error:" in line), line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- broken artifacts: one line naming the file


def _checkpoint(folder: Path) -> dict[str, Any]:
    ck = torch.load(folder / CHECKPOINT_FILE, weights_only=True)
    assert isinstance(ck, dict)
    return ck


def _write(folder: Path, obj: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(obj, folder / CHECKPOINT_FILE)
    return folder


def _edit(ck: dict[str, Any], how: str) -> Any:
    ck = dict(ck)
    state = dict(ck["state_dict"])
    if how == "format":
        ck["format"] = "mixq-qat-checkpoint"
    elif how == "version":
        ck["version"] = ARTIFACT_VERSION + 1
    elif how == "model":
        ck["model"] = "nosuchnet"
    elif how == "missing-key":
        del state["features.3.w_scales"]
    elif how == "shape":
        state["features.3.weight"] = state["features.3.weight"][:16]
    elif how == "nan":
        state["features.0.weight"] = state["features.0.weight"].clone().fill_(float("nan"))
    elif how == "absurd":
        state["features.0.weight"] = state["features.0.weight"].clone().fill_(3e35)
    elif how == "plan":
        ck["plan"] = {"mixq_plan": 1, "model": "cnv", "layers": {"features.99": ck["plan"]["layers"]["features.3"]}}
    elif how == "pickled-module":
        return nn.Linear(2, 2)
    ck["state_dict"] = state
    return ck


@pytest.mark.parametrize("how,error,needle", [
    ("format", DataError, "not a mixq quantize checkpoint (format 'mixq-qat-checkpoint'"),
    ("version", DataError, f"version {ARTIFACT_VERSION + 1} is newer than this mixq reads"),
    ("model", ModelError, "'nosuchnet' is not a zoo model"),
    ("missing-key", ModelError, "does not fit cnv under its plan (missing: features.3.w_scales)"),
    ("shape", ModelError, "shape: features.3.weight (16, 32, 3, 3) vs (32, 32, 3, 3)"),
    ("nan", NumericError, "tensor features.0.weight has 288 NaN"),
    ("absurd", NumericError, "tensor features.0.weight has an absurd magnitude 3e+35 (limit 1e+30)"),
    ("plan", MixqError, "features.99"),
    ("pickled-module", DataError, "not a mixq quantize checkpoint"),
])
def test_broken_artifact_is_one_line_naming_the_file(how: str, error: type[Exception], needle: str,
                                                     gptq_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path / "bad", _edit(_checkpoint(gptq_dir), how))
    with pytest.raises(error) as e:
        load_artifact(bad)
    msg = str(e.value)
    assert needle in msg and str(bad / CHECKPOINT_FILE) in msg and "\n" not in msg, msg
    assert main(["verify", "--from", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert str(bad / CHECKPOINT_FILE) in _one_line_error(capsys)


def test_large_quantizer_scales_load(gptq_dir: Path, tmp_path: Path) -> None:
    """A calibrated quantizer's scale follows its activations, which a deep random-init network takes past the 1e6
    limit a user's weights file is held to (pytorchcv's PyramidNet-110: 1.4e6): the artifact loads as written."""
    ck = _checkpoint(gptq_dir)
    state = dict(ck["state_dict"])
    key = next(k for k in state if k.endswith("input_quant.scale"))
    state[key] = state[key].clone().fill_(1.4e6)
    ck["state_dict"] = state
    art = load_artifact(_write(tmp_path / "big", ck))
    assert float(dict(art.qmodel.state_dict())[key]) == pytest.approx(1.4e6)


def test_missing_or_junk_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such artifact folder"):
        read_checkpoint(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"quantized\.pt: file not found"):
        read_checkpoint(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="corrupt or not saved with torch.save"):
        read_checkpoint(tmp_path / "junk")


def test_older_checkpoint_without_module_record_loads(gptq_dir: Path, tmp_path: Path) -> None:
    ck = _checkpoint(gptq_dir)
    del ck["modules"]  # written before the module record existed
    art = load_artifact(_write(tmp_path / "old", ck))
    x = _test_images(32)
    assert torch.equal(_out(art.qmodel, x), _out(load_artifact(gptq_dir).qmodel, x))


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")
def test_rtl_simulate_from(gptq_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "rtl", "simulate", "--from", str(gptq_dir), "--layer", "features.3", "--pe", "2",
                 "--simd", "4", "--pixels", "2", "--out", str(tmp_path)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] and res["mismatches"] == 0 and res["outputs"] == 2 * 32
