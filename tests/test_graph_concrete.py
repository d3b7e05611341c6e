"""Forwards that read their shapes, test their inputs' types or take flags: traced at the input shape
(:mod:`mixq.graph.concrete`), checked against the model's own forward, or refused in one line."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq import api
from mixq.engine import verify
from mixq.errors import ModelError
from mixq.graph.capture import capture
from mixq.graph.normalize import normalize
from mixq.graph.trace import trace


class ShapeReader(nn.Module):
    """Unpacks its shape, takes its rank, pads where a size is odd, reshapes with the (symbolic) batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x))
        u = self.up(self.pool(a))
        sp = [0] * (2 * (len(x.shape) - 2))
        for i in range(len(x.shape) - 2):  # the pooled map lost a row / column of an odd size: pad it back
            if a.shape[-i - 1] != u.shape[-i - 1]:
                sp[i * 2 + 1] = a.shape[-i - 1] - u.shape[-i - 1]
        u = F.pad(u, sp)
        b, c, h, w = u.shape
        y = (a + u).view(b, c, h, w).mean((2, 3))
        return self.head(y)


class OptionalSkip(nn.Module):
    """MONAI's UpCat pattern: the skip is concatenated where it is a tensor (``torch.jit.isinstance``)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, padding=1)
        self.dec = nn.Conv2d(8, 2, 3, padding=1)
        self.alt = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        e = torch.relu(self.enc(x))
        s = torch.as_tensor(e)  # MONAI's HighResBlock
        if s is not None and torch.jit.isinstance(s, torch.Tensor):
            return self.dec(torch.cat([e, s], 1))
        return self.alt(e)


class Flagged(nn.Module):
    """A flag argument with a default the forward branches on (pytorchcv's MSDNet ``only_last``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, only_last: bool = True) -> torch.Tensor:
        y = self.conv(x)
        return y if only_last else torch.cat([y, y], 1)


class BuiltinIsinstance(nn.Module):
    """``isinstance(x, torch.Tensor)`` is false of a traced value: tracing takes the other branch silently."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(y) if isinstance(y, torch.Tensor) else -y


class ValueBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.mean() > 0 else -y


class BatchSlice(nn.Module):
    """Keeps the first half of the batch: a number made from the batch size, which no one graph reproduces."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n = int(y.size(0) * 0.5) + 1
        return y[:n]


def _same(gm: nn.Module, model: nn.Module, shape: tuple[int, ...], batches: tuple[int, ...] = (1, 3, 5)) -> None:
    for b in batches:
        x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            assert torch.equal(gm.eval()(x), model.eval()(x)), b


def test_a_forward_reading_its_shapes_is_traced_and_runs_at_every_batch_size() -> None:
    torch.manual_seed(0)
    model = ShapeReader().eval()
    with pytest.raises(ModelError):  # plain tracing cannot unpack a shape
        trace(model)
    for shape in ((3, 9, 7), (3, 8, 8)):  # odd sizes take the pad branch, even ones not
        gm = normalize(model, shape)
        assert isinstance(gm, fx.GraphModule)
        _same(gm, model, shape)
        pads = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is F.pad]
        assert [p.args[1] for p in pads] == ([[0, 1, 0, 1]] if shape[1] % 2 else [])  # a pad of nothing goes
        assert any(n.op == "call_method" and n.target == "size" for n in gm.graph.nodes)  # the batch, symbolic
    specs = capture(model, (3, 9, 7))
    assert [s.kind for s in specs if s.kind in ("conv", "linear", "maxpool")] == ["conv", "maxpool", "linear"]
    gm = normalize(model, (3, 9, 7))
    with pytest.raises(ModelError, match=r"ShapeReader was traced at input \(3, 9, 7\).*got \(3, 8, 8\)"):
        gm(torch.randn(2, 3, 8, 8))
    pickle.loads(pickle.dumps(gm))  # the guard pickles with the graph (models ship to worker processes)


def test_an_optional_skip_tested_with_torch_jit_isinstance_is_traced_down_its_real_branch() -> None:
    torch.manual_seed(0)
    model = OptionalSkip().eval()
    gm = trace(model)
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    assert called == {"enc", "dec"}  # not `alt`
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert normalize(model, (3, 8, 8)) is model  # checked, nothing to rewrite


def test_a_flag_argument_is_traced_at_its_default_and_the_graph_takes_one_input() -> None:
    torch.manual_seed(0)
    model = Flagged().eval()
    gm = normalize(model, (3, 8, 8))
    assert isinstance(gm, fx.GraphModule)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    assert not any(n.target is torch._assert for n in gm.graph.nodes)
    _same(gm, model, (3, 8, 8))
    assert [s.kind for s in capture(model, (3, 8, 8))] == ["input", "conv"]


@pytest.mark.parametrize(("cls", "why"), [
    (BuiltinIsinstance, "computes another output than its own forward"),
    (BatchSlice, "computes another output than its own forward"),
    (ValueBranch, "cannot trace ValueBranch"),
])
def test_a_branch_tracing_cannot_follow_is_one_model_error(cls: type[nn.Module], why: str) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    with pytest.raises(ModelError, match=why) as err:
        capture(model, (3, 8, 8))
    assert "\n" not in str(err.value) and "onnx" in str(err.value)


def test_a_shape_reading_model_quantizes_and_runs_bit_exactly_on_the_integer_engine() -> None:
    torch.manual_seed(0)
    model = ShapeReader().eval()
    x = torch.rand(16, 3, 9, 7, generator=torch.Generator().manual_seed(3))
    q = api.quantize(model, api.default_plan("shapes", model, x), x)
    rep = verify(q, x[:8])
    assert rep["exact"] and rep["mismatching_outputs"] == 0


def test_a_shape_reading_model_goes_through_the_cli(tmp_path: Path) -> None:
    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent('''
        import torch
        from torch import nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)
                self.head = nn.Linear(8, 4)

            def forward(self, x):
                b, c, h, w = self.conv(x).shape
                y = torch.relu(self.conv(x)).reshape(b, c, h * w).amax(2)
                return self.head(y)


        def build():
            torch.manual_seed(0)
            return Net()


        build.input_shape = (3, 12, 12)
        '''))
    r = subprocess.run([sys.executable, "-m", "mixq", "capture", f"{src}:build", "--out", str(tmp_path / "cap")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "conv" in r.stdout and "linear" in r.stdout
