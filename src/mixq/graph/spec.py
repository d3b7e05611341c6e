"""`LayerSpec`: the plain-data picture of one layer, shared by every stage.

Pure data (no torch): the hardware model (L4) reads it without importing torch.
Shapes exclude the batch dimension: ``(C, H, W)`` for feature maps, ``(F,)``
for vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Kinds of layer a capture produces.
#   conv      dense 2-D convolution (groups == 1, or grouped but not depthwise)
#   dwconv    depthwise convolution (groups == in_channels == out_channels)
#   linear    fully connected
#   add       elementwise sum of two or more producers (residual)
#   concat    channel concatenation
#   maxpool / avgpool / gap (global average pool)
#   relu / relu6 / act (other activation)
#   reduce    a reduction over the channels (mean or max: one value per pixel)
#   mul       elementwise product of two producers (an attention gate), or by a constant
#   flatten
#   pad / zero_insert / pixel_shuffle / upsample   data movement (zero padding, the zeros of a
#             transposed conv written as a conv, subpixel reshape, nearest or bilinear upsampling)
#   transpose the axes reordered (permute / transpose; the batch axis stays first): extra["perm"]
#   input     the graph input
LAYER_KINDS = (
    "input", "conv", "dwconv", "linear", "add", "concat", "maxpool", "avgpool", "gap",
    "relu", "relu6", "act", "flatten", "bn", "pad", "zero_insert", "pixel_shuffle", "upsample", "transpose", "reduce",
    "mul", "other",
)

# Kinds whose weights are quantized and that need multiply-accumulate hardware.
COMPUTE_KINDS = ("conv", "dwconv", "linear")


def reorders(perm: list[int], shape: tuple[int, ...]) -> bool:
    """Whether permuting the axes of a per-sample ``shape`` by ``perm`` (output axis ``i`` is input axis
    ``perm[i]``) changes the order of the elements; moving size-1 axes only relabels them.

    >>> reorders([1, 0, 2], (64, 4, 1)), reorders([0, 2, 1], (64, 4, 1)), reorders([1, 0], (1, 8))
    (True, False, False)
    """
    kept = [p for p in perm if shape[p] != 1]
    return kept != sorted(kept)


def is_depthwise(groups: int, in_channels: int, out_channels: int) -> bool:
    """Whether a conv with these fields is of kind ``dwconv``: one input channel per group and per output row.

    >>> is_depthwise(8, 8, 8), is_depthwise(1, 1, 1), is_depthwise(4, 8, 8)
    (True, False, False)
    """
    return groups > 1 and groups == in_channels == out_channels


@dataclass(frozen=True)
class LayerSpec:
    """One node of the captured graph.

    ``macs`` counts multiply-accumulates for one input sample;
    ``params`` counts weights plus biases. ``inputs`` / ``outputs`` name the
    producer and consumer nodes (residual adds have two inputs).
    """

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_channels: int = 0
    out_channels: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    bias: bool = False
    params: int = 0
    macs: int = 0
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_compute(self) -> bool:
        return self.kind in COMPUTE_KINDS

    @property
    def weight_rows(self) -> int:
        """Rows of the weight matrix (output channels / features)."""
        return self.out_channels

    @property
    def row_length(self) -> int:
        """Multiply-accumulates per output value: in_channels/groups * kh * kw."""
        return (self.in_channels // max(self.groups, 1)) * self.kernel[0] * self.kernel[1]

    @property
    def out_pixels(self) -> int:
        """Output positions per sample (H*W for convolutions, 1 for linear)."""
        if len(self.out_shape) == 3:
            return self.out_shape[1] * self.out_shape[2]
        return 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind,
            "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel": list(self.kernel), "stride": list(self.stride), "padding": list(self.padding),
            "groups": self.groups, "bias": self.bias, "params": self.params, "macs": self.macs,
            "inputs": list(self.inputs), "outputs": list(self.outputs),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LayerSpec:
        return LayerSpec(
            name=d["name"], kind=d["kind"],
            in_shape=tuple(d["in_shape"]), out_shape=tuple(d["out_shape"]),
            in_channels=d.get("in_channels", 0), out_channels=d.get("out_channels", 0),
            kernel=tuple(d.get("kernel", (1, 1))),  # type: ignore[arg-type]
            stride=tuple(d.get("stride", (1, 1))),  # type: ignore[arg-type]
            padding=tuple(d.get("padding", (0, 0))),  # type: ignore[arg-type]
            groups=d.get("groups", 1), bias=d.get("bias", False),
            params=d.get("params", 0), macs=d.get("macs", 0),
            inputs=tuple(d.get("inputs", ())), outputs=tuple(d.get("outputs", ())),
        )


def compute_layers(specs: list[LayerSpec]) -> list[LayerSpec]:
    """The layers that carry weights and need MAC hardware, in graph order."""
    return [s for s in specs if s.is_compute]


def total_macs(specs: list[LayerSpec]) -> int:
    return sum(s.macs for s in specs)
