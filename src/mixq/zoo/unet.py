"""A small U-Net image denoiser: ``y = x + f(x)``, 3 channels in and out.

``f`` is an encoder-decoder with concat skips (Ronneberger et al., 2015, scaled down):

* encoder level ``i`` (``enc.i``): two 3x3 conv + ReLU, ``width * 2**i`` channels, then a 2x2
  max-pool (``pool``) before the next level; ``depth`` poolings in all;
* bottleneck (``mid``): two 3x3 conv + ReLU at ``width * 2**depth`` channels;
* decoder level ``i`` (``dec.i``): an upsampling by 2 (``up.i``) to ``width * 2**i`` channels followed by a
  ReLU (``up_relu``, the default), a concat with the encoder's output at that level (skip first), two 3x3
  conv + ReLU;
* a 1x1 head (``head``) to 3 channels, added to the input (a residual output: the network
  learns the noise).

The residual input goes through ``skip``: the identity written as a frozen 1x1 conv without bias
(weights not trained). The integer engine refuses an add whose operand is the float network input
("an operand is not an integer tensor (add of the float network input or a constant)"); through the
1x1 conv the add sees the input's codes, exactly: weight 1 is a level of every signed narrow format at
its per-channel scale (code ``qmax``, scale ``1/qmax``), so the quantized skip is the identity too.

The ReLU after the upsampling makes both halves of every concat non-negative (the skip half is an encoder
ReLU's output), so the decoder conv that reads the concat gets an *unsigned* input quantizer: at 4 bits 16
levels on both halves, where a signed concat leaves 8 to the non-negative skip half. The float network
denoises as well either way (it is retrained); ``up_relu=False`` gives the plain U-Net (signed concat).

The upsampling is chosen by ``up``: ``"convtranspose"`` — ``ConvTranspose2d(c, c/2, 2, stride 2)``
(the front end writes it as ``ZeroInsert`` + ``Conv2d``) — or ``"pixelshuffle"`` — a 3x3 conv to
``4 * c/2`` channels and ``PixelShuffle(2)`` (sub-pixel convolution, Shi et al., 2016); the ReLU sits
before the shuffle (elementwise, so the same function; on the single engine a clamp of the conv's output).
Any input whose height and width are divisible by ``2**depth`` runs; ``forward`` refuses the
others with a :class:`~mixq.errors.ModelError`.
"""

from __future__ import annotations

import torch
from torch import nn

from mixq.errors import ModelError

UPSAMPLERS = ("convtranspose", "pixelshuffle")


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


def _upsampler(cin: int, cout: int, kind: str, relu: bool) -> nn.Module:
    if kind == "convtranspose":
        up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        return nn.Sequential(up, nn.ReLU()) if relu else up
    conv = nn.Conv2d(cin, 4 * cout, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.PixelShuffle(2)) if relu else nn.Sequential(conv, nn.PixelShuffle(2))


class UNet(nn.Module):
    """The U-Net denoiser of the module docstring."""

    def __init__(self, channels: int = 3, width: int = 16, depth: int = 2, up: str = "pixelshuffle",
                 up_relu: bool = True) -> None:
        super().__init__()
        if up not in UPSAMPLERS:
            raise ModelError(f"unet: up={up!r} is not an upsampler; choose one of {', '.join(UPSAMPLERS)}")
        if depth < 1 or width < 1 or channels < 1:
            raise ModelError(f"unet: channels, width and depth must be >= 1, got {channels}, {width}, {depth}")
        self.depth = depth
        w = [width * 2**i for i in range(depth + 1)]
        cins = [channels, *w[:-2]]
        self.enc = nn.ModuleList(_double_conv(cin, c) for cin, c in zip(cins, w[:-1], strict=True))
        self.pool = nn.MaxPool2d(2)
        self.mid = _double_conv(w[-2], w[-1])
        self.up = nn.ModuleList(_upsampler(w[i + 1], w[i], up, up_relu) for i in range(depth))
        self.dec = nn.ModuleList(_double_conv(2 * w[i], w[i]) for i in range(depth))
        self.head = nn.Conv2d(w[0], channels, 1)
        self.skip = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.skip.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
        self.skip.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.depth
        if not isinstance(x, torch.fx.Proxy) and (x.shape[-2] % m or x.shape[-1] % m):  # traced: shapes unknown
            raise ModelError(f"unet: input {tuple(x.shape[-2:])} is not divisible by 2**depth = {m}")
        skips = []
        y = x
        for i, enc in enumerate(self.enc):
            y = enc(y if i == 0 else self.pool(y))
            skips.append(y)
        y = self.mid(self.pool(y))
        for i in reversed(range(self.depth)):
            y = self.dec[i](torch.cat([skips[i], self.up[i](y)], 1))
        return self.skip(x) + self.head(y)


def unet(num_classes: int = 3, width: int = 16, depth: int = 2, up: str = "pixelshuffle",
         up_relu: bool = True) -> UNet:
    """The zoo's ``unet``: ``num_classes`` is the channel count of the image in and out (3: RGB)."""
    return UNet(num_classes, width, depth, up, up_relu)
