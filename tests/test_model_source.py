"""Any user's model: a Python builder (``FILE.py:FUNCTION`` or ``package.module:FUNCTION``) with optional
``--weights`` through capture, quantize, verify, export and estimate; the artifact rebuilds it; every
failure is one line naming the spec."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from mixq.artifact import load_artifact, read_checkpoint
from mixq.cli import main
from mixq.errors import ModelError, OptionError
from mixq.zoo.source import ModelSource, parse_shape

pytestmark = pytest.mark.usefixtures("one_thread")

NET = textwrap.dedent('''
    import torch
    from torch import nn


    def build():
        """A CIFAR-style 3x32x32 CNN."""
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 10))


    def gray():
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


    gray.input_shape = (1, 28, 28)


    def broken():
        raise RuntimeError("no GPU here")


    def not_a_model():
        return 42
''')


def _net(tmp_path: Path) -> Path:
    path = tmp_path / "mynet.py"
    path.write_text(NET)
    return path


def _weights(tmp_path: Path, func: str = "build", nan: bool = False) -> Path:
    torch.manual_seed(0)
    model = ModelSource(f"{_net(tmp_path)}:{func}").load()
    with torch.no_grad():  # trained-looking BN statistics, not the identity init
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    state = model.state_dict()
    if nan:
        next(v for k, v in state.items() if k.endswith("weight"))[0].view(-1)[0] = float("nan")
    path = tmp_path / ("nan.pt" if nan else f"{func}.pt")
    torch.save(state, path)
    return path


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_builder_file_through_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    net, w = _net(tmp_path), _weights(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["capture", "mynet.py:build", "--input-shape", "3,32,32"]) == 0
    assert (tmp_path / "runs" / "capture-build" / "layers.json").is_file()
    a = tmp_path / "A"
    assert main(["quantize", "mynet.py:build", "--weights", str(w), "--input-shape", "3,32,32", "--calib", "photos",
                 "--images", "16", "--out", str(a)]) == 0
    ck = read_checkpoint(a)
    assert ck.model_name == "build" and ck.source is not None and ck.source.kind == "builder"
    assert ck.source.file == net.resolve() and ck.source.shape() == (3, 32, 32)
    capsys.readouterr()
    # from another folder: the recorded absolute path rebuilds the model
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["verify", "--from", str(a), "--images", "8", "--out", "v"]) == 0
    assert "EXACT" in capsys.readouterr().out
    assert main(["export", "--from", str(a), "--format", "int", "--check", "--images", "4", "--out", "e"]) == 0
    assert "max |difference| 0," in capsys.readouterr().out
    assert main(["estimate", "--from", str(a), "--out", "es"]) == 0
    assert (other / "es" / "estimate.json").is_file()
    # the model read back is the one quantize wrote, with the user's weights
    art = load_artifact(a)
    assert art.source == ck.source
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(art.qmodel(x)).all()


def test_builder_without_artifact_and_gray_input_shape_attribute(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    net, w = _net(tmp_path), _weights(tmp_path, "gray")
    # 1 channel: the shipped Fashion-MNIST images; the input shape from the function's attribute
    assert main(["verify", f"{net}:gray", "--weights", str(w), "--images", "8", "--out", str(tmp_path / "v")]) == 0
    assert "EXACT" in capsys.readouterr().out
    assert main(["estimate", f"{net}:gray", "--out", str(tmp_path / "es")]) == 0
    assert ModelSource(f"{net}:gray").shape() == (1, 28, 28)


def test_package_module_builder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = ModelSource("mixq.zoo.cnv:cnv")
    assert src.kind == "builder" and src.module == "mixq.zoo.cnv" and src.name == "cnv"
    assert main(["capture", "mixq.zoo.cnv:cnv", "--input-shape", "1,28,28", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "layers.json").is_file()
    assert main(["estimate", "mixq.zoo.cnv:cnv", "--input-shape", "1,28,28", "--out", str(tmp_path / "e")]) == 0


@pytest.mark.parametrize("case", ["missing file", "syntax error", "missing function", "raises", "not a module",
                                  "other weights", "nan weights", "no input shape", "no module"])
def test_errors_are_one_line_naming_the_spec(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = _net(tmp_path)
    (tmp_path / "bad.py").write_text("import torch\n\ndef build(:\n    pass\n")
    spec, extra, needle = {
        "missing file": (f"{tmp_path}/nosuch.py:build", [], "not found"),
        "syntax error": (f"{tmp_path}/bad.py:build", [], "bad.py:3: SyntaxError"),
        "missing function": (f"{net}:nope", [], "no function 'nope'"),
        "raises": (f"{net}:broken", [], "broken() raised RuntimeError: no GPU here"),
        "not a module": (f"{net}:not_a_model", [], "returned a int"),
        "other weights": (f"{net}:build", ["--weights", str(_weights(tmp_path, "gray"))], "does not fit"),
        "nan weights": (f"{net}:build", ["--weights", str(_weights(tmp_path, nan=True))], "NaN"),
        "no input shape": (f"{net}:build", [], "--input-shape"),
        "no module": ("no_such_pkg.models:build", [], "cannot import module no_such_pkg.models"),
    }[case]
    shape = [] if case == "no input shape" else ["--input-shape", "3,32,32"]
    out = tmp_path / "out"
    assert main(["quantize", spec, *shape, *extra, "--images", "8", "--out", str(out)]) == 1
    line = _one_line(capsys)
    assert spec in line and needle in line and "Traceback" not in line, line
    assert not out.exists()


def test_bad_input_shape_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", f"{_net(tmp_path)}:build", "--input-shape", "3,x,32"]) == 2
    assert "--input-shape" in _one_line(capsys)


def test_from_refuses_weights_and_zoo_with_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "cnv.pt"
    from mixq import zoo

    torch.manual_seed(0)
    torch.save(zoo.load("cnv").state_dict(), w)
    a = tmp_path / "A"
    assert main(["quantize", "cnv", "--weights", str(w), "--images", "8", "--out", str(a)]) == 0
    ck = read_checkpoint(a)
    assert ck.source == ModelSource("cnv", str(w.resolve()), (1, 28, 28))
    capsys.readouterr()
    assert main(["verify", "--from", str(a), "--weights", str(w), "--out", str(tmp_path / "v")]) == 1
    assert "--weights" in _one_line(capsys)


def test_source_api() -> None:
    assert parse_shape("3,32,32") == (3, 32, 32) == parse_shape("3x32x32")
    assert parse_shape("2,64") == (2, 64) and parse_shape("1024") == (1024,)  # 1-D signals, with or without C
    for bad in ("3,0,32", "1,2,3,4", "", "a,b"):
        with pytest.raises(OptionError):
            parse_shape(bad)
    zoo_src = ModelSource("resnet20")
    assert zoo_src.kind == "zoo" and zoo_src.name == "resnet20" and zoo_src.shape() == (3, 32, 32)
    assert ModelSource.from_dict(zoo_src.to_dict()) == ModelSource("resnet20", None, (3, 32, 32))
    with pytest.raises(ModelError, match="not a zoo model"):
        ModelSource("nosuch")
    with pytest.raises(ModelError, match="FUNCTION"):
        ModelSource("mynet.py:")
