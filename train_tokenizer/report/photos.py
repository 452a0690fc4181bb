"""Real photographs that ship inside scikit-image (no download): token count against Laplacian-variance
complexity. Each photo is resized and centre-cropped to the model's size by its image processor; complexity is
measured on that model input (and, for reference, on the full-resolution grey photo)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dove_vlm import DoveModel
from dove_vlm.data import laplacian_variance, to_rgb
from train_tokenizer.evaluate import _spearman

from .images import complexity

# Photographs and micrographs in skimage.data that are stored inside the package (the ones needing `pooch`
# downloads are left out): flat/simple scenes (moon, clock, page, text, camera) through busy textures (grass,
# gravel, brick, hubble_deep_field).
PHOTOS = ("moon", "clock", "page", "text", "camera", "horse", "coins", "chelsea", "astronaut", "coffee", "rocket",
          "immunohistochemistry", "retina", "cell", "hubble_deep_field", "brick", "grass", "gravel")


@dataclass
class Photo:
    name: str
    image: np.ndarray


def load_photos(names=PHOTOS) -> tuple[list[Photo], list[str]]:
    """The photos that load from the installed scikit-image, and the names that did not (with the reason)."""
    import skimage.data

    photos, missing = [], []
    for name in names:
        try:
            image = getattr(skimage.data, name)()
        except Exception as err:  # noqa: BLE001 — not in this version, or it needs a download (pooch)
            missing.append(f"{name} ({type(err).__name__})")
            continue
        photos.append(Photo(name, np.asarray(image)))
    return photos, missing


@torch.no_grad()
def photo_lengths(model: DoveModel, processor, names=PHOTOS) -> dict:
    photos, missing = load_photos(names)
    if not photos:
        raise ValueError(f"none of the scikit-image photos {list(names)} could be loaded.")
    pixels = processor([to_rgb(p.image, name=p.name) for p in photos])["pixel_values"]
    lengths = model.encode(pixels).lengths.numpy()
    lap_input = complexity(pixels)
    lap_full = np.asarray([laplacian_variance(to_rgb(p.image, name=p.name)) for p in photos])
    rows = [{"photo": p.name, "tokens": int(n), "laplacian_model_input": float(a), "laplacian_full_resolution": float(b)}
            for p, n, a, b in zip(photos, lengths, lap_input, lap_full)]
    order = np.argsort(lap_input, kind="stable")  # flat to busy
    return {"photos": [rows[i] for i in order], "skipped": missing, "image_size": int(processor.size),
            "spearman_tokens_vs_laplacian_model_input": _spearman(lengths, lap_input),
            "spearman_tokens_vs_laplacian_full_resolution": _spearman(lengths, lap_full),
            "pixels": pixels[torch.from_numpy(order)]}
