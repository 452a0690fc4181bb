"""The pieces of `dove llava-train`'s loop: the DataLoader of training examples, the answer-token loss averaged
across processes, and the projector-only checkpoint of the align stage."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from train_tokenizer.data import batch_indices

from .conversations import load_record_image
from .data import IGNORE_INDEX


class ExampleDataset(Dataset):
    """Training examples by index; with `load_images`, each example's image file is decoded here (in the
    DataLoader's workers), otherwise the example is returned as it is (its features are cached)."""

    def __init__(self, examples: list[list[dict]], load_images: bool):
        self.examples, self.load_images = examples, load_images

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, list[dict]]:
        example = self.examples[index]
        if self.load_images and isinstance(example[0].get("image"), str):
            image = load_record_image(example[0])
            example = [dict(r, image=image) for r in example]
        return index, example


class StepBatchSampler(Sampler):
    """The batches of micro-steps `first` to `stop - 1` for one process: `batch_indices`, a pure function of
    (seed, micro-step, process), so a resumed run and an N-process run draw what the uninterrupted one-process
    run with N times the batch does."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int, world: int, first: int, stop: int):
        self.args = (num_items, batch_size, seed, rank, world)
        self.first, self.stop = first, stop

    def __iter__(self):
        num_items, batch_size, seed, rank, world = self.args
        for micro in range(self.first, self.stop):
            yield batch_indices(num_items, batch_size, micro, seed, rank, world)

    def __len__(self) -> int:
        return max(0, self.stop - self.first)


def example_loader(examples: list[list[dict]], batch_size: int, seed: int, rank: int, world: int, first: int,
                   stop: int, load_images: bool, num_workers: int = 0) -> DataLoader:
    """A torch DataLoader of `(index, example)` lists, one per micro-step from `first` to `stop`."""
    sampler = StepBatchSampler(len(examples), batch_size, seed, rank, world, first, stop)
    return DataLoader(ExampleDataset(examples, load_images), batch_sampler=sampler, collate_fn=list,
                      num_workers=num_workers, persistent_workers=False)


def answer_loss(model, batch: dict, image_features, accelerator) -> torch.Tensor:
    """Cross-entropy over the labelled (answer) tokens, summed and divided by the labelled tokens of this micro-step
    on every process (times the process count, as DDP averages gradients), so that N processes give the gradient
    of one process on their union. Only the positions that predict a label go through the LM head."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    positions = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, mm_encoder_outputs={"image": image_features} if image_features is not None else None,
                logits_to_keep=positions)
    kept = targets[:, positions]
    total = F.cross_entropy(out.logits.float().flatten(0, 1), kept.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    count = (kept != IGNORE_INDEX).sum().to(torch.float32)
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count.to(accelerator.device), reduction="sum")
    return total * accelerator.num_processes / count.clamp(min=1.0)


class ProjectorCheckpoint:
    """What an align-stage checkpoint saves as its `model`: the projector alone (`model.safetensors`, plus a
    `config.json` naming it), not a copy of the frozen language model."""

    def __init__(self, projector: torch.nn.Module):
        self.projector = projector

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()}
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps({"dove_llava_checkpoint": "projector"}))
