"""mixq.algorithms.prune: masks, focused-format choice, sparse size, the pipeline, and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mixq.algorithms.prune import (
    PruneConfig,
    PruneError,
    apply_masks,
    channel_masks,
    choose_pruned_format,
    focused_plan,
    magnitude_mask,
    magnitude_masks,
    param_masks,
    prunable_layers,
    prune_and_quantize,
    separation,
    sparse_size_bytes,
    sparsity_of,
)
from mixq.algorithms.qat import QatConfig, low_bit_plan
from mixq.api import model_size_bytes, quantize
from mixq.cli import main
from mixq.data import load_fmnist_subset, normalize_gray, write_idx
from mixq.formats import Focused, PowerOfTwo, parse_format
from mixq.nn import QConv2d

torch.set_num_threads(1)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Linear(144, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fmnist_subset()
    return normalize_gray(x[:128]), torch.as_tensor(y[:128], dtype=torch.int64)


def test_magnitude_masks() -> None:
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    m = magnitude_mask(w, 0.7)
    assert sparsity_of({"a": m}) == pytest.approx(0.7, abs=1 / w.numel())
    assert float(w[m == 1].abs().min()) >= float(w[m == 0].abs().max())
    with pytest.raises(PruneError, match="prune.sparsity"):
        magnitude_mask(w, 1.0)
    model = tiny()
    assert prunable_layers(model) == ["4", "9"]
    per_layer = magnitude_masks(model, 0.5)
    assert set(per_layer) == {"4", "9"} and all(sparsity_of({k: v}) == 0.5 for k, v in per_layer.items())
    glob = magnitude_masks(model, 0.5, scope="global")
    assert sparsity_of(glob) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(PruneError, match="prune.layers"):
        magnitude_masks(model, 0.5, layers=["1"])


@pytest.mark.parametrize("criterion", ["l1", "bn_gamma"])
def test_channel_masks_zero_whole_channels_and_their_bn(criterion: str) -> None:
    model = tiny()
    with torch.no_grad():
        model[5].weight.copy_(torch.linspace(0.1, 1.6, 16))  # distinct γ
    masks = channel_masks(model, 0.5, criterion=criterion)
    m = masks["4"]
    rows = m.reshape(16, -1)
    assert bool(((rows == 0).all(1) | (rows == 1).all(1)).all()) and int((rows[:, 0] == 0).sum()) == 8
    if criterion == "bn_gamma":
        assert (rows[:, 0] == 0).nonzero().flatten().tolist() == list(range(8))
    pruned = apply_masks(model, masks)
    dead = rows[:, 0] == 0
    assert bool((pruned[4].weight[dead] == 0).all()) and bool((pruned[5].weight[dead] == 0).all())
    assert bool((pruned[5].bias[dead] == 0).all())
    with torch.no_grad():
        feats = pruned[:7](torch.randn(4, 1, 28, 28))
    assert float(feats[:, dead].abs().max()) == 0.0  # the pruned channels output exactly zero
    pm = param_masks(model, masks)
    assert {"4.weight", "5.weight", "5.bias", "9.weight"} <= set(pm)


def test_focused_or_shift_format_by_separation() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 32, 3, 3, generator=g)
    pruned = w * magnitude_mask(w, 0.7)
    sep = separation(pruned)
    assert sep.d > 2 and sep.valley < 0.2 and sep.separated()
    assert isinstance(choose_pruned_format(pruned, 4), Focused)
    assert isinstance(choose_pruned_format(w, 4), PowerOfTwo)  # one lobe
    flat = torch.rand(4000, generator=g) - 0.5
    assert separation(flat).d > 2 and not separation(flat).separated()  # EM splits it; the valley says no
    assert isinstance(choose_pruned_format(flat, 4), PowerOfTwo)


def test_focused_plan_and_sparse_size(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = data
    model = tiny()
    base = low_bit_plan("tiny", model, x[:8], parse_format("fixed8n"), parse_format("ufixed8"))
    masks = magnitude_masks(model, 0.7)
    pruned = apply_masks(model, masks)
    plan, report = focused_plan(pruned, base, masks, bits=4)
    assert plan["4"].weight is not None and plan["4"].weight.kind == "focused"
    assert plan["4"].weight_granularity == "tensor" and report["4"]["kind"] == "focused"
    assert plan["0"] == base["0"]
    dense = quantize(model, base, x[:32])
    assert sparse_size_bytes(dense)["bytes"] == model_size_bytes(dense)  # dense layers: the API's count
    q = quantize(pruned, plan, x[:32])
    size = sparse_size_bytes(q)
    assert size["layers"]["4"]["sparse"] and size["layers"]["9"]["sparse"]
    m = q.get_submodule("4")
    assert isinstance(m, QConv2d)
    nnz = int((m.quantized_weight() != 0).sum())
    expected = nnz * 4 + m.weight.numel() + 16 * 32 + 16 * 32  # values + bitmap + scales + bias
    assert size["layers"]["4"]["sparse_bits"] == expected
    assert size["bytes"] < size["dense_bytes"] == model_size_bytes(q)


def test_prune_pipeline_and_resume(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    model = tiny()
    base = low_bit_plan("tiny", model, x[:8], parse_format("fixed8n"), parse_format("ufixed8"))
    pcfg = PruneConfig(sparsity=0.7, finetune_epochs=1, finetune_lr=0.02)
    qcfg = QatConfig(epochs=1, batch_size=32, progress=False, threads=1, calib_images=32, checkpoint_every=2)
    res = prune_and_quantize(model, base, (x, y), pcfg, qcfg, tmp_path / "p", val=(x[:64], y[:64]))
    s = res.summary
    assert s["sparsity"] == pytest.approx(0.7, abs=1e-3) and s["compression"] > 6
    for f in ("masks.pt", "finetune/model.pt", "qat/plan.json", "qat/model.pt", "prune.json"):
        assert (tmp_path / "p" / f).is_file(), f
    for name, mask in res.masks.items():  # pruned weights stay exactly zero through fine-tuning and QAT
        m = res.model.get_submodule(name)
        assert isinstance(m, QConv2d | nn.Module)
        assert float(m.weight.detach()[mask == 0].abs().max()) == 0.0
    assert json.loads((tmp_path / "p" / "prune.json").read_text())["size_bytes"] == s["size_bytes"]
    again = prune_and_quantize(model, base, (x, y), pcfg, qcfg, tmp_path / "p", val=(x[:64], y[:64]), resume=True)
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    with pytest.raises(PruneError, match="checkpoint exists"):
        prune_and_quantize(model, base, (x, y), pcfg, qcfg, tmp_path / "p")


def test_channel_pruned_pipeline_keeps_dead_channels_dead(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]
                                                          ) -> None:
    x, y = data
    model = tiny()
    base = low_bit_plan("tiny", model, x[:8], parse_format("fixed8n"), parse_format("ufixed8"))
    pcfg = PruneConfig(sparsity=0.5, method="channel", criterion="bn_gamma", finetune_epochs=1)
    qcfg = QatConfig(epochs=1, batch_size=32, progress=False, threads=1, calib_images=32)
    res = prune_and_quantize(model, base, (x, y), pcfg, qcfg, tmp_path / "c")
    m = res.model.get_submodule("4")
    assert isinstance(m, QConv2d) and m.bias is not None
    dead = res.masks["4"].reshape(16, -1)[:, 0] == 0
    assert int(dead.sum()) == 8
    assert float(m.weight.detach()[dead].abs().max()) == 0.0 and float(m.bias.detach()[dead].abs().max()) == 0.0
    assert res.summary["layers"]["4"]["kind"] == "pot"  # the surviving rows are dense: shift fall-back


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fmnist")
    x, y = load_fmnist_subset()
    for stem in ("train", "t10k"):
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", x[:96])
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y[:96].astype("uint8"))
    from mixq.zoo.cnv import cnv

    torch.manual_seed(0)
    weights = root / "cnv.pt"
    torch.save(cnv().state_dict(), weights)
    return {"root": root, "weights": weights}


def test_cli_qat_and_resume(tmp_path: Path, cli_env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["qat", "--out", str(tmp_path / "q"), "--weights", str(cli_env["weights"]), "--data-root",
            str(cli_env["root"]), "--epochs", "1", "--batch-size", "32", "--max-train", "64", "--quiet",
            "--weight", "fixed4n", "--weight-alt", "sp2_4", "--alt-ratio", "0.5", "--threads", "1",
            "--checkpoint-every", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert json.loads(out[: out.rindex("}") + 1])["steps"] == 2
    plan = json.loads((tmp_path / "q" / "plan.json").read_text())
    assert plan["layers"]["features.3"]["alt_rows"] and plan["layers"]["features.0"]["weight"]["bits"] == 8
    assert main(args + ["--resume"]) == 0
    assert '"global_step": 2' in capsys.readouterr().out


def test_cli_qat_folder_is_an_artifact(tmp_path: Path, cli_env: dict[str, Path]) -> None:
    """The `mixq qat` run folder is a quantize artifact too: `verify --from` (a real process) runs the trained model
    in the integer engine, bit-exactly, and `estimate --from` prices its plan; the model read back computes what
    the run folder's model.pt does."""
    import subprocess
    import sys

    from mixq.algorithms.qat import load_result
    from mixq.artifact import load_artifact

    out = tmp_path / "q"
    assert main(["qat", "--out", str(out), "--weights", str(cli_env["weights"]), "--data-root", str(cli_env["root"]),
                 "--epochs", "1", "--batch-size", "32", "--max-train", "64", "--quiet", "--threads", "1"]) == 0
    art = load_artifact(out)
    assert art.recipe["name"] == "qat" and art.summary["calibration"]["source"] == "shipped"
    from mixq.zoo.cnv import cnv

    back, _ = load_result(out, cnv())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(art.qmodel(x), back(x))
    for cmd in (["verify", "--images", "8"], ["estimate"]):
        r = subprocess.run([sys.executable, "-m", "mixq", *cmd, "--from", str(out), "--out", str(tmp_path / cmd[0])],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert cmd[0] != "verify" or "EXACT (0 of 80 outputs differ" in r.stdout, r.stdout


def test_cli_prune(tmp_path: Path, cli_env: dict[str, Path]) -> None:
    assert main([
        "prune", "--out", str(tmp_path / "p"), "--weights", str(cli_env["weights"]), "--data-root",
        str(cli_env["root"]), "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "32", "--max-train", "64",
        "--quiet", "--threads", "1", "--kd-alpha", "0"]) == 0
    summary = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert {lay["kind"] for lay in summary["layers"].values()} <= {"focused", "pot"}
    from mixq.artifact import load_artifact
    from mixq.engine import verify

    art = load_artifact(tmp_path / "p")  # the folder is a quantize artifact: --from reads it
    assert art.recipe["name"] == "prune"
    rep = verify(art.qmodel, torch.randn(4, 1, 28, 28))
    assert rep["exact"] and rep["mismatching_outputs"] == 0
