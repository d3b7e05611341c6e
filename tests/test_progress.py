"""Library progress goes through mixq.progress only: timestamped lines naming the stage and layer
(``log``), parseable JSON events (``json``), nothing at all (``quiet``).

Real runs, kept short: QAT, PTQ recipes, search sensitivity and candidates, and float training of
the pretrained zoo CNV on the shipped Fashion-MNIST subset.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from mixq import progress, zoo
from mixq.algorithms.ptq import quantize_report
from mixq.algorithms.qat import QatConfig, low_bit_plan, train_qat
from mixq.algorithms.search import AccuracyEval, evaluate_plans
from mixq.algorithms.search.sensitivity import SensitivityConfig, sensitivity
from mixq.algorithms.search.space import SearchSpace
from mixq.data import load_fmnist_subset, normalize_gray, write_idx
from mixq.formats import parse_format
from mixq.graph.bnfold import fold_bn
from mixq.plan import QuantPlan
from mixq.zoo.train import train_cnv

pytestmark = pytest.mark.usefixtures("one_thread")

LINE = re.compile(r"^\d\d:\d\d:\d\d mixq: \S")
CFG = QatConfig(epochs=1, batch_size=32, lr=1e-3, threads=1, calib_images=32, progress=True)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fmnist_subset()
    return normalize_gray(x[:64]), torch.as_tensor(y[:64], dtype=torch.int64)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return zoo.load("cnv", pretrained=True)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    yield buf
    progress.configure("auto")


def plan_of(model: nn.Module, x: torch.Tensor, wbits: int = 4, abits: int = 4) -> QuantPlan:
    return low_bit_plan("cnv", model, x[:16], parse_format(f"fixed{wbits}n"), parse_format(f"ufixed{abits}"))


def _lines(buf: io.StringIO) -> list[str]:
    lines = buf.getvalue().splitlines()
    bad = [ln for ln in lines if not LINE.match(ln)]
    assert not bad, bad
    return lines


def _has(lines: list[str], pattern: str) -> bool:
    return any(re.search(pattern, ln) for ln in lines)


def test_qat_reports_steps_and_epochs_as_timestamped_lines(
        stream: io.StringIO, tmp_path: Path, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    progress.configure("log", interval=0, stream=stream)
    train_qat(model, plan_of(model, x), (x, y), CFG, tmp_path / "q", val=(x, y))
    lines = _lines(stream)
    assert _has(lines, r"mixq: qat prepare .*layers=6 train_samples=64")
    assert _has(lines, r"mixq: qat start total=2$")
    assert _has(lines, r"mixq: qat progress done=1/2 epoch=1/1 loss=\d")
    assert _has(lines, r"mixq: qat epoch epoch=1/1 loss=\d\S* val_accuracy=\d")
    assert _has(lines, r"mixq: qat done done=2/2 ")
    assert _has(lines, rf"mixq: qat wrote out={re.escape(str(tmp_path / 'q'))} steps=2 val_accuracy=")
    # progress=False: the run reports nothing
    stream.seek(0)
    stream.truncate()
    train_qat(model, plan_of(model, x), (x, y), QatConfig(**{**CFG.to_dict(), "progress": False}), tmp_path / "q2")
    assert stream.getvalue() == ""


def test_ptq_reports_every_stage_and_layer(stream: io.StringIO, model: nn.Module,
                                           data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = data
    progress.configure("log", interval=0, stream=stream)
    # dfq: CLE, streams, output-aware scales (4-bit weights), calibration, act ranges; network bias correction
    # goes through the shared layer visitor
    res = quantize_report(model, plan_of(model, x, 4, 8), x[:32], "dfq", bias_correction="network")
    lines = _lines(stream)
    assert _has(lines, r"mixq: ptq recipe=dfq model=cnv layers=6$")
    for quick in ("fold_bn", "streams", "swap"):
        assert _has(lines, rf"mixq: ptq {quick} .*seconds="), quick
    for stage in ("cle", "weight_scales", "calibrate", "act_ranges", "bias_correction"):
        assert _has(lines, rf"mixq: ptq {stage} start total=\d+$"), stage
        assert _has(lines, rf"mixq: ptq {stage} done done=\d+/\d+ "), stage
        assert stage in res.timings
    for layer in ("features.0", "features.3", "classifier.3"):
        assert _has(lines, rf"mixq: ptq act_ranges progress done=\d/6 layer={re.escape(layer)} "), layer
        assert _has(lines, rf"mixq: ptq bias_correction progress done=\d/6 layer={re.escape(layer)} "), layer
    assert _has(lines, r"mixq: ptq weight_scales progress done=1/4 layer=features\.3 ")
    assert _has(lines, r"mixq: ptq calibrate progress done=4/4 images=8 ")
    assert _has(lines, r"mixq: ptq finished recipe=dfq seconds=")


def test_search_reports_sensitivity_per_layer_and_each_candidate(
        stream: io.StringIO, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    progress.configure("log", interval=0, stream=stream)
    f = fold_bn(model).eval()
    space = SearchSpace(wbits=(4, 8), abits=(8,), rhos=(0.0,))
    sensitivity(f, x, space, ["features.0"], SensitivityConfig(images=8, hutchinson_samples=1), "cnv")
    plans = [plan_of(model, x, 8, 8), plan_of(model, x, 4, 8)]
    evaluate_plans(f, x[:16], AccuracyEval(x, y), plans, "serial", labels=["w8a8", "w4a8"])
    lines = _lines(stream)
    assert _has(lines, r"mixq: search sensitivity start total=6$")
    for i, layer in enumerate(("features.0", "features.3", "features.7", "features.10", "classifier.0",
                               "classifier.3"), start=1):
        assert _has(lines, rf"mixq: search sensitivity progress done={i}/6 layer={re.escape(layer)} "), layer
    assert _has(lines, r"mixq: search candidates progress done=1/2 plan=w8a8 figure=\d")
    assert _has(lines, r"mixq: search candidates done done=2/2 plan=w4a8 ")


def test_train_cnv_reports_steps_and_epochs(stream: io.StringIO, tmp_path: Path) -> None:
    x, y = load_fmnist_subset()
    for stem in ("train", "t10k"):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", x[:128])
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", y[:128].astype("uint8"))
    progress.configure("log", interval=0, stream=stream)
    train_cnv(tmp_path / "w.pt", epochs=1, data_root=tmp_path, max_train=128, max_test=64, threads=1)
    lines = _lines(stream)
    assert _has(lines, r"mixq: train cnv start total=1$")
    assert _has(lines, r"mixq: train cnv progress done=1/1 epoch=1/1 loss=\d")
    assert _has(lines, r"mixq: train cnv epoch epoch=1/1 loss=\S+ val_accuracy=\d")


def test_quiet_reports_nothing(stream: io.StringIO, tmp_path: Path, model: nn.Module,
                               data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    progress.configure("quiet", stream=stream)
    train_qat(model, plan_of(model, x), (x, y), CFG, tmp_path / "q", val=(x, y))
    quantize_report(model, plan_of(model, x, 4, 8), x[:32], "dfq")
    assert stream.getvalue() == ""


def test_json_lines_parse(stream: io.StringIO, tmp_path: Path, model: nn.Module,
                          data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    progress.configure("json", interval=0, stream=stream)
    train_qat(model, plan_of(model, x), (x, y), CFG, tmp_path / "q", val=(x, y))
    quantize_report(model, plan_of(model, x, 4, 8), x[:32], "minmax")
    events = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    assert events and all({"time", "event", "task"} <= set(e) for e in events)
    tasks = {e["task"] for e in events}
    assert {"qat", "qat epoch", "ptq", "ptq calibrate", "ptq weight_scales", "ptq finished"} <= tasks
    steps = [e for e in events if e["task"] == "qat" and e["event"] == "progress"]
    assert [e["done"] for e in steps] == ["1/2", "2/2"] and all(isinstance(e["loss"], float) for e in steps)
    assert any(e["task"] == "ptq weight_scales" and e.get("layer") == "features.3" for e in events)
    calib = [e["event"] for e in events if e["task"] == "ptq calibrate"]
    assert calib[0] == "start" and calib[-1] == "done" and set(calib[1:-1]) == {"progress"}
