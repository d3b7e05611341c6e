"""The whole CNV accelerator (:mod:`mixq.rtl.network`): lowering, Verilator simulation, backpressure, CLI.

CNV with its shipped weights at W8A8 on real Fashion-MNIST test images. The simulated
build is a small folding (pe 8, simd 8: about 113k cycles per frame, 8 PE units per layer)
so Verilator compiles it in well under a minute; ``mixq rtl build`` runs in a real process
and the backpressure test reruns its compiled testbench with other seeds. The Icarus run
(the reference simulator, some minutes per image) is marked slow. The double-buffered layer
engine the network uses (vectors back to back) is co-simulated on its own in Icarus too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixq.rtl.netgraph import GatherStage, lower_graph
from mixq.rtl.netsim import available, compare, run_sim
from mixq.rtl.network import Stage, lower_network

IMAGES = 3  # the third frame waits in the pipeline while the output buffer holds the first two
HOLD = 700_000  # cycles of m_axis_tready low: past the latency (~300k) and two frame intervals (~113k each)
needs_verilator = pytest.mark.skipif(not available("verilator"), reason="verilator not installed")

_CACHE: dict[str, Any] = {}


def _cnv() -> tuple[Any, dict[str, Any]]:
    if "cnv" not in _CACHE:
        from mixq.cli.rtl import network_int_model

        im, values, _ = network_int_model("cnv", "fixed8", 1)
        _CACHE["cnv"] = (im, values)
    return _CACHE["cnv"]  # type: ignore[no-any-return]


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mixq", "rtl", "build", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def w8a8_int(m: Any, x: Any, **engine: Any) -> Any:
    """The integer model of ``m`` at W8A8 (fixed8 weights, ufixed8 activations) calibrated on ``x`` (``engine``:
    :func:`~mixq.engine.convert.to_integer`'s options, e.g. ``pool_bits``)."""
    from mixq import api
    from mixq.engine.convert import to_integer
    from mixq.formats import parse_format

    q = api.quantize(m, api.default_plan("net", m, x, weight=parse_format("fixed8"), act=parse_format("ufixed8")), x)
    return to_integer(q, x[:1], **engine)


def _stream_model(stages: list[Stage], codes: np.ndarray) -> np.ndarray:
    """What the pipeline computes, in numpy: windows in (ky, kx, c) order against the permuted weights,
    the engine's requantization rule, the collector's max-pool; returns the output stream's codes."""
    x = codes.reshape(stages[0].in_shape).transpose(1, 2, 0).astype(object)  # (H, W, C)
    for s in stages:
        d = s.layout.data
        (kh, kw), (sh, sw), (ph, pw) = s.kernel, s.stride, s.padding
        h, w, c = x.shape
        xp = np.zeros((h + 2 * ph, w + 2 * pw, c), dtype=object)
        xp[ph:ph + h, pw:pw + w] = x
        ho, wo = s.out_hw
        wt = d.weight.reshape(d.rows, -1).astype(object)
        y = np.zeros((ho, wo, d.rows), dtype=object)
        for i in range(ho):
            for j in range(wo):
                win = xp[i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(-1)  # (ky, kx, c)
                acc = wt @ win
                q = (acc * d.mult + d.const) >> d.shift
                y[i, j] = np.minimum(np.maximum(q, d.lo), d.hi)
        k = s.pool
        if k > 1:
            y = y[: ho // k * k, : wo // k * k].reshape(ho // k, k, wo // k, k, d.rows).max(axis=(1, 3))
        x = y
    return np.asarray(x.reshape(-1), dtype=np.int64)


def test_lowering_in_stream_order_equals_the_integer_engine() -> None:
    im, values = _cnv()
    stages = lower_network(im, values)
    assert [s.name for s in stages] == ["features.0", "features.3", "features.7", "features.10", "classifier.0",
                                       "classifier.3"]
    assert [s.pool for s in stages] == [1, 2, 1, 2, 1, 1]
    assert stages[4].in_shape == (64, 7, 7) and stages[4].kernel == (7, 7)  # the flatten: one window, the map
    assert stages[-1].head and stages[-1].out_shape == (10, 1, 1)
    first = next(n for n in im.nodes if n.inputs == ("input",))
    got = _stream_model(stages, values[first.name][0].numpy())
    assert np.array_equal(got, values[im.output][0].numpy().astype(np.int64))  # the logits' accumulators


PLAN = Path(__file__).parent.parent / "runs" / "demo" / "plan_msq.json"


def _int_model(config: str, plan: Path | None = None) -> tuple[Any, dict[str, Any]]:
    key = f"{config}:{plan}"
    if key not in _CACHE:
        from mixq.cli.rtl import network_int_model

        im, values, _ = network_int_model("cnv", config, 1, plan_file=plan)
        _CACHE[key] = (im, values)
    return _CACHE[key]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("config", "core", "kinds"), [
    ("msq4", "auto", {"sp2", "fixed_dsp2"}),  # SP2 rows on LUT shift-add lanes beside packed-DSP fixed rows
    ("w2a1", "lut", {"fixed_lut"}),  # 2-bit weights, 1-bit activations (8-bit input) on LUT lanes
    ("w1a1", "auto", {"ternary", "xnor"}),  # binary weights: ternary selects on the 8-bit input, then XNOR lanes
])
def test_low_bit_and_msq_lowering_equals_the_integer_engine(config: str, core: str, kinds: set[str]) -> None:
    im, values = _int_model(config)
    stages = lower_network(im, values, core=core)
    assert kinds <= {c.kind for s in stages for c in s.layout.cores}
    if config == "msq4":  # both row kinds in one layer
        assert any({c.kind for c in s.layout.cores} >= kinds for s in stages)
    else:
        assert [s.in_bits for s in stages] == [8, 1, 1, 1, 1, 1]
    first = next(n for n in im.nodes if n.inputs == ("input",))
    got = _stream_model(stages, values[first.name][0].numpy())
    assert np.array_equal(got, values[im.output][0].numpy().astype(np.int64))


def _plan_file(tmp: Path, folded: bool) -> Path:
    """An MSQ plan file for CNV (half the rows SP2 at 4 bits); ``folded``: mixed widths per layer and the
    PE x SIMD of each layer set, as ``mixq search`` writes them."""
    from mixq.formats import FixedPoint, SumOfPowers
    from mixq.plan import HwMapping, uniform_plan
    from mixq.plan.jsonio import save_plan

    names = ["features.0", "features.3", "features.7", "features.10", "classifier.0", "classifier.3"]
    plan = uniform_plan("cnv", names, FixedPoint(4, narrow=True), FixedPoint(4, signed=False),
                        signed_inputs=names[:1], weight_alt=SumOfPowers(4), alt_ratio=0.5)
    if folded:
        widths = {"features.3": (6, 4), "features.7": (4, 6), "features.10": (4, 4)}
        for n, (pe, simd) in zip(names, [(8, 9), (8, 16), (8, 16), (8, 32), (4, 32), (2, 8)], strict=True):
            lp = plan[n].with_(mapping=HwMapping(pe=pe, simd=simd))
            if n in widths:
                w, a = widths[n]
                lp = lp.with_(weight=FixedPoint(w, narrow=True), act=FixedPoint(a, signed=False))
            plan = plan.with_layer(n, lp)
    return save_plan(plan, tmp / ("searched.json" if folded else "msq.json"))


@pytest.mark.parametrize("folded", [False, True], ids=["msq", "searched"])
def test_plan_file_lowering_equals_the_integer_engine(folded: bool, tmp_path: Path) -> None:
    from mixq.cli.rtl import plan_folding
    from mixq.plan.jsonio import load_plan

    path = _plan_file(tmp_path, folded)

    im, values = _int_model("fixed8", path)
    folding = plan_folding(path)
    stages = lower_network(im, values, folding)
    plan = load_plan(path)
    for s in stages:  # the plan's formats: SP2 rows where it has weight_alt; its folding where it sets one
        lp = plan.layers[s.name]
        assert ("sp2" in {c.kind for c in s.layout.cores}) == (lp.weight_alt is not None), s.name
        assert s.in_bits == lp.act.bits  # type: ignore[union-attr]
        if folding is not None:
            assert (s.layout.estimate.pe, s.layout.simd) == (lp.mapping.pe, lp.mapping.simd), s.name
    assert (folding is None) == (not folded)  # the searched plan carries the folding mixq search chose
    first = next(n for n in im.nodes if n.inputs == ("input",))
    got = _stream_model(stages, values[first.name][0].numpy())
    assert np.array_equal(got, values[im.output][0].numpy().astype(np.int64))


def test_build_from_an_artifact_takes_its_plans_folding(tmp_path: Path) -> None:
    """`rtl build --from` an artifact quantized under a searched plan builds that plan's folding (PE x SIMD per
    layer); it built the --pe / --simd caps' instead (ccexam's MNIST CNN, searched at 39,683 FPS: a design of
    7,084 cycles a frame, 14,117 FPS at 100 MHz; with the plan's folding 2,547 cycles, as estimated)."""
    import json

    from mixq.cli import main
    from mixq.plan.jsonio import load_plan

    path = _plan_file(tmp_path, folded=True)
    q, out = tmp_path / "q", tmp_path / "r"
    assert main(["quantize", "cnv", "--plan", str(path), "--images", "32", "--out", str(q)]) == 0
    assert main(["rtl", "build", "--from", str(q), "--images", "0", "--out", str(out)]) == 0
    built = {d["layer"]: (d["pe"], d["simd"]) for d in json.loads((out / "build.json").read_text())["layers"]}
    want = {n: (lp.mapping.pe, lp.mapping.simd) for n, lp in load_plan(path).layers.items()}
    assert built == want and built != {n: (min(v[0], 16), 32) for n, v in want.items()}


def test_a_layer_engine_from_an_artifact_takes_its_plans_folding(tmp_path: Path) -> None:
    """`rtl generate / simulate / synth --from` a layer: the options' PE x SIMD where given, else the artifact's
    plan's for that layer (a searched plan), else 4 x 8; the generated engine is built at it."""
    import shutil

    from mixq.cli import main
    from mixq.cli.rtl import layer_folding
    from mixq.plan.jsonio import load_plan

    path = _plan_file(tmp_path, folded=True)
    art = tmp_path / "art"
    art.mkdir()
    shutil.copy(path, art / "plan.json")
    m = load_plan(path).layers["features.3"].mapping
    assert layer_folding(art, "features.3", None, None) == (m.pe, m.simd) != (4, 8)
    assert layer_folding(art, "features.3", 2, None) == (2, m.simd)
    assert layer_folding(None, "features.3", None, None) == (4, 8)
    (art / "plan.json").unlink()
    assert layer_folding(art, "features.3", None, 16) == (4, 16)
    q = tmp_path / "q"
    assert main(["quantize", "cnv", "--plan", str(path), "--images", "32", "--out", str(q)]) == 0
    assert main(["rtl", "generate", "--from", str(q), "--layer", "features.3", "--out", str(tmp_path / "g")]) == 0
    head = (tmp_path / "g" / "layer_features_3.v").read_text().splitlines()[1]  # rows 32: tiles = 32 / pe
    assert f"rows 32, row length 288, simd {m.simd}, " in head and f"tiles {32 // m.pe}," in head, head


def test_unsupported_network_is_named() -> None:
    import dataclasses

    from mixq.engine.model import IntModel
    from mixq.errors import ModelError

    im, values = _cnv()

    def with_node(name: str, op: str | None = None, **attrs: Any) -> IntModel:
        nodes = tuple(dataclasses.replace(n, op=op or n.op, attrs={**n.attrs, **attrs}) if n.name == name else n
                      for n in im.nodes)
        return IntModel(nodes, im.input_shape, im.output, dict(im.meta))

    # a max-pool the collector cannot run (3 x 3, stride 2) runs as a gather stage on the layer's accumulators
    g = lower_graph(with_node("features.6", kernel=[3, 3]), values)
    pools = [s for s in g.nodes if isinstance(s, GatherStage)]
    assert [(s.name, s.op, s.taps) for s in pools] == [("features.6", "max", 9)]
    assert next(s for s in g.nodes if isinstance(s, Stage) and s.name == "features.3").head
    with pytest.raises(ModelError, match=r"'features\.6' \(fbs\) is not supported by the network builder"):
        lower_graph(with_node("features.6", op="fbs"), values)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    if not available("verilator"):
        pytest.skip("verilator not installed")
    out = tmp_path_factory.mktemp("cnv_build")
    proc = _cli("cnv", "--config", "fixed8", "--pe", "8", "--simd", "8", "--images", str(IMAGES), "--seed", "3",
                "--out", str(out))
    return out, proc


@needs_verilator
def test_cli_build_simulates_cnv_bit_exact(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = built
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "build.json").read_text())
    sim = res["simulation"]
    assert res["images"] == IMAGES and res["mismatches"] == 0 and res["ok"]
    assert sim["elements"] == IMAGES * 10 and sim["received"] == IMAGES * 10
    assert sim["missing"] == sim["extra"] == sim["bad_tlast"] == 0
    assert sim["valid_prob"] < 1 and sim["ready_prob"] < 1  # randomized handshakes on both streams
    est, model, measured = (res["estimator_cycles_per_frame"], res["design_cycles_per_frame"],
                            res["cycles_per_frame"])
    assert est <= model and abs(measured - model) < 0.01 * model, (est, model, measured)
    assert measured < 1.01 * est, (est, measured)  # issue 20: within 10% of the estimator (here 0.1%)
    # every layer's own cycles per frame (the testbench's frame probes, less the cycles its row gate held it
    # on a ring buffer) no more than the design's model says (a row gate may hold a window while its engine
    # still computes, so a coupled layer's own cycles can read low; the frame interval above is exact)
    got = sim["layer_cycles_per_frame"]
    assert max(got) > 0.85 * model, (got, model)
    for ly, g in zip(res["layers"], got, strict=True):
        assert 0 < g <= 1.001 * ly["design_cycles"], (ly, g)
    for f in res["files"] + ["files.f", "README.md", "tb.v", "tb_icarus.v", "tb_main.cpp", "tb_in.mem",
                             "tb_expected.txt"]:
        assert (out / f).is_file(), f
    assert (out / "files.f").read_text().split() == res["files"]
    assert "cnv_top" in (out / "cnv_top.v").read_text()


@needs_verilator
def test_randomized_backpressure_loses_no_data(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = built
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = np.array([int(v) for v in (out / "tb_expected.txt").read_text().split()], dtype=np.int64)
    ref = expected.reshape(IMAGES, -1)
    runs = []
    for seed, hold in ((11, 0), (12, HOLD)):  # the second holds m_axis_tready low until every frame waits
        log, _ = run_sim(out, "verilator", seed=seed, valid=96, ready=24, hold=hold, max_cycles=20_000_000)
        c = compare(log, ref)
        assert c["mismatches"] == c["missing"] == c["extra"] == c["bad_tlast"] == 0 and not c["timeout"], c["first"]
        runs.append(c)
    assert np.array_equal(runs[0]["values"], runs[1]["values"])
    assert runs[0]["frame_ends"] != runs[1]["frame_ends"]  # the handshakes did differ
    assert min(runs[1]["frame_ends"]) >= HOLD  # nothing left while tready was held low, nothing lost
    assert max(runs[1]["frame_ends"]) < HOLD + 20_000  # every frame was computed and waited in the pipeline


@needs_verilator
@pytest.mark.parametrize("args", [
    pytest.param(("--config", "msq4"), id="msq4"),  # about 60 s: generate, compile, 2 images
    pytest.param(("--config", "w2a1", "--core", "lut"), id="w2a1", marks=pytest.mark.slow),
    # XNOR-popcount lanes (the layer-level XNOR engines run by default: tests/test_cosim_layers.py)
    pytest.param(("--config", "w1a1"), id="w1a1", marks=pytest.mark.slow),
    pytest.param(("--plan", str(PLAN)), id="plan", marks=[
        pytest.mark.slow, pytest.mark.skipif(not PLAN.is_file(), reason="runs/demo/plan_msq.json not present")]),
])
def test_cli_build_simulates_mixed_and_low_bit_cnv_bit_exact(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = _cli("cnv", *args, "--pe", "8", "--simd", "8", "--images", "2", "--seed", "4", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "build.json").read_text())
    sim = res["simulation"]
    assert res["mismatches"] == 0 and res["ok"] and sim["elements"] == 20 and sim["received"] == 20
    assert sim["missing"] == sim["extra"] == sim["bad_tlast"] == 0
    assert res["cycles_per_frame"] < 1.01 * res["estimator_cycles_per_frame"]
    assert (res["plan"] is not None) == ("--plan" in args)


def test_cli_plan_and_config_are_exclusive() -> None:
    proc = _cli("cnv", "--plan", str(PLAN), "--config", "msq4", "--images", "0", timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # like --from's
    assert "--plan" in proc.stderr


@pytest.mark.skipif(not available("icarus"), reason="iverilog not installed")
@pytest.mark.parametrize(("config", "layer", "pe", "simd", "npix"), [
    ("msq4", "features.0", 2, 3, 6),  # a packed-DSP core (latency 5) beside an SP2 core (latency 4)
    ("fixed8", "features.7", 8, 16, 3),
])
def test_double_buffered_engine_runs_vectors_back_to_back(tmp_path: Path, config: str, layer: str, pe: int,
                                                         simd: int, npix: int) -> None:
    from mixq.cli.rtl import network_int_model
    from mixq.rtl.cosim import cosimulate, default_pixels
    from mixq.rtl.layerdata import layer_data
    from mixq.rtl.layout import plan_layout

    im, values, _ = network_int_model("cnv", config, 1)
    lay = plan_layout(layer_data(im, values, layer), pe, simd)
    pix = default_pixels(lay, npix)
    one = cosimulate(lay, tmp_path / "one", pix)
    two = cosimulate(lay, tmp_path / "two", pix, banks=2)
    assert one.ok and two.ok, (one.to_dict(), two.to_dict())  # bit-exact, and no vector's outputs interleave
    run = lay.tiles * lay.fold
    assert two.cycles < one.cycles and two.cycles <= (len(pix) + 1) * run + 32, (one.cycles, two.cycles, run)


def test_cli_bad_options_are_one_line() -> None:
    for args in (["cnv", "--simulator", "modelsim"], ["cnv", "--valid", "0"], ["cnv", "--images", "-1"]):
        proc = _cli(*args, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and args[1] in err[0], err
    proc = _cli("nosuchnet", "--images", "0", timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "nosuchnet" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not available("icarus"), reason="iverilog not installed")
def test_icarus_reference_simulation(tmp_path: Path) -> None:
    from mixq.rtl.netsim import simulate, write_build
    from mixq.rtl.network import default_folding, generate_network, output_order

    im, values = _cnv()
    net = generate_network(im, values, "cnv", default_folding(im, 8, 8))
    first = next(n for n in im.nodes if n.inputs == ("input",))
    ref = output_order(net, values[im.output].numpy())[:1]
    write_build(net, tmp_path, values[first.name].numpy()[:1], ref, "cnv")
    r = simulate(net, tmp_path, ref, "icarus", seed=5, valid=200, ready=100)
    assert r.ok, r.to_dict()


def _pointwise(op: Any, xs: list[np.ndarray]) -> np.ndarray:
    """A pointwise rule on (C, H, W) integers, per channel, as the generated unit computes it."""
    c = xs[0].shape[0]
    ch = np.arange(c)
    col = (lambda t: np.array(t, dtype=object)[ch][:, None, None])  # noqa: E731
    if op.op == "add":
        n = col(op.n)
        return (sum(x.astype(object) * col(m) for x, m in zip(xs, op.m, strict=True)) + ((1 << n) >> 1)) >> n
    x = xs[0].astype(object)
    if op.op == "requant":
        n = col(op.n)
        x = (x * col(op.m[0]) + ((1 << n) >> 1)) >> n
    lo, hi = op.lo, op.hi
    if lo is not None:
        x = np.maximum(x, col(lo))
    if hi is not None:
        x = np.minimum(x, col(hi))
    return x


def test_residual_network_lowers_to_layer_and_pointwise_stages() -> None:
    """MobileNetV2's first four modules (real weights, a real photo at 32x32): depthwise layer stages, the
    projection layers that feed the add write their accumulators, the block input's goes to two buffers (the
    next layer's requantizer and the skip), and the pointwise rules give the engine's integers exactly."""
    from mixq.cli.rtl import network_int_model
    from mixq.errors import ModelError
    from mixq.rtl.netgraph import PointStage, lower_graph

    im, values, _ = network_int_model("mobilenet_v2", "fixed8", 1, size=32, blocks=4)
    g = lower_graph(im, values)
    stages = g.stages
    assert sum(s.layout.data.groups > 1 for s in stages) == 3  # the depthwise 3x3 layers
    heads = {s.name for s in stages if s.head}
    assert heads == {"2.conv.2", "3.conv.2"}  # the add's operands: accumulators
    points = [s for s in g.nodes if isinstance(s, PointStage)]
    assert [(p.value, [o.op for o in p.ops]) for p in points] == [("3.conv.0.0.input_quant", ["requant"]),
                                                                 ("add", ["add"])]
    assert [b.consumer for b in g.buffers if b.value == "2.conv.2"] == [g.nodes.index(points[0]),
                                                                        g.nodes.index(points[1])]
    assert g.buffers[-1].value == "add" and g.buffers[-1].consumer == -1
    for p in points:
        xs = [values[v][0].numpy().astype(np.int64) for v in p.sources]
        for op in p.ops:
            xs = [_pointwise(op, xs)]
        assert np.array_equal(np.asarray(xs[0], dtype=np.int64), values[p.value][0].numpy().astype(np.int64))
    with pytest.raises(ModelError, match="not one chain"):
        lower_network(im, values)


@needs_verilator
def test_cli_build_simulates_a_residual_network_bit_exact(tmp_path: Path) -> None:
    """The residual slice of MobileNetV2 as one accelerator: depthwise windows, a skip buffer, the add unit."""
    proc = _cli("mobilenet_v2", "--blocks", "4", "--size", "32", "--pe", "8", "--simd", "8", "--images", "2",
                "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "build.json").read_text())
    sim = res["simulation"]
    assert res["mismatches"] == 0 and res["ok"] and sim["elements"] == 2 * 24 * 8 * 8 == sim["received"]
    assert sim["missing"] == sim["extra"] == sim["bad_tlast"] == 0
    assert res["blocks"] == 4 and res["size"] == 32
    # two frames: the second overlaps the first on the ring buffers, so the interval reads a little under the model
    assert abs(res["cycles_per_frame"] - res["design_cycles_per_frame"]) < 0.05 * res["design_cycles_per_frame"]
    # depthwise windows are written one word per dot unit a cycle: the estimator's cycles, within 10%
    assert res["cycles_per_frame"] < 1.1 * res["estimator_cycles_per_frame"], res["layers"]


def test_cli_build_takes_the_estimators_folding(tmp_path: Path) -> None:
    """`--folding` takes what `mixq estimate --out` chose (its estimate.json) or {layer: [pe, simd]}; a bad file
    is one line naming it and the entry, exit 1."""
    est = subprocess.run([sys.executable, "-m", "mixq", "estimate", "cnv", "--out", str(tmp_path / "est")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert est.returncode == 0, est.stderr[-1500:]
    layers = json.loads((tmp_path / "est" / "estimate.json").read_text())["layers"]
    want = {ly["name"]: [ly["pe"], ly["simd"]] for ly in layers if ly.get("macs")}
    proc = _cli("cnv", "--folding", str(tmp_path / "est" / "estimate.json"), "--images", "0", "--out",
                str(tmp_path / "b"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    built = json.loads((tmp_path / "b" / "build.json").read_text())
    got = {ly["layer"]: [ly["pe"], ly["simd"]] for ly in built["layers"]}
    assert got == want
    for text, needle in (("{\"features.0\": [0, 3]}", "features.0"), ("[1, 2]", "expected"), ("{", "JSON"),
                         ("{\"features.99\": [1, 1]}", "features.99")):
        (tmp_path / "f.json").write_text(text)
        proc = _cli("cnv", "--folding", str(tmp_path / "f.json"), "--images", "0", "--out", str(tmp_path / "c"),
                    timeout=300)
        last = proc.stderr.strip().splitlines()[-1]  # after the progress lines of the work done before
        assert proc.returncode == 1 and last.startswith("mixq: error:") and needle in last, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("up", ["pixelshuffle", "convtranspose"])
def test_unet_gather_stages_equal_the_engine(up: str) -> None:
    """A U-Net's data movement and stand-alone max-pools as gather stages (pixel shuffle, zero insertion,
    max-pool on codes), checked output element by output element against the engine's integers; the requant
    after a pixel shuffle's concat sees constants that vary in space: one class of pixels per phase."""
    import torch

    from mixq import api
    from mixq.engine.convert import to_integer
    from mixq.engine.runner import IntEngine
    from mixq.formats import parse_format
    from mixq.rtl.netgraph import GatherStage, PointStage, lower_graph
    from mixq.zoo.unet import unet

    torch.manual_seed(0)
    m = unet(width=8, depth=2, up=up).eval()
    x = torch.rand(4, 3, 16, 16)
    q = api.quantize(m, api.default_plan("unet", m, x, weight=parse_format("fixed8"), act=parse_format("ufixed8")), x)
    im = to_integer(q, x[:1])
    values = IntEngine(im)(x[:1], keep=True).values
    g = lower_graph(im, values)
    gathers = [s for s in g.nodes if isinstance(s, GatherStage)]
    assert {s.op for s in gathers} == {"max", "move"} and len(gathers) == 4
    for s in gathers:
        src = values[s.source][0].numpy().astype(np.int64).reshape(s.in_shape[0], -1)
        got = np.zeros((s.shape[0], s.shape[1] * s.shape[2]), dtype=np.int64)
        for p, taps in enumerate(s.addr):
            if s.op == "max":
                got[:, p] = src[:, [a for a in taps if a >= 0]].max(axis=1)
            elif taps[0] >= 0:
                cmap = np.array(s.maps[s.phase[p]])
                got[:, p] = np.where(cmap >= 0, src[np.maximum(cmap, 0), taps[0]], 0)
        assert np.array_equal(got, values[s.value][0].numpy().astype(np.int64).reshape(s.shape[0], -1)), s.name
    cats = [s for s in g.nodes if isinstance(s, PointStage) and s.ops[0].op == "cat"]
    assert len(cats) == 2
    varied = [s for s in g.nodes if isinstance(s, PointStage) and len(s.variants) > 1]
    assert (len(varied) > 0) == (up == "pixelshuffle")  # the grid after a pixel shuffle varies by phase


@needs_verilator
def test_cli_build_simulates_a_unet_bit_exact(tmp_path: Path) -> None:
    """The zoo's U-Net (max-pool, concat skips, pixel-shuffle upsampling, a residual output) as one accelerator
    on real photos, every output element equal to the integer engine's (the transposed-conv variant:
    benchmarks/rtl_network.py)."""
    proc = _cli("unet", "--size", "16", "--pe", "8", "--simd", "8", "--images", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "build.json").read_text())
    sim = res["simulation"]
    assert res["mismatches"] == 0 and res["ok"] and sim["elements"] == 2 * 3 * 16 * 16 == sim["received"]
    rings, frames = sum("rows" in b for b in res["buffers"]), sum("banks" in b for b in res["buffers"])
    most = max(b.get("banks", 2) for b in res["buffers"])
    assert most > 2 and f"buffers: {res['buffer_memory_bits'] / 1e6:.2f} Mbit ({rings} rings of rows, {frames} " \
        f"frame buffers, {most} banks at most)" in proc.stdout, proc.stdout


@needs_verilator
def test_pointwise_and_window_sum_ops_simulate_bit_exact(tmp_path: Path) -> None:
    """The front end's other ops as stages of one accelerator, every output element equal to the integer
    engine's: an unfolded BatchNorm (affine), a max-pool whose first taps fall on the padding, an average pool and
    a bilinear upsampling (window sums with weights), Hardswish and Sigmoid (lookup tables), a squeeze-excitation
    gate (a global mean, a Linear layer, a view to C x 1 x 1 and a product with that one-pixel map broadcast over the
    pixels), a product by a constant and a mean over the
    channels (reduce)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mixq.engine.runner import IntEngine
    from mixq.rtl.build import build_and_check
    from mixq.rtl.netgraph import GatherStage, PointStage, lower_graph

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.c3, self.bn = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(8)
            self.pool, self.act = nn.AvgPool2d(2), nn.Hardswish()
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.pool(F.max_pool2d(self.bn(F.relu(self.c1(x))), 3, 1, 1))
            h = self.act(self.c2(a))
            gate = torch.sigmoid(self.fc(h.mean((2, 3)))).view(-1, 8, 1, 1)  # squeeze-excitation
            y = self.c3(self.up(h * gate)) * 0.5  # the one-pixel gate broadcast over the pixels
            return y.mean(dim=1, keepdim=True)

    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 1.5), m.bn.bias.uniform_(-0.2, 0.2)
        m.bn.running_mean.uniform_(0, 0.3), m.bn.running_var.uniform_(0.5, 2)
    x = torch.rand(4, 3, 16, 16)
    im = w8a8_int(m, x)
    values = IntEngine(im)(x[:2], keep=True).values
    g = lower_graph(im, values)
    point = {o.op for s in g.nodes if isinstance(s, PointStage) for o in s.ops}
    assert {"affine", "lut", "mul", "reduce", "requant"} <= point, point
    assert sorted(s.op for s in g.nodes if isinstance(s, GatherStage)) == ["max", "sum", "sum", "sum"]
    assert any(-1 in s.addr[0][:1] for s in g.nodes if isinstance(s, GatherStage) and s.op == "max")
    res = build_and_check(im, values, "opsnet", tmp_path, 2, pe=4, simd=8)
    assert res.ok and res.summary["mismatches"] == 0, res.summary.get("simulation")
    assert res.summary["simulation"]["elements"] == 2 * 16 * 16 == res.summary["simulation"]["received"]


def test_transpose_gathers_where_each_pixel_reads_one_pixel() -> None:
    """H and W swapped is a gather stage equal to the engine's integers; a transpose that moves the channel axis
    reads several input pixels per output pixel, which the gather unit refuses by name."""
    import torch
    from torch import nn

    from mixq import api
    from mixq.engine.convert import to_integer
    from mixq.engine.runner import IntEngine
    from mixq.errors import ModelError
    from mixq.formats import parse_format
    from mixq.rtl.netgraph import GatherStage, lower_graph

    class Net(nn.Module):
        def __init__(self, dims: tuple[int, ...]) -> None:
            super().__init__()
            self.dims = dims
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c2(torch.relu(self.c1(x)).permute(*self.dims))  # type: ignore[no-any-return]

    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 6)
    m = Net((0, 1, 3, 2)).eval()
    q = api.quantize(m, api.default_plan("t", m, x, weight=parse_format("fixed8"), act=parse_format("ufixed8")), x)
    im = to_integer(q, x[:1])
    values = IntEngine(im)(x[:1], keep=True).values
    (g,) = [s for s in lower_graph(im, values).nodes if isinstance(s, GatherStage)]
    assert g.op == "move" and g.in_shape == (8, 8, 6) and g.shape == (8, 6, 8)
    src = values[g.source][0].numpy().astype(np.int64).reshape(8, -1)
    got = np.stack([src[np.array(g.maps[g.phase[p]]), t[0]] for p, t in enumerate(g.addr)], axis=1)
    assert np.array_equal(got, values[g.value][0].numpy().astype(np.int64).reshape(8, -1))
    m = Net((0, 2, 1, 3)).eval()
    x = torch.rand(4, 3, 8, 8)
    q = api.quantize(m, api.default_plan("t", m, x, weight=parse_format("fixed8"), act=parse_format("ufixed8")), x)
    im = to_integer(q, x[:1])
    with pytest.raises(ModelError, match=r"network: 'permute' \(transpose\) takes one output pixel from several "
                                         "input pixels"):
        lower_graph(im, IntEngine(im)(x[:1], keep=True).values)


@needs_verilator
@pytest.mark.parametrize("buffers", ["ring", "frame"])
def test_windows_that_keep_columns_or_read_rows_in_parallel_simulate_bit_exact(tmp_path: Path, buffers: str) -> None:
    """A gathered window whose reads are slower than its engine keeps the columns the next window shares
    (``mixq_window`` ``RS``) and, where the reads still bind, reads its rows in parallel (``RP`` = kh, its buffer
    with kh read ports): stride 1 on 3 channels (RS 1: 3 reads for 3 cycles of latency, nothing to gain from RP),
    stride 2 (RS 2 would read 6, RP reads 3 columns: RP 3, RS 0), stride 2 at dilation 2 (RS 1), a dilated stride-1
    window that cannot keep columns (RP 3: 9 reads -> 3), a 1 x 3 window (neither), and a 5 x 5 stride-2 window on a
    ring buffer where both pay (RS 2, RP 5: 10 reads -> 2). Every output equals the integer engine's, each layer's
    measured cycles per frame are its design model's (a row's first window reads all its taps or columns, the
    others only the new ones), and the streaming estimator counts the same reads (its figure is the design's less
    the frame's fill and drain). The read ports work on rings of rows and on whole-frame buffers alike."""
    import torch
    from torch import nn

    from mixq.engine.runner import IntEngine
    from mixq.rtl.build import build_and_check
    from mixq.rtl.netgraph import Stage as GStage
    from mixq.rtl.netgraph import default_folding, lower_graph

    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),  # RS 1
                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),  # RP 3
                      nn.Conv2d(8, 8, 3, dilation=2, padding=2), nn.ReLU(),  # RP 3: stride 1, taps 2 apart
                      nn.Conv2d(8, 8, (1, 3), padding=(0, 1)), nn.ReLU(),  # neither: 1 read is no faster than 3
                      nn.Conv2d(8, 4, 3, stride=2, dilation=2, padding=2), nn.ReLU(),  # RS 1: stride 2, taps 2 apart
                      nn.Conv2d(4, 2, 5, stride=2, padding=2))  # RS 2 and RP 5
    torch.manual_seed(0)
    m.eval()
    x = torch.rand(4, 3, 16, 16)
    im = w8a8_int(m, x)
    values = IntEngine(im)(x[:2], keep=True).values
    stages = [s for s in lower_graph(im, values, default_folding(im, 8, 32)).nodes if isinstance(s, GStage)]
    got_plan = [(s.reuse, s.rows) for s in stages]
    assert got_plan == [(1, 1), (0, 3), (0, 3), (0, 1), (1, 1), (2, 5)], [(s.name, s.run_cycles) for s in stages]
    res = build_and_check(im, values, "keepnet", tmp_path, 2, pe=8, simd=32, buffers=buffers)
    sim = res.summary["simulation"]
    assert res.ok and res.summary["mismatches"] == 0, sim
    assert sim["elements"] == 2 * 2 * 2 * 2 == sim["received"]
    text = "".join((tmp_path / f).read_text() for f in res.summary["files"])
    assert ".RS(1)" in text and ".RS(2), .RP(5)" in text and ".RS(0), .RP(3)" in text
    buf = "mixq_rowbuf" if buffers == "ring" else "mixq_fbuf"
    assert text.count(", .RP(3)) fb") == 2 and text.count(", .RP(5)) fb") == 1 and f"{buf} #(.PW(64)" in text
    for ly, got, st in zip(res.summary["layers"], sim["layer_cycles_per_frame"], stages, strict=True):
        assert 0.9 * ly["design_cycles"] <= got <= ly["design_cycles"] + 2, (ly, got)
        assert ly["estimator_cycles"] == ly["design_cycles"] - st.frame_overhead, ly


@needs_verilator
def test_moves_and_rounded_products_of_outside_models_simulate_bit_exact(tmp_path: Path) -> None:
    """Ops pytorchcv's models use, as stages of one accelerator (before: refused by name), every output equal to the
    integer engine's: ShuffleNet's channel shuffle (view -> transpose -> view: one gather stage through a 5-d map),
    a channel split (chunk) and concat, Shake-Shake's spatial slice ``x[:, :, 1:, 1:]``, CondenseNet's
    ``index_select`` of channels, DIA-ResNet's ``zeros_like`` (added to a map), a product of two accumulator-domain
    maps whose operands the engine rounds first (x * x), and an average pool that rounds its input first
    (``pool_bits`` 16)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mixq.engine.runner import IntEngine
    from mixq.rtl.build import build_and_check
    from mixq.rtl.netgraph import GatherStage, PointStage, lower_graph

    class Net(nn.Module):
        pick: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = nn.Conv2d(6, 4, 1)
            self.register_buffer("pick", torch.tensor([5, 0, 3, 3, 1, 7]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.c1(x))
            b, c, hh, ww = h.shape
            h = h.view(b, 2, c // 2, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)  # channel shuffle
            a, z = h.chunk(2, dim=1)
            h = torch.cat([a, z + torch.zeros_like(z)], dim=1)
            y = self.c2(h)
            y = (y * y)[:, :, 1:, 1:]  # a product of accumulators, then a spatial slice
            y = F.avg_pool2d(y, 3)
            return self.c3(torch.index_select(y, 1, self.pick))

    torch.manual_seed(0)
    m = Net().eval()
    x = torch.rand(4, 3, 16, 16)
    im = w8a8_int(m, x, pool_bits=16)
    ops = {n.op for n in im.nodes}
    assert {"reshape", "transpose", "slice", "gather", "zeros", "mul", "sumpool"} <= ops, ops
    assert any(n.attrs.get("shifts") for n in im.nodes if n.op == "mul")
    assert any(n.attrs.get("shift") for n in im.nodes if n.op == "sumpool")
    values = IntEngine(im)(x[:2], keep=True).values
    g = lower_graph(im, values)
    assert any(s.op == "move" and s.shape[0] == 8 for s in g.nodes if isinstance(s, GatherStage))  # the shuffle
    assert any(s.shift > 0 for s in g.nodes if isinstance(s, GatherStage))
    assert any(o.op == "mul" and any(o.n) for s in g.nodes if isinstance(s, PointStage) for o in s.ops)
    res = build_and_check(im, values, "movenet", tmp_path, 2, pe=4, simd=8)
    sim = res.summary["simulation"]
    assert res.ok and res.summary["mismatches"] == 0, sim
    assert sim["elements"] == 2 * 4 * 5 * 5 == sim["received"]


@needs_verilator
def test_a_chain_of_equally_fast_layers_runs_at_one_layers_rate(tmp_path: Path) -> None:
    """Four 3 x 3 layers of the same speed on rings: the frame interval is the slowest layer's (the design's model),
    not more. With rings of ``kh + stride`` rows a writer and its reader waited for each other and this chain ran
    at 1,650 cycles a frame against 1,357 per layer (+19%); one row of slack decouples them (``ring_rows``). The
    output is four codes a frame, so the output stream's random ``tready`` does not set the pace."""
    import torch
    from torch import nn

    from mixq.engine.runner import IntEngine
    from mixq.rtl.build import build_and_check

    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
    m = nn.Sequential(*layers, nn.AvgPool2d(16), nn.Conv2d(16, 4, 1)).eval()
    x = torch.rand(6, 3, 16, 16)
    im = w8a8_int(m, x)
    res = build_and_check(im, IntEngine(im)(x[:5], keep=True).values, "chain", tmp_path, 5, pe=16, simd=32)
    s = res.summary
    assert res.ok and s["mismatches"] == 0, s["simulation"]
    slowest = max(ly["design_cycles"] for ly in s["layers"])
    assert s["design_cycles_per_frame"] == slowest
    assert 0.95 * slowest <= s["cycles_per_frame"] <= slowest, (s["cycles_per_frame"], slowest)
