"""Lengths on images from outside the training distribution: scenes of the held-out renderer (with object
counts), crops of the held-out photos, and foolbox's CIFAR / ImageNet samples, each at the model's size. Per source:
Spearman(tokens, Laplacian variance), Spearman(tokens, objects) where known, the number of distinct lengths, the
mean length as a share of `max_tokens`, the share of images at the maximum, and the lengths themselves."""

from __future__ import annotations

import numpy as np
import torch

from dove_vlm import DoveModel
from dove_vlm.data.heldout_renderer import HeldOutScenes
from dove_vlm.data.photos import HELD_OUT_PHOTOS, PhotoCrops, foolbox_samples
from train_tokenizer.evaluate import _spearman, scenes_to_pixels

from .images import ReportImages, batches, complexity

# What a length that follows content looks like on each source (checked by `targets`).
TARGETS = {"renderer_spearman_objects": 0.6, "spearman_laplacian": 0.5, "min_distinct_lengths": 8,
           "max_mean_fraction": 0.7, "max_share_at_max": 0.5}


def heldout_images(processor, count: int = 96, seed: int = 0) -> tuple[list[ReportImages], list[str]]:
    """`(images per source, notes)`: `count` renderer scenes and `count` crops of the held-out photos at the model's
    size, and foolbox's samples resized and centre-cropped by `processor` (a note says when foolbox is missing)."""
    size = processor.size
    scenes = [HeldOutScenes(count, size, seed)[i] for i in range(count)]
    pixels = scenes_to_pixels(scenes)
    sources = [ReportImages(pixels, complexity(pixels), np.asarray([s.num_objects for s in scenes]), "renderer")]
    crops = PhotoCrops(count, size, seed=seed + 1, names=HELD_OUT_PHOTOS)
    pixels = processor([crops[i][0] for i in range(count)])["pixel_values"]
    sources.append(ReportImages(pixels, complexity(pixels), None, "photos"))
    notes = []
    try:
        samples = foolbox_samples()
    except ValueError as err:
        notes.append(f"foolbox source skipped: {err}")
    else:
        pixels = processor([image for _, image in samples])["pixel_values"]
        sources.append(ReportImages(pixels, complexity(pixels), None, "foolbox"))
    return sources, notes


def length_statistics(lengths: np.ndarray, laplacian: np.ndarray, objects: np.ndarray | None, max_tokens: int) -> dict:
    lengths = np.asarray(lengths, dtype=float)
    return {"num_images": len(lengths), "spearman_tokens_vs_laplacian": _spearman(lengths, laplacian),
            "spearman_tokens_vs_objects": None if objects is None else _spearman(lengths, objects),
            "distinct_lengths": int(len(np.unique(lengths))), "mean_length": float(lengths.mean()),
            "mean_fraction_of_max": float(lengths.mean() / max_tokens),
            "share_at_max": float((lengths >= max_tokens).mean())}


def targets(stats: dict, source: str) -> dict[str, bool]:
    """`{target: hit}` of one source's statistics against `TARGETS`."""
    hits = {"distinct_lengths": stats["distinct_lengths"] >= TARGETS["min_distinct_lengths"],
            "mean_fraction_of_max": stats["mean_fraction_of_max"] <= TARGETS["max_mean_fraction"],
            "share_at_max": stats["share_at_max"] <= TARGETS["max_share_at_max"]}
    if source == "renderer":
        hits["spearman_tokens_vs_objects"] = stats["spearman_tokens_vs_objects"] >= TARGETS["renderer_spearman_objects"]
    else:
        hits["spearman_tokens_vs_laplacian"] = stats["spearman_tokens_vs_laplacian"] >= TARGETS["spearman_laplacian"]
    return hits


@torch.no_grad()
def generalization(model: DoveModel, processor, count: int = 96, seed: int = 0, batch_size: int = 50) -> dict:
    """The report's `generalization` section: per held-out source its statistics, target hits, lengths,
    Laplacian variances and object counts (for the figures)."""
    sources, notes = heldout_images(processor, count, seed)
    max_tokens = model.config.max_tokens
    section: dict = {"max_tokens": max_tokens, "targets": TARGETS, "sources": {}, "notes": notes}
    device = next(model.parameters()).device
    for images in sources:
        lengths = np.concatenate([model.encode(images.pixels[rows].to(device)).lengths.cpu().numpy()
                                  for rows in batches(len(images.pixels), batch_size)])
        stats = length_statistics(lengths, images.laplacian, images.num_objects, max_tokens)
        section["sources"][images.source] = {
            **stats, "targets_hit": targets(stats, images.source), "lengths": lengths.astype(int).tolist(),
            "laplacian": images.laplacian.tolist(),
            "objects": None if images.num_objects is None else images.num_objects.astype(int).tolist()}
    return section
