"""ONNX QDQ exports (8-bit) executed by onnxruntime match mixq's fake-quant model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mixq.engine import to_integer
from mixq.errors import ModelError
from mixq.export import to_qdq
from test_engine_support import inputs, quantized, tiny

pytest.importorskip("onnxruntime")
from mixq.export.check import run_qdq  # noqa: E402


def _run(q: torch.nn.Module, x: torch.Tensor, int_bias: bool, optimize: bool) -> tuple[np.ndarray, np.ndarray]:
    im = to_integer(q, x)
    y_d = run_qdq(to_qdq(im, int_bias=int_bias), x, optimize=optimize)
    with torch.no_grad():
        y = q(x).numpy()
    return y_d, y


@pytest.mark.parametrize("case", ["cnv", "tiny-w8a8", "tiny-msq8"])
def test_qdq_as_written_matches_fake_quant(case: str) -> None:
    q, x = (quantized("cnv", "w8a8"), inputs("cnv")[1][:16]) if case == "cnv" else tiny(case.split("-")[1])
    y_d, y = _run(q, x, int_bias=False, optimize=False)
    assert (y_d.argmax(1) == y.argmax(1)).all()
    assert np.abs(y_d - y).max() <= 2e-3 * np.abs(y).max()


def _u8s8_saturates() -> bool:
    """onnxruntime's fused u8·s8 kernels on x86 with AVX2 but no VNNI sum pairs of products into int16
    (vpmaddubsw) and saturate; with VNNI (or on ARM) they are exact."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and "vnni" not in flags


def test_qdq_int32_bias_and_fused_kernels_stay_close() -> None:
    q, x = quantized("cnv", "w8a8"), inputs("cnv")[1][:32]
    # the graph as written always; onnxruntime's fused kernels only where they do not saturate
    for optimize in (False,) if _u8s8_saturates() else (False, True):
        y_d, y = _run(q, x, int_bias=True, optimize=optimize)
        assert (y_d.argmax(1) == y.argmax(1)).mean() >= 0.95
        assert np.abs(y_d - y).max() <= 0.05 * np.abs(y).max()


def test_qdq_node_types() -> None:
    q, x = tiny("w8a8")
    model = to_qdq(to_integer(q, x))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 5  # one per activation quantizer
    assert ops.count("DequantizeLinear") == 5 + 5 + 4  # activations, weights, biases (the depthwise has none)
    weights = [i for i in model.graph.initializer if i.name.endswith(".weight_q")]
    assert weights and all(i.data_type == 3 for i in weights)  # int8


def test_qdq_rejects_narrow_activations() -> None:
    q = quantized("cnv", "w4a4")
    with pytest.raises(ModelError, match=r"layer features\.0.*ufixed4|layer features\.0.*fixed4"):
        to_qdq(to_integer(q, inputs("cnv")[1][:2]))


@pytest.mark.slow
def test_mobilenet_qdq() -> None:
    q, x = quantized("mobilenet_v2", "w8a8"), inputs("mobilenet_v2")[1][:4]
    y_d, y = _run(q, x, int_bias=False, optimize=False)
    assert (y_d.argmax(1) == y.argmax(1)).all()
    assert np.abs(y_d - y).max() <= 1e-2 * np.abs(y).max()
