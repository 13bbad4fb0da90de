"""Normalization of pixels: fitted on the training images, applied to whole uint8 batches with one
multiply-add (in-memory and streaming batches, and features, share the applying)."""

from __future__ import annotations

import torch

from imgcls.data.types import Normalization


def fit_normalization(images: torch.Tensor, kind: str) -> Normalization:
    """Per-pixel or per-channel standardization, fitted on the training images only."""
    shape = images.shape[1:]
    if kind == "none":
        return Normalization(torch.zeros(shape), torch.ones(shape))
    total = torch.zeros(shape, dtype=torch.float64)
    total_sq = torch.zeros(shape, dtype=torch.float64)
    # Sums of raw pixel values over 256 images stay below 2**24, so float32 adds them exactly (and fast):
    # the statistics do not depend on the order of the images.
    for chunk in images.split(256):
        pixels = chunk.float()
        total += pixels.sum(0)
        total_sq += (pixels * pixels).sum(0)
    total, total_sq = total / 255.0, total_sq / 255.0 ** 2
    count = len(images)
    if kind == "channel":
        total, total_sq = total.sum((1, 2), keepdim=True), total_sq.sum((1, 2), keepdim=True)
        count *= shape[1] * shape[2]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    # A constant pixel (MNIST's borders) carries no information: leave it unscaled rather than divide by 0.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return Normalization(mean.expand(shape).float().contiguous(), std.expand(shape).float().contiguous())


class PixelNormalizer:
    """Whole batches of uint8 rows (b, C*H*W) to normalized float on the device: pixel * scale - shift,
    one multiply-add; the in-memory and the streaming batches share it."""

    def __init__(self, normalization: Normalization, device: torch.device):
        scale, shift = normalization.scale_and_shift()
        self.device = device
        self.scale = scale.flatten().to(device)
        self.negative_shift = -shift.flatten().to(device)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        floats = pixels.to(self.device, non_blocking=True).float()
        if floats is pixels:  # float32 already: never write into the caller's tensor
            return torch.addcmul(self.negative_shift, floats, self.scale)
        return torch.addcmul(self.negative_shift, floats, self.scale, out=floats)
