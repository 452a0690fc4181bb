"""Training data for the tokenizer: what `--data` names, a held-out split of it, and the batch order.

- `synthetic[:N]`: the embedded scenes (or, with `data_mix="wide"`, the mix of `dove_vlm.data.mix`: scenes of every
  background and palette, photo crops, augmentation; each image's source is kept), materialised once as uint8 (the final evaluation uses the scenes' own
  `test` split); image folders and `datasets` folders: decoded in DataLoader workers, with a seeded share held
  out for the final evaluation; `hf:NAME[:SPLIT]`: streamed (see `streaming.py`).
- The batch of a step is a pure function of (seed, step): the GLOBAL batch (all processes together) is the same
  whatever the number of processes, and each process loads its own slice, so 2 processes × batch b see exactly
  the images of 1 process × batch 2b, and a resumed run sees what the uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from dove_vlm.data import SyntheticScenes, build_image_dataset
from dove_vlm.data.mix import TrainingMix
from dove_vlm.data.datasets import to_pixel_values, to_uint8  # noqa: F401  (re-exported)
from dove_vlm.image_processing_dove import DoveImageProcessor



class UInt8ImageDataset(Dataset):
    """Images kept as a `(N, 3, H, W)` uint8 tensor; items are `{"pixel_values": (3, H, W) in [-1, 1]}`.
    `source_ids`: optional `(N,)` long, the data source of each image (see `dove_vlm.data.mix.SOURCES`)."""

    def __init__(self, images: torch.Tensor, source_ids: torch.Tensor | None = None):
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"expected a (N, 3, H, W) uint8 tensor, got {tuple(images.shape)} {images.dtype}.")
        if source_ids is not None and source_ids.shape != images.shape[:1]:
            raise ValueError(f"expected one source per image, got {tuple(source_ids.shape)} for {len(images)} images.")
        self.images, self.source_ids = images, source_ids

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index].float() / 127.5 - 1.0}


def _chw_uint8(image) -> torch.Tensor:
    """A PIL image as a `(3, H, W)` uint8 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def materialize_scenes(scenes: SyntheticScenes, desc: str = "generating scenes") -> torch.Tensor:
    """Render every scene once into a uint8 tensor (generation is cheap but not free at every step)."""
    return torch.stack([_chw_uint8(scenes[i].image) for i in tqdm(range(len(scenes)), desc=desc, leave=False)])


def materialize_mix(mix: TrainingMix, desc: str = "generating the training mix") -> UInt8ImageDataset:
    """Every image of the mix once, as a `UInt8ImageDataset` that keeps each image's source."""
    images, sources = [], []
    for i in tqdm(range(len(mix)), desc=desc, leave=False):
        image, source = mix[i]
        images.append(_chw_uint8(image))
        sources.append(source)
    return UInt8ImageDataset(torch.stack(images), torch.tensor(sources, dtype=torch.long))


def is_synthetic(spec: str) -> bool:
    return spec == "synthetic" or spec.startswith("synthetic:")


def build_training_dataset(spec: str, image_size: int, num_scenes: int, seed: int, mix: str = "scenes") -> Dataset:
    """`synthetic[:N]` → materialised synthetic scenes (`mix="wide"`: the training mix); anything else →
    `build_image_dataset` (folders, `datasets` folders), resized to the model's `image_size`; images are decoded
    when an item is read."""
    if is_synthetic(spec):
        count = int(spec.split(":", 1)[1]) if ":" in spec else num_scenes
        if mix == "wide":
            return materialize_mix(TrainingMix(count, image_size, seed))
        scenes = SyntheticScenes(count, image_size=image_size, seed=seed, split="train")
        return UInt8ImageDataset(materialize_scenes(scenes))
    dataset = build_image_dataset(spec, DoveImageProcessor(size=image_size), num_scenes=num_scenes, seed=seed)
    if len(dataset) == 0:
        raise ValueError(f"the training data {spec!r} holds no images.")
    return dataset


def held_out_split(dataset: Dataset, eval_images: int, seed: int) -> tuple[Dataset, Dataset | None]:
    """`(training part, held-out part)`: a seeded `min(eval_images, len // 5)` images held out for the final
    evaluation (never trained on); `None` when that is 0."""
    count = min(eval_images, len(dataset) // 5)
    if count <= 0:
        return dataset, None
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(dataset))
    return Subset(dataset, np.sort(order[count:]).tolist()), Subset(dataset, np.sort(order[:count]).tolist())


def batch_indices(num_items: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Indices of process `rank`'s slice (of `batch_size`) of the global batch (`batch_size * world`) of `step`:
    a pure function of (seed, step), so a resumed run sees exactly the batches of the uninterrupted run, and
    the global batch is the same for any number of processes."""
    global_batch = batch_size * world
    per_epoch = max(1, num_items // global_batch)
    epoch, slot = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    picked = order[slot * global_batch : (slot + 1) * global_batch]
    if len(picked) < global_batch:  # fewer items than one batch: sample with replacement, still deterministic
        picked = np.random.default_rng([seed, epoch, slot, 0]).integers(0, num_items, global_batch)
    return picked[rank * batch_size : (rank + 1) * batch_size].tolist()


class StepBatchSampler(Sampler[list[int]]):
    """`batch_indices` of steps `start_step, start_step + 1, ...` (up to `stop_step`, or without end): the
    DataLoader's batch sampler; resumable (start anywhere) and sharded (each process its own slice)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0, stop_step: int | None = None,
                 rank: int = 0, world: int = 1):
        if num_items < 1:
            raise ValueError("cannot sample batches from an empty data set.")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.stop_step, self.rank, self.world = start_step, stop_step, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        steps = itertools.count(self.start_step) if self.stop_step is None else range(self.start_step, self.stop_step)
        for step in steps:
            yield batch_indices(self.num_items, self.batch_size, step, self.seed, self.rank, self.world)

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("an endless StepBatchSampler has no length.")
        return max(0, self.stop_step - self.start_step)


class IndexedDataset(Dataset):
    """Items of `dataset` as 8-bit pixels with their index (`{"pixels" (3, H, W) uint8, "index"}`): a quarter of
    the bytes of float pixels between the loader's workers and the training process, and lossless (the images
    are 8-bit, and `to_pixel_values` gives back the processor's exact values)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        dataset, inner = self.dataset, index
        while isinstance(dataset, Subset):  # a held-out split: the underlying data set's own fast path
            dataset, inner = dataset.dataset, dataset.indices[inner]
        if isinstance(dataset, UInt8ImageDataset):
            return {"pixels": dataset.images[inner], "index": index}
        if hasattr(dataset, "uint8_item"):
            return {"pixels": dataset.uint8_item(inner), "index": index}
        return {"pixels": to_uint8(dataset[inner]["pixel_values"]), "index": index}


def collate_indexed(items: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixels": torch.stack([item["pixels"] for item in items]),
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long)}


def batch_loader(dataset: Dataset, batch_size: int, seed: int, start_step: int = 0, stop_step: int | None = None,
                 rank: int = 0, world: int = 1, num_workers: int = 0) -> DataLoader:
    """A DataLoader of `{"pixels" (b, 3, H, W) uint8, "index" (b,)}` batches in `StepBatchSampler` order; with
    `num_workers`, images are read and decoded in worker processes (the order does not change)."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, stop_step, rank, world)
    return DataLoader(
        IndexedDataset(dataset), batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_indexed,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        generator=torch.Generator().manual_seed(seed),  # the loader never draws from the global RNG
    )


def load_images(dataset: Dataset, indices: list[int], num_workers: int = 0, batch_size: int = 64) -> torch.Tensor:
    """The pixel values of `dataset[indices]` as one tensor (decoded in `num_workers` workers)."""
    if isinstance(dataset, UInt8ImageDataset):
        return get_batch(dataset, indices)
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    loader = DataLoader(IndexedDataset(dataset), batch_sampler=chunks, num_workers=num_workers,
                        collate_fn=collate_indexed, generator=torch.Generator())
    return to_pixel_values(torch.cat([batch["pixels"] for batch in loader]))


@dataclass
class TrainingData:
    """What `dove train` reads: map-style training images (`images`) or a stream (`stream`, for `hf:`), and the
    held-out images of the final evaluation (`held_out`; `None` for the synthetic scenes, which use their own
    `test` split)."""

    spec: str
    images: Dataset | None = None
    stream: object | None = None  # a `streaming.ImageStream`
    held_out: Dataset | None = None

    @property
    def synthetic(self) -> bool:
        return is_synthetic(self.spec)

    @property
    def sources(self) -> torch.Tensor | None:
        """`(N,)` the data source of each training image, when the data keep it (the `wide` mix)."""
        return getattr(self.images, "source_ids", None)

    def __len__(self) -> int:
        if self.images is None:
            raise TypeError(f"the streamed data {self.spec!r} has no length.")
        return len(self.images)

    def loader(self, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1,
               num_workers: int = 0, stream_state: dict | None = None):
        """An endless iterator of this process's batches from `start_step` on (see `batch_loader`; streams:
        `streaming.ImageStream.loader`)."""
        if self.stream is not None:
            return self.stream.loader(batch_size, seed, rank, world, num_workers, stream_state)
        return batch_loader(self.images, batch_size, seed, start_step, None, rank, world, num_workers)

    def sample(self, count: int, seed: int, num_workers: int = 0) -> torch.Tensor:
        """Up to `count` training images (the VQGAN latent statistics are measured on them)."""
        if self.stream is not None:
            return self.stream.first_images(count)
        return load_images(self.images, batch_indices(len(self.images), min(len(self.images), count), 0, seed),
                           num_workers)


def build_training_data(spec: str, image_size: int, num_scenes: int, seed: int, eval_images: int,
                        mix: str = "scenes") -> TrainingData:
    """`TrainingData` for `--data spec`: the synthetic scenes, a folder (or `datasets` folder) with a held-out
    split of up to `eval_images`, or an `hf:NAME[:SPLIT]` stream whose first `eval_images` rows are held out."""
    if spec.startswith("hf:"):
        from .streaming import ImageStream

        stream = ImageStream.open(spec, DoveImageProcessor(size=image_size), held_out=eval_images)
        return TrainingData(spec, stream=stream, held_out=stream.held_out_images())
    dataset = build_training_dataset(spec, image_size, num_scenes, seed, mix)
    if is_synthetic(spec):
        return TrainingData(spec, images=dataset)
    train, held_out = held_out_split(dataset, eval_images, seed)
    return TrainingData(spec, images=train, held_out=held_out)


def cached_latents(model, dataset: Dataset, device: torch.device, batch_size: int = 256,
                   max_bytes: int = 2**30) -> torch.Tensor | None:
    """The frozen VQGAN's latents of every image of a materialised dataset, `(N, C, h, w)` float32 on the CPU, so
    training skips the encoder at every step (the tiny preset sees each image ~5 times); `None` when the VQGAN
    trains, the data are not materialised, or the latents would take more than `max_bytes`."""
    config = model.config
    if not config.freeze_vqgan or not isinstance(dataset, UInt8ImageDataset):
        return None
    if len(dataset) * config.latent_channels * config.latent_size**2 * 4 > max_bytes:
        return None
    latents = []
    with torch.no_grad(), model.batch_invariance(False):  # batched calls (training never took the per-image path)
        for start in tqdm(range(0, len(dataset), batch_size), desc="VQGAN latents", leave=False):
            images = get_batch(dataset, list(range(start, min(len(dataset), start + batch_size)))).to(device)
            latents.append(model.encode_latents(images).float().cpu())
    return torch.cat(latents)


def collate(items: list[dict]) -> torch.Tensor:
    return torch.stack([item["pixel_values"] for item in items])


def get_batch(dataset: Dataset, indices: list[int]) -> torch.Tensor:
    if isinstance(dataset, UInt8ImageDataset):
        return dataset.images[indices].float() / 127.5 - 1.0
    return collate([dataset[i] for i in indices])
