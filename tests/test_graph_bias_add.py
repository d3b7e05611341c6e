"""A constant added to a conv / linear output is that layer's bias (`graph.normalize`): ONNX writes a conv's bias as
``Conv`` + ``Add`` of a (C, 1, 1) constant (the ONNX model zoo's MNIST CNN), which the integer engine refused as a
tensor constant ("layer 'Plus30_const' (tensor constant): not supported by the integer engine"). Folded where it is
exact: the constant varies along the channels only, the layer is called once and the add is its one reader."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from mixq.graph.normalize import normalize

pytestmark = pytest.mark.usefixtures("one_thread")


class Biased(nn.Module):
    """conv (no bias) + c, c + conv, linear - c: every form folds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 5)
        self.register_buffer("c1", torch.randn(1, 4, 1, 1))
        self.c2 = nn.Parameter(torch.randn(4, 1, 1))
        self.register_buffer("c3", torch.randn(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x) + self.c1)
        x = torch.relu(self.c2 + self.conv2(x))
        return self.fc(x.mean((2, 3))) - self.c3


class NotBiases(nn.Module):
    """Adds that are not a bias: a constant varying over the map, a conv whose output another node reads too, a
    conv module called twice, a constant minus a layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 4, 1)
        self.d = nn.Conv2d(4, 4, 1)
        self.register_buffer("map", torch.randn(1, 4, 8, 8))
        self.register_buffer("k", torch.randn(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x) + self.map
        y = self.b(x)
        x = y + self.k + y
        x = self.c(self.c(x) + self.k)
        return self.k - self.d(x)


def _adds(gm: nn.Module) -> int:
    assert isinstance(gm, fx.GraphModule)
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and ("add" in str(n.target)
                                                                          or "sub" in str(n.target)))


def test_a_constant_added_to_a_layer_is_its_bias() -> None:
    m = Biased().eval()
    gm = normalize(m, (3, 8, 8))
    assert _adds(gm) == 0
    assert not any(n.op == "get_attr" for n in gm.graph.nodes)  # the constants went with the adds
    assert torch.equal(gm.conv.bias, m.c1.reshape(4))
    assert torch.equal(gm.conv2.bias, m.conv2.bias + m.c2.reshape(4))
    assert torch.equal(gm.fc.bias, m.fc.bias - m.c3)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(gm(x), m(x), atol=1e-6)
    assert m.conv.bias is None and "c1" in dict(m.named_buffers())  # the user's model is not touched


def test_adds_that_are_not_a_bias_stay() -> None:
    m = NotBiases().eval()
    gm = normalize(m, (3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(gm(x), m(x), atol=1e-6)
    if isinstance(gm, fx.GraphModule):
        assert _adds(gm) == 5
        for name in "abcd":
            assert torch.equal(getattr(gm, name).bias, getattr(m, name).bias)


def test_a_layer_bias_add_verifies_on_the_integer_engine() -> None:
    """Quantized, the folded model runs on the integer engine bit-exactly (before: refused by name)."""
    from mixq import api
    from mixq.engine.verify import verify

    m = Biased().eval()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plan = api.default_plan("biased", m, x[:4])
    q = api.quantize(m, plan, x, recipe="minmax")
    rep = verify(q, x)
    assert rep["exact"] and rep["mismatching_outputs"] == 0, rep


def test_capture_marks_an_add_of_a_constant_the_engine_cannot_run() -> None:
    """An add of a constant that is no bias (it varies over the map) stays, and capture's support column says the
    engine does not run it (it said "ok", and verify then refused the model)."""
    from mixq.graph.capture import capture

    specs = capture(NotBiases().eval(), (3, 8, 8))
    support = {s.name: s.extra.get("support") for s in specs}
    reads_map = [s for s in specs if s.name.startswith("add") and s.inputs == ("a",)]
    assert len(reads_map) == 1 and support[reads_map[0].name] == "no engine", support
    assert support["a"] == "ok" and support["b"] == "ok"
    assert support["add_2"] == "ok"  # y + y: two tensors, the engine's add
