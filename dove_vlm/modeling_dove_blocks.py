"""DOVE's building blocks: output dataclasses, the length rule (EOS probabilities → lengths), timestep
embeddings, the early-exit chunk schedule and the bidirectional token decoder. `modeling_dove` composes them."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache
from transformers.utils import ModelOutput

from .configuration_dove import DoveConfig


@dataclass
class DoveEncoderOutput(ModelOutput):
    """Output of [`DoveModel.encode`].

    Args:
        tokens (`(B, L, k)`): continuous tokens, zero after each image's length (L = longest length in the batch).
        lengths (`(B,)` long): number of kept tokens per image, in [min_tokens, max_tokens].
        attention_mask (`(B, L)` long): 1 for kept tokens, 0 after the end of sequence.
        p_eos (`(B, s)`): end-of-sequence probability at every computed timestep slot (s = n, or fewer with
            early exit).
        latents (`(B, C, h, w)`): the VQGAN's continuous (pre-quantization) latents of the input.
        hidden_states (`(B, L, d)`, *optional*): the generator's hidden states at the kept timestep slots (the
            input of the token head), zero after each image's length; only with `output_hidden_states=True`.
    """

    tokens: torch.FloatTensor | None = None
    lengths: torch.LongTensor | None = None
    attention_mask: torch.LongTensor | None = None
    p_eos: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    hidden_states: torch.FloatTensor | None = None


@dataclass
class DoveDecoderOutput(ModelOutput):
    """Output of [`DoveModel.decode`].

    Args:
        pixel_values (`(B, 3, H, W)`): reconstruction in the input range [-1, 1].
        latents (`(B, C, h, w)`): the latent grid predicted by the token decoder.
    """

    pixel_values: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


@dataclass
class DoveModelOutput(ModelOutput):
    """Output of [`DoveModel.forward`]: the encoder fields plus the (unclamped) reconstruction."""

    reconstruction: torch.FloatTensor | None = None
    tokens: torch.FloatTensor | None = None
    lengths: torch.LongTensor | None = None
    attention_mask: torch.LongTensor | None = None
    p_eos: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    predicted_latents: torch.FloatTensor | None = None


@dataclass
class DovePrefix:
    """The generator's KV cache over the visual prefix H_v of a batch of images ([`DoveModel.encode_prefix`]),
    reused by [`DoveModel.encode`] for any number of queries without re-running the VQGAN or H_v."""

    latents: torch.Tensor
    cache: DynamicCache

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    def expand(self, copies: int) -> DovePrefix:
        """A fresh cache (the generator appends to it) with each image repeated `copies` times."""
        cache = copy.deepcopy(self.cache)
        if copies > 1:
            cache.batch_repeat_interleave(copies)
        return DovePrefix(self.latents.repeat_interleave(copies, dim=0), cache)


def sinusoidal_embeddings(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed transformer sinusoids for positions 1..num_positions, shape `(num_positions, dim)`."""
    positions = torch.arange(1, num_positions + 1, dtype=torch.float32)[:, None]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(positions * freqs)
    table[:, 1::2] = torch.cos(positions * freqs[: dim // 2])
    return table


def high_pass(images: torch.Tensor) -> torch.Tensor:
    """`images` minus their box blur (a square of 2 · (size // 32) + 1 pixels: 3 at 32 px, 5 at 64 px): the edges
    and texture, without the low frequencies that palette and background dominate."""
    images = images.float()
    radius = max(1, images.shape[-1] // 32)
    return images - F.avg_pool2d(images, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def pixel_detail_map(pixel_values: torch.Tensor, grid: int) -> torch.Tensor:
    """`(B, 1, grid, grid)`: per latent cell, the log mean squared high-pass part of the grey image (grey, so
    colour and palette do not enter), shifted and scaled to roughly [-1.5, 1.5] (flat ≈ -1.4, dense texture ≈ 1)."""
    energy = F.adaptive_avg_pool2d(high_pass(pixel_values.float().mean(1, keepdim=True)).pow(2), grid)
    return (torch.log(energy + 1e-4) + 5.0) / 3.0


def lengths_from_p_eos(
    p_eos: torch.Tensor, threshold: float, min_tokens: int | torch.Tensor = 1,
    max_tokens: int | torch.Tensor | None = None,
) -> torch.LongTensor:
    """Length m = first (1-based) position with p_eos > threshold, clamped to [min_tokens, max_tokens].

    Args:
        p_eos (`(B, n)`): end-of-sequence probabilities.
        min_tokens / max_tokens: one limit for every row, or `(B,)` per-row limits.
    Returns:
        `(B,)` long tensor; n (or max_tokens) when no position crosses the threshold.
    """
    n = p_eos.shape[1]
    above = p_eos > threshold
    first = torch.where(above.any(dim=1), above.float().argmax(dim=1) + 1, torch.full_like(above[:, 0], n, dtype=torch.long))
    low = torch.as_tensor(min_tokens, device=first.device)
    high = torch.as_tensor(n if max_tokens is None else max_tokens, device=first.device).clamp(max=n)
    return torch.minimum(torch.maximum(first, low), high).long()


def chunk_schedule(num_slots: int, chunk_size: int | None) -> list[int]:
    """Sizes of the early-exit chunks over `num_slots` timestep slots.

    A fixed `chunk_size` gives equal chunks. `None` (auto) starts with a quarter of the slots and doubles: every
    chunk is one generator call that reads all of its weights, so few, growing calls cost less than many small
    ones, and an image that ends within the first quarter needs a single call."""
    sizes, size, done = [], max(1, num_slots // 4) if chunk_size is None else max(1, int(chunk_size)), 0
    while done < num_slots:
        sizes.append(min(size, num_slots - done))
        done += sizes[-1]
        if chunk_size is None:
            size *= 2
    return sizes


def length_mask(lengths: torch.Tensor, width: int) -> torch.LongTensor:
    """`(B, width)` mask with ones on the first `lengths[b]` positions."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()


def _query_length_groups(query_mask: torch.Tensor | None) -> list[torch.Tensor] | None:
    """Row indices grouped by query length (in tokens), or `None` when every row has the same length."""
    if query_mask is None:
        return None
    lengths = query_mask.sum(1)
    if bool((lengths == lengths[0]).all()):
        return None
    return [(lengths == value).nonzero().squeeze(1) for value in lengths.unique().tolist()]


def _merge_encoder_outputs(parts: list[DoveEncoderOutput], groups: list[torch.Tensor]) -> DoveEncoderOutput:
    """Put the outputs of `encode` on row groups back into one batch, in the original row order; slots that a
    group did not compute (early exit) read p_eos = 1, tokens beyond a row's length are zero."""
    order = torch.cat(groups).argsort()

    def stack(name: str, fill: float = 0.0):
        values = [getattr(part, name) for part in parts]
        if values[0] is None:
            return None
        if values[0].ndim > 1:
            width = max(v.shape[1] for v in values)
            values = [torch.nn.functional.pad(v, (0, 0) * (v.ndim - 2) + (0, width - v.shape[1]), value=fill)
                      for v in values]
        return torch.cat(values)[order]

    return DoveEncoderOutput(tokens=stack("tokens"), lengths=stack("lengths"), attention_mask=stack("attention_mask"),
                             p_eos=stack("p_eos", 1.0), latents=stack("latents"), hidden_states=stack("hidden_states"))



class DoveTokenDecoder(nn.Module):
    """Bidirectional transformer over `[tokens ; P learned grid queries]`; the grid outputs become latents.

    Written with `nn.TransformerEncoder` because transformers has no small bidirectional stack that takes
    embeddings plus a key-padding mask without adding its own token/position embeddings.
    """

    def __init__(self, config: DoveConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.token_in = nn.Linear(config.token_dim, width)
        self.token_positions = nn.Parameter(torch.zeros(config.max_tokens, width))
        self.grid_queries = nn.Parameter(torch.zeros(config.num_latent_positions, width))
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=config.decoder_num_attention_heads,
            dim_feedforward=config.decoder_intermediate_size,
            dropout=0.0,
            activation="gelu",
            layer_norm_eps=config.layer_norm_eps,
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(
            layer, num_layers=config.decoder_num_hidden_layers, enable_nested_tensor=False
        )
        self.final_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.latent_out = nn.Linear(width, config.latent_channels)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """tokens `(B, L, k)`, attention_mask `(B, L)` → latent sequence `(B, P, C)`."""
        batch, length, _ = tokens.shape
        tokens_h = self.token_in(tokens) + self.token_positions[:length]
        grid = self.grid_queries.unsqueeze(0).expand(batch, -1, -1)
        hidden = torch.cat([tokens_h, grid], dim=1)
        padding = torch.cat(
            [attention_mask == 0, torch.zeros(batch, grid.shape[1], dtype=torch.bool, device=tokens.device)], dim=1
        )
        hidden = self.layers(hidden, src_key_padding_mask=padding)
        return self.latent_out(self.final_norm(hidden[:, length:]))


