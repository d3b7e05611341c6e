"""Whole-layer engines co-simulated in Icarus Verilog against the integer engine, bit for bit.

Real layers: CNV (3x3 convolutions, one followed by a max-pool, a linear layer) and the
first blocks of MobileNetV2 with its real weights (a 1x1 expansion and a 3x3 depthwise
convolution), each at 4-bit MSQ (SP2 rows on shift-add LUT lanes beside fixed-point rows
on DSPs) and at 8-bit fixed point. The MSQ MobileNetV2 layers are simulated whole; elsewhere
a few output pixels (corners, where the padding is, and spread over the map) keep the
simulation to about a second (``benchmarks/rtl_layers.py`` simulates every layer whole).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixq.cli.rtl import CONFIGS, build_int_model
from mixq.errors import MixqError
from mixq.formats import parse_format
from mixq.rtl.cosim import cosimulate, default_pixels
from mixq.rtl.layer import generate_layer
from mixq.rtl.layerdata import layer_data
from mixq.rtl.layout import plan_layout
from mixq.rtl.memfile import pack

needs_iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")

_CACHE: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}


def _model(model: str, config: str) -> tuple[Any, dict[str, Any]]:
    key = (model, config)
    if key not in _CACHE:
        w, a, alt, rho = CONFIGS[config]
        if model == "mobilenet_v2":
            im, values, _ = build_int_model(model, w, a, alt, rho, size=32, blocks=3, batch=1)
        else:
            im, values, _ = build_int_model(model, w, a, alt, rho, batch=1)
        _CACHE[key] = (im, values)
    return _CACHE[key]


CASES = [
    # model, config, layer, pe, simd, pixels
    ("cnv", "msq4", "features.7", 8, 16, 4),  # 3x3, 32 -> 64
    ("cnv", "msq4", "features.3", 4, 8, 3),  # 3x3 then max-pool
    ("cnv", "msq4", "classifier.0", 16, 64, 1),  # linear, 3136 -> 128
    ("cnv", "fixed8", "features.7", 8, 16, 3),
    ("mobilenet_v2", "msq4", "2.conv.0.0", 8, 8, 0),  # 1x1, 16 -> 96, the whole layer (256 pixels)
    ("mobilenet_v2", "msq4", "2.conv.1.0", 8, 3, 0),  # 3x3 depthwise, stride 2, the whole layer
    ("mobilenet_v2", "fixed8", "2.conv.0.0", 8, 8, 3),
    ("mobilenet_v2", "fixed8", "2.conv.1.0", 8, 9, 3),
]


@needs_iverilog
@pytest.mark.parametrize(("model", "config", "layer", "pe", "simd", "npix"), CASES)
def test_layer_engine_matches_integer_engine(model: str, config: str, layer: str, pe: int, simd: int, npix: int,
                                             tmp_path: Path) -> None:
    im, values = _model(model, config)
    lay = plan_layout(layer_data(im, values, layer), pe, simd)
    kinds = {c.kind for c in lay.cores}
    if config == "msq4":  # MSQ's mix: SP2 rows and fixed-point rows in the same engine
        assert "sp2" in kinds and kinds & {"fixed_dsp", "fixed_dsp2"}, kinds
    else:
        assert kinds <= {"fixed_dsp", "fixed_dsp2"}
    res = cosimulate(lay, tmp_path, default_pixels(lay, npix))
    assert res.outputs == res.pixels * lay.data.rows
    assert res.ok, res.to_dict()


@needs_iverilog
def test_lut_multipliers_and_power_of_two_lanes(tmp_path: Path) -> None:
    im, values = _model("cnv", "pot4")
    lay = plan_layout(layer_data(im, values, "features.3"), 4, 5, core="lut")  # 5 lanes: a ragged last beat
    assert {c.kind for c in lay.cores} == {"fixed_lut", "pot"}
    res = cosimulate(lay, tmp_path, default_pixels(lay, 2))
    assert res.ok, res.to_dict()


def test_unsupported_layer_is_named() -> None:
    im, values = _model("mobilenet_v2", "msq4")
    with pytest.raises(MixqError, match=r"2\.conv\.2"):  # the network output: no requantization follows
        layer_data(im, values, "2.conv.2")
    with pytest.raises(MixqError, match="1.conv.0.2"):
        layer_data(im, values, "1.conv.0.2")  # a clamp, not a compute layer
    d = layer_data(im, values, "1.conv.0.0")
    for fmt in (parse_format("fp8_e4m3").to_dict(), parse_format("posit8_1").to_dict()):
        bad = dataclasses.replace(d, formats=(fmt,) * len(d.formats))
        with pytest.raises(MixqError, match=r"layer '1\.conv\.0\.0'.*no datapath"):
            plan_layout(bad, 4, 3)


@needs_iverilog
@pytest.mark.parametrize(("config", "layer", "kinds", "pe", "simd"), [
    ("ternary4", "features.3", {"ternary"}, 4, 8),  # TWN weights {-1, 0, 1} on selects, 4-bit activations
    ("w1a1", "features.7", {"xnor"}, 8, 16),  # binary weights x 1-bit activations: XNOR and popcount
    ("w1a1", "features.0", {"ternary"}, 4, 3),  # binary weights x the 8-bit signed input: selects
])
def test_ternary_and_xnor_layer_engines(tmp_path: Path, config: str, layer: str, kinds: set[str], pe: int,
                                       simd: int) -> None:
    """Binary weights ride XNOR-popcount lanes when the activations are 1 bit: the popcount exceeds the dot
    product by the row's count of -1 weights, taken off in the requantizer's constant; ternary lanes select."""
    from mixq.cli.rtl import network_int_model

    if config not in _CACHE_NET:
        _CACHE_NET[config] = network_int_model("cnv", config, 1)[:2]
    im, values = _CACHE_NET[config]
    lay = plan_layout(layer_data(im, values, layer), pe, simd)
    assert {c.kind for c in lay.cores} == kinds
    res = cosimulate(lay, tmp_path, default_pixels(lay, 3))
    assert res.outputs == res.pixels * lay.data.rows
    assert res.ok, res.to_dict()


_CACHE_NET: dict[str, tuple[Any, dict[str, Any]]] = {}


def test_folded_requantization_equals_the_engine_chain() -> None:
    im, values = _model("cnv", "msq4")
    d = layer_data(im, values, "features.7")  # raises if the folded rule disagrees with the engine
    node = im.node("features.7")
    acc = values["features.7"][0].numpy().astype(object)
    g = int(node.attrs.get("acc_frac_bits", 0))
    nb = (acc - d.bias.reshape(-1, 1, 1)) >> g  # the dot products without bias
    y = (nb * d.mult.reshape(-1, 1, 1) + d.const.reshape(-1, 1, 1)) >> d.shift
    y = np.minimum(np.maximum(y, d.lo.reshape(-1, 1, 1)), d.hi.reshape(-1, 1, 1)).astype(np.int64)
    assert np.array_equal(y, d.y[0])


def test_weight_memory_words_pack_lanes_lsb_first() -> None:
    im, values = _model("cnv", "msq4")
    lay = plan_layout(layer_data(im, values, "features.0"), 2, 4)
    rtl = generate_layer(lay, "t")
    c = lay.cores[0]
    words, width = rtl.mems["t_c0_u0_w.mem"]
    assert width == 4 * c.wbits * c.outs and len(words) == lay.tiles * lay.fold
    assert pack([-1, 2], [4, 4]) == 0x2F


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_small_layer_synthesizes_close_to_the_model() -> None:
    from mixq.rtl.layer_synth import synth_layer

    im, values = _model("cnv", "msq4")
    lay = plan_layout(layer_data(im, values, "features.0"), 2, 3)  # one packed-DSP unit, one SP2 unit
    s = synth_layer(lay)
    packed = next(c for c in lay.cores if c.kind == "fixed_dsp2")
    assert s.synth.dsp >= packed.cfg.simd  # the packed unit's DSP chain (plus the requantizers)
    assert s.synth.lut > 0 and s.synth.ff > 0
    assert abs(s.lut_error) < 0.2, s.to_dict()
