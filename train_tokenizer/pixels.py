"""The 8-bit pixel path of the data pipeline: batches travel as uint8 (lossless, a quarter of the bytes) and become
[-1, 1] pixel values on the device."""

from __future__ import annotations

import torch


def to_uint8(pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixel values in [-1, 1] (`k / 127.5 - 1` for 8-bit k) → the uint8 k."""
    return ((pixel_values + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_pixel_values(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → values in [-1, 1], exactly as `DoveImageProcessor` and `UInt8ImageDataset` compute them."""
    return pixels.float().div_(127.5).sub_(1.0)
