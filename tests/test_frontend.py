"""The one graph front end: one tracer and op table (`graph.trace`), the normalize pass, capture's
support column, and the hardware estimate of every stream kind it produces."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from mixq import api
from mixq.errors import ModelError
from mixq.graph import capture
from mixq.graph.normalize import normalize
from mixq.graph.trace import FUNCTION_KINDS, KINDS, METHOD_KINDS, MODULE_KINDS, STAGES, node_ops, trace
from mixq.hw.estimate import estimate
from mixq.nn import ZeroInsert


def test_op_table_is_one_consistent_table() -> None:
    for table in (MODULE_KINDS, FUNCTION_KINDS, METHOD_KINDS):
        assert set(table.values()) <= set(KINDS), set(table.values()) - set(KINDS)
    assert all(set(k.stages) <= set(STAGES) for k in KINDS.values())
    # nothing the engine does not run is claimed as exportable
    assert all("export" not in k.stages for k in KINDS.values() if "engine" not in k.stages)


@pytest.mark.parametrize(("k", "s", "p", "op", "d", "g"), [
    (3, 2, 1, 1, 1, 1), (4, 2, 1, 0, 1, 1), (2, 2, 0, 0, 1, 1), (3, 2, 0, 1, 2, 1), (5, 3, 2, 2, 1, 1),
    (4, 2, 1, 0, 1, 4), (3, 1, 1, 0, 1, 2)])
def test_transposed_conv_is_exactly_zero_insertion_and_a_conv(k: int, s: int, p: int, op: int, d: int,
                                                               g: int) -> None:
    torch.manual_seed(k * 7 + s)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(8, 4, k, s, p, op, groups=g, dilation=d)).eval()
    norm = normalize(model, (3, 7, 6))
    assert isinstance(norm.get_submodule("2"), nn.Conv2d) and isinstance(norm.get_submodule("2_zeros"), ZeroInsert)
    x = torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        assert torch.allclose(norm(x), model(x), atol=1e-5)
    assert isinstance(model[2], nn.ConvTranspose2d)  # the input model is untouched


def test_transposed_conv_without_a_conv_form_is_refused_by_name() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(3, 3, 3, 2, padding=3)).eval()
    with pytest.raises(ModelError, match=r"normalize: layer '0' \(ConvTranspose2d\): padding"):
        normalize(model, (3, 8, 8))


class Signal(nn.Module):
    """A 1-D CNN: conv/BN/ReLU/pool, a depthwise residual, a reused conv, a concat, GAP, Linear + BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn, self.r = nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU()
        self.p, self.c2 = nn.MaxPool1d(2), nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.c3, self.gap = nn.Conv1d(8, 16, 3, stride=2), nn.AdaptiveAvgPool1d(1)
        self.fc, self.bnf = nn.Linear(32, 4), nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.p(self.r(self.bn(self.c1(x))))
        y = self.r(y + self.c2(y))
        y = torch.cat([self.c3(y), self.c3(y)], 1)
        return self.bnf(self.fc(torch.flatten(self.gap(y), 1)))


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))  # type: ignore[union-attr]
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)  # type: ignore[union-attr]
    return model.eval()


def test_conv1d_network_becomes_one_chain_of_1xk_conv2d() -> None:
    model = _randomize(Signal())
    norm = normalize(model, (2, 64))
    assert isinstance(norm, fx.GraphModule)
    x = torch.randn(3, 2, 64)
    with torch.no_grad():
        assert torch.equal(norm(x), model(x))
    calls = [n for n in norm.graph.nodes if n.op == "call_method"]
    assert [n.target for n in calls] == ["unsqueeze"]  # every squeeze sank into the flatten
    assert isinstance(norm.get_submodule("c1"), nn.Conv2d) and norm.get_submodule("c1").kernel_size == (1, 5)
    assert isinstance(norm.get_submodule("bn"), nn.BatchNorm2d)
    assert isinstance(norm.get_submodule("bnf"), nn.BatchNorm1d)  # on (N, F) features: left alone
    specs = capture(model, (2, 64))
    by = {s.name: s for s in specs}
    assert by["c1"].kind == "conv" and by["c1"].kernel == (1, 5) and by["c1"].out_shape == (8, 1, 64)
    assert by["c2"].kind == "dwconv" and by["c3:1"].kind == "conv" and by["cat"].kind == "concat"
    assert by["c1"].macs == 8 * 64 * 2 * 5
    plan = api.default_plan("signal", model, torch.randn(8, 2, 64))
    assert list(plan.layers) == ["c1", "c2", "c3", "fc"]
    q = api.quantize(model, plan, torch.randn(64, 2, 64))
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert float((out - ref).norm() / ref.norm()) < 0.05
    assert estimate(specs, plan, "xc7z020", "streaming").fps > 0


class TinyUNet(nn.Module):
    """Encoder-decoder: conv/BN/ReLU, max pool, a transposed conv up, a concat skip, Hardswish,
    PixelShuffle, bilinear upsample and a sigmoid head."""

    def __init__(self) -> None:
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.e2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, 2)
        self.d1 = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.Hardswish())
        self.ps = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1), nn.PixelShuffle(2))
        self.u = nn.Upsample(scale_factor=2, mode="bilinear")
        self.out, self.sig = nn.Conv2d(3, 3, 1), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(self.pool(a))
        c = self.d1(torch.cat([a, self.up(b)], 1))
        return self.sig(self.out(self.u(self.ps(c))))


def test_unet_capture_marks_every_node_supported_and_the_estimate_prices_every_stream_op() -> None:
    model = _randomize(TinyUNet())
    specs = capture(model, (3, 32, 32))
    kinds = {s.name: s.kind for s in specs}
    assert kinds["up_zeros"] == "zero_insert" and kinds["up"] == "conv" and kinds["cat"] == "concat"
    assert kinds["ps.1"] == "pixel_shuffle" and kinds["u"] == "upsample" and kinds["d1.1"] == "act"
    assert all(s.extra["support"] == "ok" for s in specs[1:])
    assert next(s for s in specs if s.name == "u").extra["mode"] == "bilinear"
    plan = api.default_plan("unet", model, torch.rand(4, 3, 32, 32))
    assert "up" in plan.layers
    est = estimate(specs, plan, "xc7z020", "streaming")
    by = {le.name: le for le in est.layers}
    for name in ("cat", "d1.1", "sig", "u", "ps.1", "up_zeros"):
        assert by[name].cycles > 0, name
    assert by["cat"].resources.bram + by["cat"].resources.lut > 0  # the skip FIFO of the concat
    assert by["sig"].resources.bram + by["sig"].resources.lut > 0  # the lookup table
    assert estimate(specs, plan, "xc7z020", "overlay").fps > 0


def test_unsupported_node_is_named_with_the_stages_that_cannot_run_it() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return torch.softmax(y - y, dim=1)

    specs = capture(Gate(), (3, 8, 8))
    by = {s.name: s for s in specs}
    assert by["sub"].kind == "other" and by["sub"].extra["support"] == "no quantize/engine/export/estimate"
    assert by["softmax"].extra["support"] == "no engine/export"
    ops = node_ops(trace(Gate()))
    assert [o.kind for o in ops.values()] == ["conv", "unsupported", "softmax"]


def test_functional_activations_become_modules_and_verify_exactly() -> None:
    from mixq.engine import verify

    class Fn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.silu(self.c1(x))
            y = torch.nn.functional.leaky_relu(self.c2(y), 0.2).tanh()
            return self.fc(torch.sigmoid(y).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Fn().eval(), torch.rand(32, 3, 16, 16)
    norm = normalize(model, (3, 16, 16))
    acts = {name: type(m).__name__ for name, m in norm.named_children() if name.endswith("_act")}
    assert acts == {"silu_act": "SiLU", "leaky_relu_act": "LeakyReLU", "tanh_act": "Tanh", "sigmoid_act": "Sigmoid"}
    assert norm.get_submodule("leaky_relu_act").negative_slope == 0.2
    with torch.no_grad():
        assert torch.equal(norm(x), model(x))
    q = api.quantize(model, api.default_plan("fn", model, x), x)
    assert sum(type(m).__name__ == "QLutAct" for m in q.modules()) == 4
    rep = verify(q, x[:8])
    assert rep["exact"] and rep["mismatching_outputs"] == 0


def test_estimate_prices_an_unfolded_batchnorm_and_not_a_folded_one() -> None:
    model = _randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(),
                                     nn.Linear(4 * 8 * 8, 3)))
    specs = capture(model, (3, 8, 8))
    assert [s.name for s in specs if s.kind == "bn"] == ["1", "3"]
    est = estimate(specs, api.default_plan("bn", model, torch.rand(8, 3, 8, 8)), "xc7z020", "streaming")
    by = {le.name: le for le in est.layers}
    assert "1" not in by  # folded into conv 0
    assert by["3"].cycles > 0 and by["3"].resources.dsp + by["3"].resources.lut > 0  # a multiply-add per lane


def test_a_traced_model_pickles() -> None:
    """FX keeps string annotations (``from __future__ import annotations`` in the zoo) as globals that
    cannot be pickled; the one tracer drops them, so a folded model reaches a worker process."""
    import pickle

    from mixq import zoo
    from mixq.graph.bnfold import fold_bn

    folded = fold_bn(zoo.load("cnv", pretrained=False).eval())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(pickle.loads(pickle.dumps(folded))(x), folded(x))
