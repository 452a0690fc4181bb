"""The frozen tower's features of the training examples, computed once (the tower is frozen)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from dove_vlm.llava.vqa import record_query
from dove_vlm.vision_tower import DoveVisionTower


def tower_features(tower: DoveVisionTower, records: list[dict]) -> list[torch.Tensor]:
    """The frozen tower's `(L_i, D)` features of each record's image (with its question as the query when the
    tower takes one). Training needs no bit-exact batch invariance, so the batched VQGAN call runs (~2.5x faster
    on CPU than image by image)."""
    device = next(tower.parameters()).device
    pixels = tower.image_processor([r["image"] for r in records], return_tensors="pt")["pixel_values"].to(device)
    queries = [record_query(r) for r in records] if tower.supports_queries else None
    with torch.no_grad(), tower.dove.batch_invariance(False):
        return [f.detach() for f in tower(pixels, queries=queries).features]


class TowerFeatureCache:
    """The frozen tower's features of every training example, computed once: one `(L_i, D)` tensor per
    (image, query) pair. The tower is frozen and stays in eval mode, so these are the features it would give
    at every step (up to last-bit differences of the batched VQGAN call)."""

    def __init__(self, tower: DoveVisionTower, examples: list[list[dict]], batch_size: int = 64,
                 desc: str = "features"):
        self.use_queries = tower.supports_queries
        self._keys = [self.key(example) for example in examples]
        firsts: dict[tuple, dict] = {}
        for key, example in zip(self._keys, examples):
            firsts.setdefault(key, example[0])
        ordered = list(firsts)
        self._features: dict[tuple, torch.Tensor] = {}
        for start in tqdm(range(0, len(ordered), batch_size), desc=desc, leave=False, dynamic_ncols=True):
            keys = ordered[start : start + batch_size]
            features = tower_features(tower, [firsts[k] for k in keys])
            # A copy per feature: a slice would keep its whole padded batch tensor alive in the cache.
            self._features.update({k: f.to("cpu", torch.float32, copy=True) for k, f in zip(keys, features)})

    def key(self, example: list[dict]) -> tuple:
        return (id(example[0]["image"]), record_query(example[0]) if self.use_queries else None)

    def features(self, indices: list[int]) -> list[torch.Tensor]:
        return [self._features[self._keys[i]] for i in indices]

    def lengths(self) -> np.ndarray:
        return np.array([len(self._features[k]) for k in self._keys])


