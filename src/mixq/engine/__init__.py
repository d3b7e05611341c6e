"""Bit-exact integer inference (layer L4): integer model, engine, hardware-faithful fake quant.

    im = to_integer(qmodel, example)          # IntModel: plain arrays + JSON-able attributes
    out = IntEngine(im)(x)                    # integer codes on a grid; out.real() = codes * grid
    fm = faithful(qmodel, im)                 # the fake-quant model in hardware-faithful mode
    assert torch.equal(fm(x), out.real())     # bit for bit
    report = verify(qmodel, x)                # JSON-able comparison of all three

Semantics of the integer model (one rule set, used by the engine, the faithful mode
and the RTL):

* **Grids.** Every integer tensor ``q`` means ``q * grid``; activation codes have one
  grid ``s_act * 2**-frac`` (the ``QAct`` scale), accumulators one per output row:
  ``s_act * s_w[row] * 2**-frac_w[row] * 2**-g``.
* **Input.** The float network input is quantized once, exactly as the first fake-quant
  activation quantizer does (``fmt.quantize``: round half to even, clamp).
* **Products and accumulators.** ``acc = (sum_k w_k * x_k) << g + B``: integer weight
  codes (each row in its own format), integer activation codes; SP2 / power-of-two /
  binary / ternary rows as shift-and-add (terms of ``fmt.decompose``), fixed-point rows as
  multiplies. ``g`` (``acc_frac_bits``) fractional accumulator bits keep the bias ``2**g``
  finer than the product grid (default: what the accumulator budget leaves, at most 8).
  ``B = rint(bias / grid)`` is the bias on the accumulator grid.
* **Accumulator width.** Per layer, the worst case ``max_row sum|w| * max|x| << g + |B|``
  (from the weights and the format ranges, never from data) gives ``acc_bits``; above the
  budget (``acc_bits=32`` by default, or per layer) conversion fails with a ``ModelError``
  naming the layer (``overflow="error"``), or the accumulator saturates at the budget's
  range (``overflow="saturate"``, counted per layer in ``IntResult.saturated``).
* **Requantization** (where the fake-quant model has an activation quantizer):
  ``q = clamp((x * M + 2**(n-1)) >> n, qmin, qmax)``, ``M`` an unsigned ``mult_bits``-bit
  integer (16 by default, as the RTL requant unit) per channel of the producer with its
  shift ``n``: **round half up** (towards +inf) on the exact integer product.
* **ReLU / ReLU6 / Hardtanh** are clamps on the integer grid (a limit ``v`` becomes
  ``floor(v / grid + 1/2)``; per channel for a ``Hardtanh`` subclass with per-channel
  bounds such as CLE's clipped ReLU6, whose forward is checked to be that clamp); max
  pooling is an integer max; average pooling an integer window *sum* whose grid is
  ``grid / count`` (no rounding); flatten / concat carry grids.
* **Data movement** — zero padding, zero insertion (``mixq.nn.ZeroInsert``, the first half of
  a transposed conv), pixel shuffle, nearest upsampling by integer factors, and reshapes
  that insert / remove unit dims (``unsqueeze`` / ``squeeze`` / ``view``) — moves codes and
  grids together (:mod:`mixq.engine.grids`; zero is on every grid). A pixel shuffle of
  channels on different grids (per-channel weights) keeps one grid per position rather than
  requantizing; ops that need a spatially uniform grid (pooling, bilinear) refuse it by name.
  Shape-only ops on the float network input just change the shape its first quantizer sees;
  data movement on it is replayed on the codes right after that quantizer (exact: quantization
  is elementwise and maps 0 to 0).
* **Bilinear upsampling** is an exact linear op: torch's weights are rationals, so the
  output is the integer ``Wh @ x @ Ww^T`` on the grid ``grid / (Dh * Dw)`` (scale 2,
  ``align_corners=False``: ``Dh = Dw = 4``) — no rounding (:mod:`mixq.engine.convert_ops`).
* **Lookup-table activations** (Hardswish, Hardsigmoid, SiLU, Sigmoid, Tanh, GELU, ELU,
  LeakyReLU, Mish, wrapped in a ``mixq.nn.QLutAct`` by quantization): requantize to the
  table's input grid, then ``table[q - qmin]`` on the output grid ``s_out``. The table is the
  one the fake-quant module itself reads (``QLutAct.table``): bit-exact by construction.
* **Channel reductions and products.** A mean / max over the channels reduces the codes on
  one grid (channels on different grids are first brought to a common grid as adds do); a
  product of two tensors multiplies the codes (grid ``grid_a * grid_b``), by a constant folds
  it into the grid.
* **BatchNorm the front end cannot fold** (after a ReLU or a pool) is an ``affine`` per channel,
  ``y = a_c * x + b_c`` in eval semantics: on one output grid chosen as for adds (below), a signed
  dyadic ``M_c * 2**-n_c ~ a_c * grid_in / grid_out``, the shift ``B_c = rint(b_c / grid_out)``, one
  rounding: ``((x * M_c + 2**(n_c-1)) >> n_c) + B_c``. A BatchNorm right after a conv / linear is
  folded into it by the front end (:func:`mixq.graph.fold_bn`) before quantization.
* **Residual adds** rescale each operand onto a common grid — at least ``add_guard_bits``
  (8) finer than the coarser operand, never coarser than the finer — with multipliers
  ``M_i`` sharing one shift ``n``, and round once: ``(sum_i x_i * M_i + 2**(n-1)) >> n``.
* **Exactness of the arithmetic.** Every GEMM runs in float32 when its worst-case partial
  sum is below 2**24, in float64 below 2**53, else in int64 (exact in any summation
  order); requantization and adds in float64 when ``|x| * M`` stays below 2**53, else int64.

Hardware-faithful mode (:func:`faithful`): the fake-quant model's graph with each layer
computing in float64 on its dequantized fake-quant weights, requantizing its input with
the same ``M``, ``n`` and rounding, its bias on the same grid, its outputs snapped onto the
grid (exact: the float error stays far below half a step). It differs from the ordinary
fake-quant model only by those hardware rounding rules; :func:`verify` reports by how much.
"""

from mixq.engine.arith import DEFAULT_MULT_BITS, ROUNDING, dyadic, requantize
from mixq.engine.convert import EngineConfig, to_integer
from mixq.engine.faithful import faithful
from mixq.engine.io import load_int_model, save_int_model
from mixq.engine.model import IntModel, IntNode
from mixq.engine.runner import IntEngine, IntResult, run
from mixq.engine.verify import verify

__all__ = [
    "DEFAULT_MULT_BITS", "ROUNDING", "EngineConfig", "IntEngine", "IntModel", "IntNode", "IntResult", "dyadic",
    "faithful", "load_int_model", "save_int_model", "requantize", "run", "to_integer", "verify",
]
