"""Training data for the tokenizer: the embedded synthetic scenes (materialised once as uint8 for speed) or any
image source `dove_vlm.data.build_image_dataset` understands, plus a deterministic, resumable batch order."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dove_vlm.data import SyntheticScenes, build_image_dataset
from dove_vlm.image_processing_dove import DoveImageProcessor


class UInt8ImageDataset(Dataset):
    """Images kept as a `(N, 3, H, W)` uint8 tensor; items are `{"pixel_values": (3, H, W) in [-1, 1]}`."""

    def __init__(self, images: torch.Tensor):
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"expected a (N, 3, H, W) uint8 tensor, got {tuple(images.shape)} {images.dtype}.")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index].float() / 127.5 - 1.0}


def materialize_scenes(scenes: SyntheticScenes, desc: str = "generating scenes") -> torch.Tensor:
    """Render every scene once into a uint8 tensor (generation is cheap but not free at every step)."""
    images = [torch.from_numpy(np.array(scenes[i].image, dtype=np.uint8)).permute(2, 0, 1) for i in
              tqdm(range(len(scenes)), desc=desc, leave=False)]
    return torch.stack(images)


def build_training_dataset(spec: str, image_size: int, num_scenes: int, seed: int) -> Dataset:
    """`synthetic[:N]` → materialised synthetic scenes; anything else → `build_image_dataset` (folders,
    `datasets` folders, `hf:NAME[:SPLIT]`), resized to the model's `image_size`."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        count = int(spec.split(":", 1)[1]) if ":" in spec else num_scenes
        scenes = SyntheticScenes(count, image_size=image_size, seed=seed, split="train")
        return UInt8ImageDataset(materialize_scenes(scenes))
    dataset = build_image_dataset(spec, DoveImageProcessor(size=image_size), num_scenes=num_scenes, seed=seed)
    if len(dataset) == 0:
        raise ValueError(f"the training data {spec!r} holds no images.")
    return dataset


def cached_latents(model, dataset: Dataset, device: torch.device, batch_size: int = 256,
                   max_bytes: int = 2**30) -> torch.Tensor | None:
    """The frozen VQGAN's latents of every image of a materialised dataset, `(N, C, h, w)` float32 on the CPU, so
    training skips the encoder at every step (the tiny preset sees each image ~5 times); `None` when the VQGAN
    trains, the data are not materialised, or the latents would take more than `max_bytes`."""
    config = model.config
    size = len(dataset) * config.latent_channels * config.latent_size**2 * 4
    if not config.freeze_vqgan or not isinstance(dataset, UInt8ImageDataset) or size > max_bytes:
        return None
    latents = []
    with torch.no_grad(), model.batch_invariance(False):  # batched calls (training never took the per-image path)
        for start in tqdm(range(0, len(dataset), batch_size), desc="VQGAN latents", leave=False):
            images = get_batch(dataset, list(range(start, min(len(dataset), start + batch_size)))).to(device)
            latents.append(model.encode_latents(images).float().cpu())
    return torch.cat(latents)


def batch_indices(num_items: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Indices of the batch for `step` (and this process's shard): a pure function of (seed, step), so a
    resumed run sees exactly the batches the uninterrupted run would have seen."""
    global_batch = batch_size * world
    per_epoch = max(1, num_items // global_batch)
    epoch, slot = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    start = slot * global_batch + rank * batch_size
    picked = order[start : start + batch_size]
    if len(picked) < batch_size:  # fewer items than one batch: sample with replacement, still deterministic
        picked = np.random.default_rng([seed, epoch, slot, rank]).integers(0, num_items, batch_size)
    return picked.tolist()


def collate(items: list[dict]) -> torch.Tensor:
    return torch.stack([item["pixel_values"] for item in items])


def get_batch(dataset: Dataset, indices: list[int]) -> torch.Tensor:
    if isinstance(dataset, UInt8ImageDataset):
        return dataset.images[indices].float() / 127.5 - 1.0
    return collate([dataset[i] for i in indices])
