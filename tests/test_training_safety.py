"""Training stops on NaN/Inf without spoiling the last good checkpoint; configs are checked up front;
``resume`` refuses a run made with another plan, other data or other pruning settings.

Real model and data: the pretrained zoo CNV and the shipped Fashion-MNIST subset, a few steps each.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mixq import zoo
from mixq.algorithms.prune import PruneConfig, PruneError, prune_and_quantize
from mixq.algorithms.qat import QatConfig, QatError, low_bit_plan, train_qat
from mixq.algorithms.qat.trainer import epoch_order
from mixq.data import load_fmnist_subset, normalize_gray, write_idx
from mixq.errors import NumericError, OptionError
from mixq.formats import parse_format
from mixq.plan import QuantPlan
from mixq.zoo.train import train_cnv

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = QatConfig(epochs=1, batch_size=32, lr=1e-3, progress=False, threads=1, calib_images=32, checkpoint_every=1)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fmnist_subset()
    return normalize_gray(x[:128]), torch.as_tensor(y[:128], dtype=torch.int64)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return zoo.load("cnv", pretrained=True)


def w4a4(model: nn.Module, x: torch.Tensor, wbits: int = 4) -> QuantPlan:
    return low_bit_plan("cnv", model, x[:16], parse_format(f"fixed{wbits}n"), parse_format("ufixed4"))


def _finite(state: dict[str, Any]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())


def _load(path: Path) -> dict[str, Any]:
    return dict(torch.load(io.BytesIO(path.read_bytes()), weights_only=True))


# -- config checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("lr", math.inf), ("lr", math.nan), ("lr", 0.0), ("lr", -1e-3), ("scale_lr", math.inf),
    ("epochs", 0), ("batch_size", 0), ("checkpoint_every", -1), ("kd_alpha", 1.5), ("kd_alpha", -0.1),
    ("kd_temperature", 0.0), ("kd_temperature", math.inf), ("grad_bits", 0), ("momentum", math.nan),
])
def test_config_refuses_out_of_range_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(QatError, match=rf"QatConfig\.{field}\b"):
        QatConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("kw,name", [({"epochs": 0}, "epochs"), ({"lr": math.inf}, "lr"), ({"lr": 0.0}, "lr"),
                                     ({"batch_size": 1}, "batch_size")])
def test_train_cnv_refuses_bad_arguments(tmp_path: Path, kw: dict[str, Any], name: str) -> None:
    with pytest.raises(OptionError, match=rf"train_cnv {name}: must be"):
        train_cnv(tmp_path / "w.pt", data_root=tmp_path, progress=False, **kw)
    assert not (tmp_path / "w.pt").exists()


# -- NaN / Inf during training --------------------------------------------------------------------

def test_nan_weight_in_the_float_model_is_refused(tmp_path: Path, model: nn.Module,
                                                  data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    bad = copy.deepcopy(model)
    conv = bad.get_submodule("features.3")
    assert isinstance(conv, nn.Conv2d)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(NumericError, match=r"float model's features\.3\.weight holds NaN/Inf"):
        train_qat(bad, w4a4(model, x), (x, y), CFG, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "model.pt").exists() and not (tmp_path / "fresh" / "checkpoint.pt").exists()
    # resuming a good run with the spoiled model leaves its files as they were
    train_qat(model, w4a4(model, x), (x[:64], y[:64]), CFG, tmp_path / "good")
    before = {f: (tmp_path / "good" / f).read_bytes() for f in ("model.pt", "checkpoint.pt")}
    with pytest.raises(NumericError, match="checkpoint.pt is kept"):
        train_qat(bad, w4a4(model, x), (x[:64], y[:64]), CFG, tmp_path / "good", resume=True)
    assert before == {f: (tmp_path / "good" / f).read_bytes() for f in before}


def test_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    # a NaN pixel in an image of the 3rd batch (past the calibration images): steps 1 and 2 are checkpointed
    i = next(int(j) for j in epoch_order(CFG.seed, 0, x.shape[0])[64:96] if int(j) >= CFG.calib_images)
    xn = x.clone()
    xn[i, 0, 5, 5] = math.nan
    out = tmp_path / "nan"
    ckpt = out / "checkpoint.pt"
    with pytest.raises(NumericError) as e:
        train_qat(model, w4a4(model, x), (xn, y), CFG, out)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"qat run in {out}: the training loss is nan at epoch 1/1, step 3/4, global step 3" in msg
    assert f"the last good checkpoint is kept at {ckpt} (epoch 1/1, step 2/4, global step 2)" in msg
    ck = _load(ckpt)
    assert ck["position"]["global_step"] == 2 and _finite(ck["model"]) and _finite(ck["optimizer"]["state"][0])
    assert not (out / "model.pt").exists()


def test_diverging_learning_rate_stops_with_the_last_checkpoint_finite(
        tmp_path: Path, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    out = tmp_path / "diverge"
    with pytest.raises(NumericError, match=r"qat run in .*(the training loss is (nan|inf)|holds NaN/Inf)") as e:
        train_qat(model, w4a4(model, x), (x, y), dataclasses.replace(CFG, lr=1e6, epochs=2), out)
    assert not (out / "model.pt").exists()
    if (out / "checkpoint.pt").exists():  # whatever was written before the divergence is finite
        assert f"last good checkpoint is kept at {out / 'checkpoint.pt'}" in str(e.value)
        assert _finite(_load(out / "checkpoint.pt")["model"])
    else:
        assert "no checkpoint was written yet" in str(e.value)


def test_train_cnv_divergence_keeps_the_existing_weights(tmp_path: Path) -> None:
    x, y = load_fmnist_subset()
    root = tmp_path / "fmnist"
    root.mkdir()
    for stem in ("train", "t10k"):
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", x[:256])
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y[:256].astype("uint8"))
    out = tmp_path / "w.pt"
    out.write_bytes(b"the previous weights")
    with pytest.raises(NumericError, match=rf"train_cnv \({out}\): the training loss is nan at epoch \d/2.*"
                                           rf"the existing {out} is kept"):
        train_cnv(out, epochs=2, data_root=root, lr=1e6, progress=False, max_train=256, max_test=64, threads=1)
    assert out.read_bytes() == b"the previous weights" and not out.with_suffix(".json").exists()


# -- resume refuses what would mix two runs --------------------------------------------------------

def test_resume_refuses_other_training_data(tmp_path: Path, model: nn.Module,
                                            data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    plan = w4a4(model, x)
    out = tmp_path / "run"
    train_qat(model, plan, (x[:64], y[:64]), CFG, out, data_meta={"dataset": "fmnist"})
    with pytest.raises(QatError, match=r"another number of training samples \(--max-train\?\): "
                                       r"field 'data\.samples' is 64 in the checkpoint, 96 now"):
        train_qat(model, plan, (x[:96], y[:96]), CFG, out, resume=True, data_meta={"dataset": "fmnist"})
    with pytest.raises(QatError, match=r"other training inputs .*'data\.inputs_sha256'"):
        train_qat(model, plan, (x[64:128], y[:64]), CFG, out, resume=True, data_meta={"dataset": "fmnist"})
    with pytest.raises(QatError, match=r"field 'data\.meta\.dataset' is 'fmnist' in the checkpoint, 'mnist' now"):
        train_qat(model, plan, (x[:64], y[:64]), CFG, out, resume=True, data_meta={"dataset": "mnist"})
    # the same data resumes (the run is finished: nothing changes)
    again = train_qat(model, plan, (x[:64], y[:64]), CFG, out, resume=True, data_meta={"dataset": "fmnist"})
    assert again.summary["resumed_from"] == {"epoch": 1, "step": 0, "global_step": 2}


def test_resume_refuses_another_plan_naming_the_layer(tmp_path: Path, model: nn.Module,
                                                      data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    out = tmp_path / "run"
    train_qat(model, w4a4(model, x), (x[:64], y[:64]), CFG, out)
    with pytest.raises(QatError, match=r"different plan: plan\.layers\.features\.3\.weight\.bits "
                                       r"\(checkpoint 4, now 3\)"):
        train_qat(model, w4a4(model, x, wbits=3), (x[:64], y[:64]), CFG, out, resume=True)
    # a checkpoint from before the plan / data records (version 1) still resumes, unchecked
    ck = _load(out / "checkpoint.pt")
    for k in ("plan", "data"):
        del ck[k]
    ck["version"] = 1
    buf = io.BytesIO()
    torch.save(ck, buf)
    (out / "checkpoint.pt").write_bytes(buf.getvalue())
    again = train_qat(model, w4a4(model, x), (x[:64], y[:64]), CFG, out, resume=True)
    assert again.summary["resumed_from"] == {"epoch": 1, "step": 0, "global_step": 2}


def test_prune_resume_refuses_other_settings_or_data(tmp_path: Path, model: nn.Module,
                                                     data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    plan = w4a4(model, x)
    pcfg = PruneConfig(sparsity=0.5, finetune_epochs=1)
    out = tmp_path / "p"
    prune_and_quantize(model, plan, (x[:64], y[:64]), pcfg, CFG, out)
    with pytest.raises(PruneError, match=r"different prune config: PruneConfig\.sparsity \(run 0\.5, now 0\.6\)"):
        prune_and_quantize(model, plan, (x[:64], y[:64]), dataclasses.replace(pcfg, sparsity=0.6), CFG, out,
                           resume=True)
    with pytest.raises(PruneError, match=r"prune_state\.json: the run was made on different training data.*"
                                         r"'data\.samples' is 64 in the checkpoint, 96 now"):
        prune_and_quantize(model, plan, (x[:96], y[:96]), pcfg, CFG, out, resume=True)
    with pytest.raises(PruneError, match=r"fine-tuned with a different config: seed"):
        prune_and_quantize(model, plan, (x[:64], y[:64]), pcfg, dataclasses.replace(CFG, seed=3), out, resume=True)
    with pytest.raises(PruneError, match=r"PruneConfig\.finetune_lr: must be a finite number > 0"):
        PruneConfig(finetune_lr=math.inf)
