"""The U-Net of the ``unet`` backend (PyTorch): grey image in, three class scores out
(background, organoid interior, organoid boundary), the same classes as the pixel forest's, so
both turn probabilities into organoids with :func:`..forest.regions.regions_from_probabilities`.

Imports torch: import this module only where torch is meant to be loaded (never in a process
that has loaded TensorFlow).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A U-Net (Ronneberger et al. 2015) with batch normalisation: ``depth`` poolings, ``base``
    channels at full resolution doubling per level (at most 8x ``base``), bilinear upsampling.

    Input (N, 1, Y, X) float32 with Y and X multiples of ``2**depth``; output (N, 3, Y, X)
    class scores (logits). Receptive field: about ``2**depth * 18`` px (depth 5: ~ 570 px).
    """

    def __init__(self, base: int = 16, depth: int = 5, n_classes: int = 3, in_channels: int = 1):
        super().__init__()
        self.base, self.depth, self.n_classes, self.in_channels = base, depth, n_classes, in_channels
        widths = [min(base * 2 ** i, base * 8) for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0])] +
                                  [_block(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList([_block(widths[i + 1] + widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for i in reversed(range(self.depth)):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)

    def architecture(self) -> dict:
        """What rebuilds this network (stored in the model folder)."""
        return {"base": self.base, "depth": self.depth, "n_classes": self.n_classes,
                "in_channels": self.in_channels}
