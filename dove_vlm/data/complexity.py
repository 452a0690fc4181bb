"""Image complexity as the paper measures it: the variance of the Laplacian of the grey-level image."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def laplacian_variance(image: Image.Image | np.ndarray) -> float:
    """Variance of the Laplacian of the image in grey levels on the [0, 1] scale (higher = busier).

    Accepts a PIL image or an `(H, W)` / `(H, W, C)` array (uint8 in [0, 255] or float in [0, 1])."""
    if isinstance(image, Image.Image):
        grey = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    else:
        array = np.asarray(image)
        if array.ndim == 3:
            array = array[..., :3].mean(-1) if array.shape[-1] in (3, 4) else array.mean(-1)
        if array.ndim != 2:
            raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {np.asarray(image).shape}.")
        grey = array.astype(np.float64)
        if np.issubdtype(np.asarray(image).dtype, np.integer):
            grey = grey / 255.0
    return float(ndimage.laplace(grey, mode="reflect").var())
