"""The random draws of a training step (forced lengths, null queries, queries, full-length query rows) and the
batch that carries them.

Every draw is made for the GLOBAL batch from generators seeded by (seed, step), and each process keeps its slice:
the draws are a function of (seed, step, position in the global batch), so 2 processes × batch b draw exactly
what 1 process × batch 2b does, and a resumed run draws what the uninterrupted one did."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import batch_indices, to_pixel_values


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of one training step's random draws (`stream` keeps independent draws apart): a pure
    function of (seed, step), so a resumed run draws what the uninterrupted one did."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + stream)


def sample_truncation(batch: int, max_tokens: int, prob: float, seed: int, step: int) -> torch.Tensor:
    """Per-sample forced lengths: a random k in [1, n] with probability `prob`, else 0 (= adaptive length).
    Seeded by (seed, step) so a resumed run draws the same lengths."""
    gen = step_generator(seed, step)
    forced = torch.randint(1, max_tokens + 1, (batch,), generator=gen)
    return torch.where(torch.rand(batch, generator=gen) < prob, forced, torch.zeros_like(forced))


def sample_full_length(queried: torch.Tensor, prob: float, seed: int, step: int) -> torch.Tensor:
    """`(B,)` bool: the queried samples decoded from every slot toward the whole image (`query_full_prob`),
    seeded by (seed, step) so a resumed run draws the same rows."""
    if prob <= 0:
        return torch.zeros_like(queried)
    gen = step_generator(seed, step, stream=7_919)
    return queried & (torch.rand(queried.shape[0], generator=gen) < prob).to(queried.device)


@dataclass
class StepBatch:
    """One process's slice of a step's global batch, with its draws."""

    images: torch.Tensor  # (b, 3, H, W) in [-1, 1]
    forced: torch.Tensor  # (b,) forced length, 0 = the adaptive length
    queries: list | None = None  # Q-DOVE: the text query of each row (None: the null query)
    boxes: list | None = None  # Q-DOVE: each row's (K, 4) pixel boxes, None for a whole-image target
    full: torch.Tensor | None = None  # (b,) queried rows decoded from every slot toward the whole image
    latents: torch.Tensor | None = None  # the frozen VQGAN's cached latents of the images
    sources: torch.Tensor | None = None  # (b,) each image's data source, when the data keep it

    @property
    def queried(self) -> torch.Tensor:
        rows = [b is not None for b in self.boxes] if self.boxes is not None else [False] * len(self.forced)
        return torch.tensor(rows, device=self.images.device)

    @property
    def adaptive(self) -> torch.Tensor:
        return self.forced == 0

    @property
    def in_box(self) -> torch.Tensor:
        """Queried rows whose loss is the in-box loss (not decoded toward the whole image)."""
        return self.queried & ~self.full if self.full is not None else self.queried

    @property
    def whole(self) -> torch.Tensor:
        """Rows whose target is the whole image."""
        return ~self.in_box

    @property
    def loss_boxes(self) -> list:
        boxes = self.boxes if self.boxes is not None else [None] * len(self.forced)
        full = self.full.tolist() if self.full is not None else [False] * len(boxes)
        return [None if f else b for f, b in zip(full, boxes)]


def draw_step(batch: dict, step: int, seed: int, max_tokens: int, truncation_prob: float, grounding=None,
              null_prob: float = 0.0, full_prob: float = 0.0, rank: int = 0, world: int = 1,
              latents: torch.Tensor | None = None, device: torch.device | str = "cpu",
              sources: torch.Tensor | None = None) -> StepBatch:
    """The `StepBatch` of process `rank` for a loader batch (`{"pixels" uint8, "index"?}`) at (micro) `step`;
    its images are in [-1, 1] on `device`; `latents` / `sources`: per training image, picked by the batch's index."""
    images = to_pixel_values(batch["pixels"].to(device))
    size = images.shape[0]
    mine = slice(rank * size, (rank + 1) * size)
    forced = sample_truncation(size * world, max_tokens, truncation_prob, seed, step)[mine].to(images.device)
    indices = batch.get("index")
    cached = None if latents is None or indices is None else latents[indices.tolist()].to(images.device)
    origin = None if sources is None or indices is None else sources[indices.tolist()].to(images.device)
    if grounding is None:
        return StepBatch(images, forced, latents=cached, sources=origin)
    everyone = batch_indices(len(grounding), size * world, step, seed)  # the global batch, every process's rows
    if everyone[mine] != indices.tolist():
        raise RuntimeError(f"process {rank}'s batch at step {step} is not its slice of the global batch.")
    queries, boxes = grounding.sample_queries(everyone, null_prob, seed, step)
    queried = torch.tensor([b is not None for b in boxes])
    full = sample_full_length(queried, full_prob, seed, step)[mine].to(images.device)
    forced = torch.where(full, torch.full_like(forced, max_tokens), forced)
    return StepBatch(images, forced, queries[mine], boxes[mine], full, cached)
