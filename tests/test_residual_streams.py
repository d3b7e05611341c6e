"""Quantized residual streams (:mod:`mixq.graph.residual`, the plan's ``residual_bits``): every residual add reads
and writes activation codes, the integer engine stays bit-exact, and the whole-network RTL's buffers shrink to the
activations' width.

Before: a ResNet-20 at W8A8 kept its residual stream as exact integers on the accumulator grid, 39-40 bits wide from
the second block on; its RTL's buffers took 17.2 Mbit at 32 x 32 (the XC7Z020 has 4.9 Mbit of BRAM).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from mixq import api
from mixq.engine import verify
from mixq.engine.convert import to_integer
from mixq.engine.runner import IntEngine
from mixq.errors import PlanError
from mixq.formats import parse_format
from mixq.graph.residual import ATTR, residual_points, residual_quantizers
from mixq.graph.trace import node_ops, tensor_args, trace
from mixq.nn import QAct
from mixq.plan import QuantPlan, load_plan, save_plan
from mixq.rtl.frames import buffer_bits, frame_banks, rings_of
from mixq.rtl.netgraph import lower_graph


def _resnet() -> nn.Module:
    from mixq import zoo

    torch.manual_seed(0)
    return zoo.load("resnet20", pretrained=False).eval()


def _quantized(m: nn.Module, x: torch.Tensor, bits: int | None) -> nn.Module:
    plan = api.default_plan("net", m, x, weight=parse_format("fixed8"), act=parse_format("ufixed8"))
    return api.quantize(m, dataclasses.replace(plan, residual_bits=bits), x)


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    return _resnet(), torch.rand(8, 3, 32, 32)


def test_every_add_reads_and_writes_a_quantizer(resnet: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = resnet
    q = _quantized(m, x, 8)
    gm = trace(q)
    ops = node_ops(gm)
    adds = [n for n, op in ops.items() if op.kind == "add"]
    assert len(adds) == 9
    stream = set(residual_quantizers(q).values())
    assert len(stream) == len(residual_points(trace(m))) == 21  # 9 sums, 9 branches, 2 projections, the stem

    def quantizer(n: fx.Node) -> QAct | None:
        mod = ops[n].module
        return mod if isinstance(mod, QAct) and mod in stream else None

    for a in adds:
        assert all(quantizer(i) is not None for i in tensor_args(a)), a
        (user,) = a.users  # the block's ReLU, then the stream's quantizer, unsigned
        assert ops[user].kind == "relu"
        (qn,) = user.users
        qa = quantizer(qn)
        assert qa is not None and qa.fmt == parse_format("ufixed8") and qa.calibrated
    branch = [quantizer(i) for a in adds for i in tensor_args(a) if ops[i.args[0]].kind != "relu"]
    assert branch and all(b is not None and b.fmt == parse_format("fixed8") for b in branch)  # a conv's sum: signed


def test_engine_is_bit_exact_and_reads_stream_codes_without_a_requantizer(
        resnet: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = resnet
    q = _quantized(m, x, 8)
    rep = verify(q, x[:4])
    assert rep["exact"] and rep["mismatching_outputs"] == 0
    im = to_integer(q, x[:1])
    by_name = {n.name: n for n in im.nodes}
    streams = {n.name for n in im.nodes if n.name.startswith(ATTR + ".")}
    assert len(streams) == 21
    # a layer whose input quantizer has its stream's scale reads the stream's codes: no requant reads a stream
    assert not [n.name for n in im.nodes if n.op == "requant" and set(n.inputs) & streams]
    readers = [n for n in im.nodes if n.op == "conv" and n.inputs[0] in streams]
    # the stem's stream feeds layer1.0.conv1; the first 8 blocks' outputs the next conv1, and at the two
    # down-sampling blocks the projection too
    assert len(readers) == 1 + 8 + 2
    for n in im.nodes:  # every add's operands are codes of at most 8 bits
        if n.op == "add":
            assert all(by_name[i].bound <= 255 for i in n.inputs), n.name


def test_rtl_buffers_are_as_wide_as_the_activations(resnet: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = resnet
    mem = {}
    for bits in (None, 8):
        im = to_integer(_quantized(m, x, bits), x[:1])
        g = lower_graph(im, IntEngine(im)(x[:1], keep=True).values)
        rings = rings_of(g)
        widths = [b.bits for b in g.buffers if b.shape[1] > 1]  # the head's pooled sums and logits left out
        mem[bits] = sum(buffer_bits(g, rings, frame_banks(g, rings)))
        if bits is None:
            assert max(widths) >= 38  # the exact stream
        else:
            assert max(widths) == 8
    assert mem[8] < 0.3 * mem[None], mem


def test_fp_agreement_stays(resnet: tuple[nn.Module, torch.Tensor]) -> None:
    """At 8 bits the stream's rounding changes the fake-quant model's logits by well under the logits' spread."""
    m, x = resnet
    with torch.no_grad():
        a, b, f = _quantized(m, x, None)(x), _quantized(m, x, 8)(x), m(x)
    assert (a - b).abs().max() < 0.1 * f.std()
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_plan_json_round_trip_and_bad_values(tmp_path: Path) -> None:
    plan = QuantPlan("m", {"c": api.LayerPlan(weight=parse_format("fixed8"), act=parse_format("ufixed8"))},
                     residual_bits=6)
    back = load_plan(save_plan(plan, tmp_path / "p.json"))
    assert back == plan and back.residual_bits == 6
    assert back != dataclasses.replace(plan, residual_bits=None)
    assert back.with_layer("c", plan["c"]).residual_bits == 6 and back.with_meta(a=1).residual_bits == 6
    for bad in (1, 17, "8", True, 8.0):
        with pytest.raises(PlanError, match="residual_bits"):
            dataclasses.replace(plan, residual_bits=bad)
    text = (tmp_path / "p.json").read_text().replace('"residual_bits": 6', '"residual_bits": 40')
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(PlanError, match=r"bad\.json: residual_bits"):
        load_plan(tmp_path / "bad.json")


def test_qat_trains_the_streams(resnet: tuple[nn.Module, torch.Tensor], tmp_path: Path) -> None:
    """QAT of a plan with residual_bits: the stream quantizers are trainable steps, each shared with the first
    layer reading the stream (the trained readers take its codes with no requantizer); the steps move; the run
    folder's model read back (`load_result`: the plan's to_quantized with the state) computes what training
    exported, and the integer engine runs it bit-exactly. With bn='train' one line refuses it."""
    from mixq.algorithms.qat import QatAct, QatConfig, QatError, load_result, prepare_qat, train_qat

    m, x = resnet
    plan = dataclasses.replace(api.default_plan("net", m, x, weight=parse_format("fixed4"),
                                                act=parse_format("ufixed4")), residual_bits=4)
    cfg = QatConfig(epochs=1, batch_size=8, lr=1e-2, calib_images=8, kd_alpha=0.0, progress=False)
    qm = prepare_qat(m, plan, x, cfg)
    streams = {k: a for k, a in getattr(qm, ATTR).items()}
    assert len(streams) == 21 and all(isinstance(a, QatAct) and a.log_scale is not None for a in streams.values())
    shared = {id(a.log_scale) for a in streams.values()}
    readers = [mod.input_quant for mod in qm.modules() if isinstance(getattr(mod, "input_quant", None), QatAct)]
    tied = [iq for iq in readers if id(iq.log_scale) in shared]
    assert len(tied) == 11  # the stem's stream, 8 blocks' outputs, the 2 projections' inputs
    start = {k: float(a.log_scale.detach()) for k, a in streams.items()}
    torch.manual_seed(0)
    xs, ys = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    res = train_qat(m, plan, (xs, ys), cfg, tmp_path / "run", calib=x)
    got = residual_quantizers(res.model)
    assert set(got) == set(streams)
    moved = [k for k, a in got.items() if abs(float(torch.log(a.scale)) - start[k]) > 1e-6]
    assert len(moved) > len(got) // 2, "the stream steps were not trained"
    back, plan2 = load_result(tmp_path / "run", m)
    assert plan2.residual_bits == 4
    with torch.no_grad():
        assert torch.equal(back(x), res.model(x))
    rep = verify(back, x[:2])
    assert rep["exact"] and rep["mismatching_outputs"] == 0
    im = to_integer(back, x[:1])
    codes = {n.name for n in im.nodes if n.name.startswith(ATTR + ".")}
    assert len(codes) == 21
    readers = [n for n in im.nodes if n.op == "conv" and n.inputs[0] in codes]
    assert len(readers) == 11  # trained tied: still no requantizer between a stream and its readers
    assert not [n.name for n in im.nodes if n.op == "requant" and set(n.inputs) & codes]
    with pytest.raises(QatError, match="bn='fold'"):
        prepare_qat(m, plan, x, dataclasses.replace(cfg, bn="train"))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mixq", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_cli_quantize_residual_bits_and_read_back(tmp_path: Path) -> None:
    out = tmp_path / "q"
    r = _cli("quantize", "resnet20", "--random", "--images", "8", "--residual-bits", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert load_plan(out / "plan.json").residual_bits == 8
    from mixq.artifact import load_artifact

    q = load_artifact(out).qmodel
    assert len(residual_quantizers(q)) == 21 and all(a.mode == "quant" for a in residual_quantizers(q).values())
    v = _cli("verify", "--from", str(out), "--images", "2", cwd=tmp_path)
    assert v.returncode == 0 and "EXACT (0 of 20 outputs differ" in v.stdout, v.stdout + v.stderr
    for bad in ("1", "17", "x"):
        b = _cli("quantize", "resnet20", "--random", "--images", "8", "--residual-bits", bad,
                 "--out", str(tmp_path / "bad"))
        assert b.returncode == 2 and "--residual-bits" in b.stderr and "Traceback" not in b.stderr, b.stderr
        assert not (tmp_path / "bad" / "quantized.pt").exists()


def test_estimator_prices_the_stream_the_plan_leaves(resnet: tuple[nn.Module, torch.Tensor]) -> None:
    """An add and its skip FIFO at the plan's residual_bits; an exact stream at the integer engine's width of the
    sum (hw.bits.exact_sum_bits: up to 40 bits), said in the layer's note."""
    from mixq.graph.capture import capture
    from mixq.hw.bits import ENGINE_SUM_BITS
    from mixq.hw.lower import EXACT_STREAM_NOTE, lower
    from mixq.hw.parts import get_part

    m, x = resnet
    specs = capture(m, (3, 32, 32))
    plan = api.default_plan("net", m, x)
    adds = {}
    for bits in (None, 6, 8):
        adds[bits] = [ly for ly in lower(specs, dataclasses.replace(plan, residual_bits=bits), get_part("xc7z020"))
                      if ly.spec.kind == "add"]
        assert len(adds[bits]) == 9
        assert all((ly.note == EXACT_STREAM_NOTE) == (bits is None) for ly in adds[bits])
    assert all(ly.abits == b for b in (6, 8) for ly in adds[b])
    assert all(ly.abits == ENGINE_SUM_BITS for ly in adds[None])  # W8A8: every sum at the engine's cap
    for a, b, c in zip(adds[None], adds[6], adds[8], strict=True):
        assert a.fifo_bits * 8 == c.fifo_bits * 40 and b.fifo_bits * 8 == c.fifo_bits * 6 > 0


def test_cli_rtl_build_takes_residual_bits(tmp_path: Path) -> None:
    """`mixq rtl build MODEL --residual-bits 8` writes the design with 8-bit streams (here without simulating);
    with `--from` the artifact's plan says, so the option is refused in one line."""
    out = tmp_path / "b"
    r = _cli("rtl", "build", "resnet20", "--size", "8", "--images", "0", "--residual-bits", "8", "--out", str(out),
             "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json

    build = json.loads((out / "build.json").read_text())
    widths = [b["bits"] for b in build["buffers"] if b["shape"][1] > 1]
    assert max(widths) == 8, widths
    art = tmp_path / "q"
    assert _cli("quantize", "cnv", "--random", "--images", "8", "--out", str(art), cwd=tmp_path).returncode == 0
    bad = _cli("rtl", "build", "--from", str(art), "--residual-bits", "8", cwd=tmp_path)
    assert bad.returncode == 1 and "drop --residual-bits" in bad.stderr, bad.stderr  # an OptionError: exit 1
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
