"""The images a report runs on: a data spec (`synthetic[:N]`, an image folder, a saved `datasets` folder, `hf:NAME`)
turned into one pixel tensor at the model's size, with each image's Laplacian-variance complexity and, for the
embedded scenes, its object count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from dove_vlm.data import SyntheticScenes, build_image_dataset, laplacian_variance
from train_tokenizer.evaluate import scenes_to_pixels


@dataclass
class ReportImages:
    pixels: torch.Tensor  # (N, 3, H, W) in [-1, 1] at the model's size
    laplacian: np.ndarray  # (N,) complexity of each image as the model sees it
    num_objects: np.ndarray | None  # (N,) for the embedded scenes, None otherwise
    source: str


def pixels_to_array(pixels: torch.Tensor) -> np.ndarray:
    """`(3, H, W)` in [-1, 1] → `(H, W, 3)` float in [0, 1]."""
    return ((pixels.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def complexity(pixels: torch.Tensor) -> np.ndarray:
    """Laplacian variance of each image of a `(N, 3, H, W)` batch in [-1, 1]."""
    return np.asarray([laplacian_variance(pixels_to_array(image)) for image in pixels])


def load_report_images(spec: str, processor, limit: int = 200, seed: int = 0, split: str = "test") -> ReportImages:
    """Resolve `spec` like `dove train --data` (see `build_image_dataset`); the embedded scenes come from the
    held-out `test` split. Images of any size are resized and centre-cropped to the model's size by the processor.
    An empty data set is an error naming the spec."""
    if limit < 1:
        raise ValueError(f"the number of images must be >= 1, got {limit}.")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        count = min(int(spec.split(":", 1)[1]) if ":" in spec else limit, limit)
        scenes = SyntheticScenes(count, image_size=processor.size, seed=seed, split="test")
        if count == 0:
            raise ValueError(f"the data set {spec!r} has no images.")
        pixels = scenes_to_pixels(list(scenes))
        return ReportImages(pixels, complexity(pixels), np.asarray([s.num_objects for s in scenes]), spec)
    try:
        dataset = build_image_dataset(spec, processor, seed=seed, split=split)
    except IndexError as err:  # `datasets.load_from_disk` of a data set saved with no rows
        raise ValueError(f"the data set {spec!r} has no images (datasets cannot load it: {err!r}).") from err
    if len(dataset) == 0:
        raise ValueError(f"the data set {spec!r} has no images.")
    count = min(len(dataset), limit)
    pixels = torch.stack([dataset[i]["pixel_values"] for i in tqdm(range(count), desc="loading images", leave=False)])
    return ReportImages(pixels, complexity(pixels), None, spec)


def batches(count: int, batch_size: int):
    """Slices covering `range(count)` in steps of `batch_size`."""
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
