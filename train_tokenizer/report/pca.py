"""PCA pictures of features over an image: the first three principal components as RGB.

For each image: the VQGAN latents over the h×w grid, the latent grid the token decoder rebuilds from the image's
DOVE tokens (what the tokens say about each place of the image), and the tokens themselves as a strip (one cell
per token, in order; empty after the image's length). One PCA basis per feature kind, fitted on all the images
shown, so colours compare across images."""

from __future__ import annotations

import numpy as np
import torch

from dove_vlm import DoveModel


def _pca_rgb(rows: np.ndarray) -> np.ndarray:
    """`(N, D)` → `(N, 3)` in [0, 1]: the first three principal components, each min-max scaled."""
    from sklearn.decomposition import PCA

    components = min(3, rows.shape[1], rows.shape[0])
    projected = PCA(n_components=components, random_state=0).fit_transform(rows)
    if components < 3:
        projected = np.pad(projected, ((0, 0), (0, 3 - components)))
    low, high = projected.min(0), projected.max(0)
    return (projected - low) / np.where(high > low, high - low, 1.0)


@torch.no_grad()
def pca_pictures(model: DoveModel, pixels: torch.Tensor) -> dict:
    """`{"images", "latents_rgb" (N, h, w, 3), "decoded_rgb" (N, h, w, 3), "tokens_rgb" (N, n, 3), "lengths"}`."""
    enc = model.encode(pixels, num_tokens=None)
    decoded = model.decode_latents(enc.tokens, enc.attention_mask)
    count, channels, side = enc.latents.shape[0], enc.latents.shape[1], enc.latents.shape[-1]

    def grid_rgb(latents: torch.Tensor) -> np.ndarray:
        rows = latents.permute(0, 2, 3, 1).reshape(-1, channels).double().numpy()
        return _pca_rgb(rows).reshape(count, side, side, 3)

    n = model.config.max_tokens
    kept = enc.attention_mask.bool()
    token_rgb = np.ones((count, n, 3))  # white = no token (after the image's length)
    token_rgb[:, : kept.shape[1]][kept.numpy()] = _pca_rgb(enc.tokens[kept].double().numpy())
    return {"images": pixels, "latents_rgb": grid_rgb(enc.latents), "decoded_rgb": grid_rgb(decoded),
            "tokens_rgb": token_rgb, "lengths": enc.lengths.numpy()}
