"""Run exported models in real runtimes: QONNX with the ``qonnx`` executor, QDQ with onnxruntime.

Used by the tests and by ``mixq export --check``. qonnx 1.0 builds one single-node
ONNX model per node with the installed onnx's newest IR version, which onnxruntime
may not read yet; :func:`run_qonnx` caps that IR version (8, what the exports use)
while it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from mixq.errors import MixqError

IR_VERSION = 8


@contextmanager
def _qonnx_ir_cap() -> Iterator[None]:
    import qonnx.core.onnx_exec as ex

    orig = ex.qonnx_make_model

    def make(graph: Any, **kwargs: Any) -> Any:
        m = orig(graph, **kwargs)
        m.ir_version = min(int(m.ir_version), IR_VERSION)
        return m

    ex.qonnx_make_model = make
    try:
        yield
    finally:
        ex.qonnx_make_model = orig


def run_qonnx(model: Any, x: torch.Tensor | np.ndarray, full: bool = False) -> Any:
    """Execute a QONNX ``ModelProto`` on ``x`` with ``qonnx.core.onnx_exec.execute_onnx``.

    Returns the output array, or with ``full`` every tensor of the graph by name.
    """
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MixqError("running QONNX models needs qonnx: pip install qonnx==1.0.0") from e
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    wrapper = ModelWrapper(model)
    with _qonnx_ir_cap():
        out = execute_onnx(wrapper, {wrapper.graph.input[0].name: arr.astype(np.float32)},
                           return_full_exec_context=full)
    return dict(out) if full else np.asarray(out[wrapper.graph.output[0].name])


def run_qdq(model: Any, x: torch.Tensor | np.ndarray, optimize: bool = True) -> np.ndarray:
    """Execute an ONNX model on ``x`` with onnxruntime (CPU); ``optimize=False`` keeps the graph as written.

    With ``optimize=True`` onnxruntime fuses Q/DQ pairs into integer kernels; on x86 CPUs with AVX2
    but without VNNI its u8·s8 kernels saturate int16 pair sums (benchmarks/results/design_measurements.md,
    "onnxruntime QDQ check"), so only the graph as written is a faithful check there.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MixqError("running ONNX models needs onnxruntime: pip install onnxruntime") from e
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: arr.astype(np.float32)})[0])


def check_export(fmt: str, path: Any, qmodel: Any, imodel: Any, x: torch.Tensor) -> dict[str, Any]:
    """Read an export back, run it in its runtime on ``x`` and compare with mixq.

    ``int``: the engine on the file read back vs the engine on ``imodel`` (must be equal);
    ``qonnx``: qonnx's executor vs the fake-quant model; ``qdq``: onnxruntime (graph as
    written) vs the fake-quant model.
    """
    from pathlib import Path

    from mixq.engine.io import load_int_model
    from mixq.engine.runner import IntEngine

    p = Path(path)
    if fmt == "int":
        y_ref = IntEngine(imodel)(x).real().numpy()
        y = IntEngine(load_int_model(p))(x).real().numpy()
        runtime = "mixq integer engine, file read back"
    else:
        import onnx

        model = onnx.load(str(p))
        with torch.no_grad():
            y_ref = qmodel(x).double().numpy()
        if fmt == "qonnx":
            batch = int(model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1)
            chunks = [run_qonnx(model, x[i:i + batch]) for i in range(0, x.shape[0] - batch + 1, batch)]
            y = np.concatenate(chunks)
            y_ref = y_ref[: y.shape[0]]
            runtime = "qonnx execute_onnx"
        else:
            y = run_qdq(model, x, optimize=False)
            runtime = "onnxruntime"
    return {"runtime": runtime, "images": int(y.shape[0]),
            "max_abs_diff": float(np.abs(y.astype(np.float64) - y_ref).max()),
            "argmax_agreement": float((y.argmax(1) == y_ref.argmax(1)).mean())}
