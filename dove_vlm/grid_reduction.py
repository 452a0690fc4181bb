"""Fewer tokens from a spatial grid of latents: average pooling to k cells, or k cells drawn at random.

Both take the VQGAN grid `(B, C, H, W)` (the `grid` tower's latents) and return `(B, k, C)` tokens in raster
order (row by row), exactly k per image, for any `1 <= k <= H * W`:

- [`pool_grid`]: LLaVA-NeXT / Qwen-VL style average pooling on the grid. When k has a factor pair `r x c` that fits
  the grid (`r <= H`, `c <= W`), the grid is pooled to the most square such pair with
  `torch.nn.functional.adaptive_avg_pool2d` (k = 16 on 8x8: 4x4, k = 28: 4x7, k = 64: the grid itself). Otherwise
  (k prime and wider than the grid, e.g. 11 or 13 on 8x8) the grid is split into `r = max(round(sqrt k), ceil(k / W))`
  bands of rows (adaptive-pooling boundaries) and band j is pooled to `c_j` columns, the `c_j` differing by at most
  one and summing to k (13 on 8x8: 4 bands of 4, 3, 3, 3 cells). Every cell is the mean of a contiguous block of
  the grid; together they cover the whole grid.
- [`random_grid`]: k cells drawn without replacement, kept in raster order. The draw is seeded by the image
  itself (a digest of its pixels and the seed), so an image gets the same cells whatever batch it is in.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F


def check_k(k: int, height: int, width: int, mode: str = "pool") -> int:
    """k as an int, or a `ValueError` naming it and the valid range (1 to the grid's cell count)."""
    cells = height * width
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cells:
        raise ValueError(f"{mode}-{k}: k must be a whole number in [1, {cells}] (the {height}x{width} grid's cells), "
                         f"got {k!r}.")
    return k


def pool_shape(k: int, height: int, width: int) -> list[int]:
    """Cells per row band of [`pool_grid`]: `[c] * r` for a factor pair `r x c` of k within the grid (the most
    square one), else the widths of the row bands (see the module docstring)."""
    check_k(k, height, width)
    pairs = [(r, k // r) for r in range(1, height + 1) if k % r == 0 and k // r <= width]
    if pairs:
        rows, cols = min(pairs, key=lambda p: (abs(p[0] - p[1]), p[0]))
        return [cols] * rows
    rows = min(height, max(round(math.sqrt(k)), math.ceil(k / width)))
    base, extra = divmod(k, rows)
    return [base + (1 if j < extra else 0) for j in range(rows)]


def pool_grid(grid: torch.Tensor, k: int) -> torch.Tensor:
    """`(B, C, H, W)` → `(B, k, C)`: the grid average-pooled to k cells (see the module docstring)."""
    _, _, height, width = grid.shape
    widths = pool_shape(k, height, width)
    if len(set(widths)) == 1:
        return F.adaptive_avg_pool2d(grid, (len(widths), widths[0])).flatten(2).transpose(1, 2)
    rows = len(widths)
    bands = []
    for j, cols in enumerate(widths):  # the row boundaries adaptive pooling uses
        start, stop = (j * height) // rows, math.ceil((j + 1) * height / rows)
        bands.append(F.adaptive_avg_pool2d(grid[:, :, start:stop], (1, cols)).flatten(2))
    return torch.cat(bands, dim=2).transpose(1, 2)


def image_seed(pixels: torch.Tensor, seed: int = 0) -> int:
    """A seed that depends only on one image's pixel values (and `seed`), not on its batch."""
    data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + data).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_cells(k: int, height: int, width: int, seed: int) -> torch.Tensor:
    """k distinct cell indices of an `H x W` grid (raster numbering), drawn with `seed`, sorted."""
    check_k(k, height, width, "random")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(height * width, generator=generator)[:k].sort().values


def random_grid(grid: torch.Tensor, k: int, pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """`(B, C, H, W)` → `(B, k, C)`: k cells per image, drawn with [`image_seed`] of that image's `pixels`, in
    raster order."""
    batch, _, height, width = grid.shape
    flat = grid.flatten(2).transpose(1, 2)
    picks = torch.stack([random_cells(k, height, width, image_seed(pixels[i], seed)) for i in range(batch)])
    return torch.gather(flat, 1, picks.to(flat.device).unsqueeze(-1).expand(-1, -1, flat.shape[-1]))


__all__ = ["check_k", "image_seed", "pool_grid", "pool_shape", "random_cells", "random_grid"]
