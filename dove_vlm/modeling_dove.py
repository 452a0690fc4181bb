"""DOVE / Q-DOVE: a VQGAN wrapped by a causal token generator with an EOS head and a bidirectional token decoder.

Shapes used below: B batch, C latent channels, h×w latent grid (P = h·w positions), n = max_tokens timestep slots,
d generator width, k token width (`config.token_dim`).
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from typing import Callable

import torch
from diffusers import VQModel
from torch import nn
from transformers import DynamicCache, GPTNeoXConfig, GPTNeoXModel, PreTrainedModel

from .checkpoints import check_checkpoint_dir, looks_local, quiet_loading, weights_problem
from .configuration_dove import DoveConfig
from .modeling_dove_blocks import (  # noqa: F401  (re-exported: the public names live here too)
    DoveDecoderOutput,
    DoveEncoderOutput,
    DoveModelOutput,
    DovePrefix,
    DoveTokenDecoder,
    _merge_encoder_outputs,
    _query_length_groups,
    chunk_schedule,
    length_mask,
    lengths_from_p_eos,
    pixel_detail_map,
    sinusoidal_embeddings,
)
from .query_tokenizer import QUERY_TOKENIZER_DIR, load_saved_query_tokenizer
from .vqgan import decode_continuous


class DovePreTrainedModel(PreTrainedModel):
    config_class = DoveConfig
    base_model_prefix = "dove"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` with clear errors: a missing folder, config or weights file, a
        truncated/tampered safetensors file, or weights that do not fit the config name the checkpoint."""
        source = str(pretrained_model_name_or_path)
        if looks_local(source):
            check_checkpoint_dir(source)
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("use_safetensors", True)  # never unpickle a `pytorch_model.bin` someone handed over
        try:
            with quiet_loading():  # mismatches are raised below as one error, not a per-key report
                model, info = super().from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
        except (OSError, RuntimeError, ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot load the DOVE checkpoint {source!r}: {weights_problem(source) or err}") from err
        except Exception as err:  # safetensors raises its own SafetensorError for corrupt files
            if type(err).__name__ != "SafetensorError":
                raise
            weights = os.path.join(source, "model.safetensors") if os.path.isdir(source) else source
            raise ValueError(f"the weights file {weights!r} is corrupt, truncated or tampered with ({err}); re-save or "
                             "re-download the checkpoint.") from err
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            raise ValueError(f"the weights in {source!r} do not match its config ({ {k: list(v)[:3] for k, v in bad.items()} }).")
        broken = next((name for name, value in model.state_dict().items()
                       if value.is_floating_point() and not torch.isfinite(value).all()), None)
        if broken is not None:
            raise ValueError(f"the weights in {source!r} hold NaN or Inf (first: {broken}); the file is corrupt or was "
                             "saved from a diverged run — use an earlier checkpoint.")
        if getattr(model.config, "freeze_vqgan", False):
            model.vqgan.requires_grad_(False)  # loading re-creates parameters (requires_grad=True)
        if getattr(model, "supports_queries", False):
            tokenizer = load_saved_query_tokenizer(source, **kwargs)
            if tokenizer is not None:
                model.set_query_tokenizer(tokenizer)
        return (model, info) if want_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, DoveTokenDecoder):
            module.token_positions.normal_(0.0, std)
            module.grid_queries.normal_(0.0, std)
        elif isinstance(module, DoveModel):
            module.grid_positions.normal_(0.0, std)
            # Start with p_eos ≈ 0.02 everywhere, i.e. at full length; the EOS loss then pulls the end earlier.
            module.eos_head.bias.fill_(-4.0)


class DoveModel(DovePreTrainedModel):
    """The DOVE tokenizer. `encode` maps images to a variable number of continuous tokens in one parallel
    pass of a causal transformer; `decode` maps tokens back to pixels; `forward` does both (for training).
    """

    def __init__(self, config: DoveConfig):
        super().__init__(config)
        self.vqgan = VQModel(**config.vqgan_config)
        d = config.hidden_size
        self.latent_in = nn.Linear(config.latent_channels, d)
        self.detail_in = nn.Linear(1, d) if config.pixel_detail else None  # see DoveConfig.pixel_detail
        self.grid_positions = nn.Parameter(torch.zeros(config.num_latent_positions, d))
        self.timestep_in = nn.Linear(d, d)
        self.generator = GPTNeoXModel(self._generator_config(config))
        self.token_head = nn.Linear(d, config.token_dim)
        self.eos_head = nn.Linear(d, 1)
        self.token_decoder = DoveTokenDecoder(config)
        # Q-DOVE: text query embeddings (the tokenizer itself is saved beside the weights, `query_tokenizer/`).
        self.query_embed = nn.Embedding(config.query_vocab_size, d) if config.query_vocab_size else None
        self.query_tokenizer = None
        self.post_init()
        if config.freeze_vqgan:
            self.vqgan.requires_grad_(False)

    @staticmethod
    def _generator_config(config: DoveConfig) -> GPTNeoXConfig:
        # vocab_size=1: the generator only sees embeddings, so Pythia's 50k-row vocabulary table is dropped.
        return GPTNeoXConfig(
            vocab_size=1,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            rotary_pct=config.rotary_pct,
            max_position_embeddings=config.num_latent_positions + config.query_max_length + config.max_tokens,
            layer_norm_eps=config.layer_norm_eps,
            initializer_range=config.initializer_range,
            attention_dropout=0.0,
            hidden_dropout=0.0,
            use_cache=False,
            bos_token_id=None,
            eos_token_id=None,
        )

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_vqgan:
            self.vqgan.eval()  # a frozen VQGAN keeps its eval behaviour (no dropout, fixed norms)
        return self

    @contextmanager
    def batch_invariance(self, enabled: bool):
        """Within the block, `config.batch_invariant` is `enabled` (restored after, even on error): e.g. off while
        caching training features, where the batched VQGAN call is faster and last bits do not matter."""
        previous = self.config.batch_invariant
        self.config.batch_invariant = enabled
        try:
            yield self
        finally:
            self.config.batch_invariant = previous

    # Pieces ---------------------------------------------------------------------------------------------
    def encode_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """VQGAN encoder: pixels `(B, 3, H, W)` in [-1, 1] → continuous latents `(B, C, h, w)`.

        Floating pixels of another dtype are cast to the VQGAN's. With `config.batch_invariant` (the default), in
        eval mode on CPU the images go through the encoder one at a time: oneDNN picks its convolution algorithm
        by batch size, so a batched call can differ from single images in the last bits; per image, an image's
        tokens never depend on its batch (training keeps the faster batched call)."""
        pixel_values = self._check_pixels(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vqgan):
            batched = self.training or not getattr(self.config, "batch_invariant", True)
            if batched or pixel_values.device.type != "cpu" or pixel_values.shape[0] == 1:
                return self.vqgan.encode(pixel_values).latents
            return torch.cat([self.vqgan.encode(image[None]).latents for image in pixel_values])

    def latents_to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """VQGAN decoder on continuous latents (the codebook is skipped for any VQGAN config), unclamped."""
        return decode_continuous(self.vqgan, latents)

    def _latent_statistics(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # From the config on each call (C numbers): buffers would not survive meta-device loading.
        channels = self.config.latent_channels
        mean = self.config.latent_mean or [0.0] * channels
        std = self.config.latent_std or [1.0] * channels
        to = dict(dtype=reference.dtype, device=reference.device)
        return torch.tensor(mean, **to).view(1, -1, 1, 1), torch.tensor(std, **to).view(1, -1, 1, 1)

    @torch.no_grad()
    def set_latent_statistics(self, pixel_values: torch.Tensor, batch_size: int = 64) -> None:
        """Measure per-channel mean/std of the VQGAN latents of `pixel_values` and store them in the config,
        so the generator and decoder work on unit-scale latents whatever the VQGAN's own scale."""
        latents = torch.cat([self.encode_latents(pixel_values[i : i + batch_size]).float()
                             for i in range(0, len(pixel_values), batch_size)])
        self.config.latent_mean = latents.mean((0, 2, 3)).tolist()
        self.config.latent_std = latents.std((0, 2, 3)).clamp_min(1e-6).tolist()

    def latent_loss(self, predicted: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """MSE between predicted and true latents in normalised (unit-scale) units; `mask` `(B, 1, h, w)`
        restricts it to some latent cells (Q-DOVE: the queried boxes)."""
        _, std = self._latent_statistics(latents)
        error = ((predicted.float() - latents.float()) / std.float()).pow(2)
        if mask is None:
            return error.mean()
        mask = mask.to(error).expand_as(error)
        return (error * mask).sum() / mask.sum().clamp(min=1)

    def _visual_prefix(self, latents: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        """H_v: `(B, P, d)` from latents `(B, C, h, w)` (normalised per channel first) and, with
        `config.pixel_detail`, the pixel detail map `(B, 1, h, w)` of `pixel_detail`."""
        mean, std = self._latent_statistics(latents)
        prefix = self.latent_in(((latents - mean) / std).flatten(2).transpose(1, 2)) + self.grid_positions
        if self.detail_in is not None:
            if detail is None:
                raise ValueError("this DOVE model conditions on pixel detail (config.pixel_detail); pass pixel_values "
                                 "(with latents=... to skip the VQGAN encoder), not latents alone.")
            prefix = prefix + self.detail_in(detail.flatten(2).transpose(1, 2).to(prefix.dtype))
        return prefix

    def pixel_detail(self, pixel_values: torch.Tensor | None) -> torch.Tensor | None:
        """The pixel detail map `(B, 1, h, w)` that H_v carries with `config.pixel_detail` (else, or without
        pixels, None)."""
        if self.detail_in is None or pixel_values is None:
            return None
        return pixel_detail_map(self._check_pixels(pixel_values), self.config.latent_size)

    def _timesteps(self, batch: int, num_slots: int) -> torch.Tensor:
        # Recomputed per call (n×d, negligible): a non-persistent buffer would not survive meta-device loading.
        table = sinusoidal_embeddings(num_slots, self.config.hidden_size).to(self.timestep_in.weight)
        return self.timestep_in(table).unsqueeze(0).expand(batch, -1, -1)

    def _check_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Checked pixels, cast to the VQGAN's dtype (a clear error for anything the VQGAN cannot take)."""
        size = self.config.image_size
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}; use "
                            "DoveImageProcessor to turn images into pixel_values.")
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values must be floating point in [-1, 1], got dtype {pixel_values.dtype}; "
                            "use DoveImageProcessor to turn 8-bit images into pixel_values.")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, {size}, {size}); got "
                f"{tuple(pixel_values.shape)}. Use DoveImageProcessor to turn images into pixel_values."
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values hold no images (batch size 0).")
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])} pixels but this model takes {size}x{size}; "
                "resize them first (DoveImageProcessor does this with do_resize=True)."
            )
        pixel_values = pixel_values.to(self.vqgan.dtype)
        if not torch.isfinite(pixel_values).all():
            raise ValueError(f"pixel_values contain NaN or Inf (in {self.vqgan.dtype}); check the image "
                             "loading/normalisation — pixel values belong in [-1, 1].")
        return pixel_values

    # Public API -----------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the query tokenizer (Q-DOVE) in `query_tokenizer/`."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self.query_tokenizer is not None:
            self.query_tokenizer.save_pretrained(os.path.join(save_directory, QUERY_TOKENIZER_DIR))
        return result

    # Q-DOVE queries -------------------------------------------------------------------------------------
    @property
    def supports_queries(self) -> bool:
        return self.query_embed is not None

    def set_query_tokenizer(self, tokenizer) -> None:
        """Attach the tokenizer of the text queries (saved with the model by `save_pretrained`)."""
        if not self.supports_queries:
            raise ValueError("this DOVE model has no query embedding (query_vocab_size=0); build it with "
                             "query_vocab_size=len(tokenizer) to use text queries.")
        if len(tokenizer) > self.config.query_vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} entries but the query embedding only "
                             f"{self.config.query_vocab_size}; rebuild the model with a larger query_vocab_size.")
        self.query_tokenizer = tokenizer

    def tokenize_queries(self, queries, batch_size: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Queries → `(ids (B, q), mask (B, q))`, or `(None, None)` when every query is null.

        Documented handling: `None`, `""` and whitespace-only strings are the null query (the whole image); one
        string is used for every image; a list must have one entry per image; a query longer than
        `config.query_max_length` tokens is truncated with a warning; non-ASCII text goes through the
        tokenizer (unknown words become its unknown token)."""
        if queries is None:
            return None, None
        if isinstance(queries, str):
            queries = [queries] * batch_size
        if not isinstance(queries, (list, tuple)):
            raise TypeError(f"queries must be a string, a list of strings or None, got {type(queries).__name__}.")
        if len(queries) != batch_size:
            raise ValueError(f"got {len(queries)} queries for {batch_size} images; pass one query per image "
                             "(None or '' for the whole image).")
        texts = []
        for i, query in enumerate(queries):
            if query is not None and not isinstance(query, str):
                raise TypeError(f"query {i} is a {type(query).__name__}, not a string or None.")
            texts.append(query.strip() if query else "")
        if not any(texts):
            return None, None
        if not self.supports_queries:
            raise ValueError("this DOVE model was trained without text queries (plain DOVE); use a Q-DOVE "
                             "checkpoint (`dove train --query`) or pass queries=None.")
        if self.query_tokenizer is None:
            raise ValueError("this Q-DOVE model has no query tokenizer; call set_query_tokenizer(...) first.")
        limit = self.config.query_max_length
        ids = []
        for i, text in enumerate(texts):
            row = self.query_tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            if len(row) > limit:
                warnings.warn(f"query {i} ({text[:40]!r}...) has {len(row)} tokens; truncated to the query budget "
                              f"of {limit} (config.query_max_length).", stacklevel=3)
                row = row[:limit]
            ids.append(row)
        width = max(len(row) for row in ids)
        if width == 0:
            return None, None
        device = self.latent_in.weight.device
        id_tensor = torch.zeros(batch_size, width, dtype=torch.long, device=device)
        mask = torch.zeros(batch_size, width, dtype=torch.long, device=device)
        for i, row in enumerate(ids):
            id_tensor[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return id_tensor, mask

    # The generator pass -----------------------------------------------------------------------------------
    def _run_generator(
        self,
        latents: torch.Tensor,
        query_ids: torch.Tensor | None,
        query_mask: torch.Tensor | None,
        num_slots: int,
        prefix: DovePrefix | None = None,
        chunks: list[int] | None = None,
        done: Callable[[torch.Tensor, int], bool] | None = None,
        detail: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states of the timestep slots, `(B, s, d)`, over `[H_v ; H_q ; t_1..t_s]`.

        `detail`: the pixel detail map (`pixel_detail`) with `config.pixel_detail`. One parallel call by default.
        With `prefix`, H_v comes from its KV cache; with `chunks` (sizes), the slots
        run in chunks on a KV cache and stop as soon as `done(hidden_so_far, slots_so_far)` says so (early
        exit). Positions are explicit so that padding a shorter query never shifts the timestep positions:
        a batch gives what its images give one by one, and a null query is exactly plain DOVE."""
        batch, num_visual = latents.shape[0], self.config.num_latent_positions
        device = latents.device
        query_len = torch.zeros(batch, dtype=torch.long, device=device)
        head_embeds, head_positions, head_mask = [], [], []
        if prefix is None:
            head_embeds.append(self._visual_prefix(latents, detail))
            head_positions.append(torch.arange(num_visual, device=device).expand(batch, -1))
            head_mask.append(torch.ones(batch, num_visual, dtype=torch.long, device=device))
        if query_ids is not None:
            query_len = query_mask.sum(1)
            head_embeds.append(self.query_embed(query_ids) * query_mask.unsqueeze(-1).to(latents.dtype))
            head_positions.append(num_visual + torch.arange(query_ids.shape[1], device=device).expand(batch, -1))
            head_mask.append(query_mask.long())
        timesteps = self._timesteps(batch, num_slots).to(head_embeds[0].dtype if head_embeds else latents.dtype)
        slot_positions = num_visual + query_len[:, None] + torch.arange(num_slots, device=device)[None]
        use_mask = query_ids is not None  # without a query every position is real: plain causal attention
        chunks = [num_slots] if chunks is None else chunks
        cache = prefix.cache if prefix is not None else (DynamicCache() if len(chunks) > 1 else None)
        past_mask = torch.ones(batch, num_visual if prefix is not None else 0, dtype=torch.long, device=device)
        outputs, stop = [], 0
        for size in chunks:
            start, stop = stop, stop + size
            embeds = head_embeds + [timesteps[:, start:stop]] if start == 0 else [timesteps[:, start:stop]]
            positions = head_positions + [slot_positions[:, start:stop]] if start == 0 else [slot_positions[:, start:stop]]
            mask = head_mask if start == 0 else []
            mask = torch.cat([past_mask, *mask, torch.ones(batch, stop - start, dtype=torch.long, device=device)], 1)
            past_mask = mask
            kwargs = dict(inputs_embeds=torch.cat(embeds, 1), position_ids=torch.cat(positions, 1))
            if use_mask:
                kwargs["attention_mask"] = mask
            if cache is not None:
                kwargs.update(cache=cache, use_cache=True)
            outputs.append(self.generator(**kwargs).last_hidden_state[:, -(stop - start):])
            if done is not None and stop < num_slots and done(torch.cat(outputs, 1), stop):
                break
        return torch.cat(outputs, 1)

    @torch.no_grad()
    def encode_prefix(self, pixel_values: torch.Tensor) -> DovePrefix:
        """Run the VQGAN encoder and the generator over H_v once; reuse the result for many queries with
        `encode(prefix=..., queries=[...])` (the prefix cache)."""
        latents = self.encode_latents(pixel_values)
        cache = DynamicCache()
        positions = torch.arange(self.config.num_latent_positions, device=latents.device).expand(latents.shape[0], -1)
        self.generator(inputs_embeds=self._visual_prefix(latents, self.pixel_detail(pixel_values)), position_ids=positions,
                       cache=cache, use_cache=True)
        return DovePrefix(latents=latents, cache=cache)

    # Public API -----------------------------------------------------------------------------------------
    def encode(
        self,
        pixel_values: torch.Tensor | None = None,
        queries=None,
        max_tokens: int | None = None,
        eos_threshold: float | None = None,
        min_tokens: int | None = None,
        num_tokens: int | torch.Tensor | None = None,
        early_exit: bool = False,
        chunk_size: int | None = None,
        prefix: DovePrefix | None = None,
        output_hidden_states: bool = False,
        latents: torch.Tensor | None = None,
        query_min_tokens: int | None = None,
        query_max_tokens: int | None = None,
        _query_tokens: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> DoveEncoderOutput:
        """Images → variable-length continuous tokens, in one parallel causal pass.

        Args:
            pixel_values (`(B, 3, H, W)`): images in [-1, 1] at `config.image_size` (or give `prefix`).
            queries: Q-DOVE text queries: `None`, one string for all images, or one string (or None) per image;
                empty/whitespace-only strings and None mean the whole image (see `tokenize_queries`).
            max_tokens (`int`, *optional*): cap on the length (≤ config.max_tokens); fewer slots are computed.
            eos_threshold (`float`, *optional*): overrides `config.eos_threshold` (the length knob).
            min_tokens (`int`, *optional*): overrides `config.min_tokens`.
            query_min_tokens / query_max_tokens (`int`, *optional*): override the config's limits of images with
                a (non-null) query; an explicit `max_tokens` caps them too.
            num_tokens (`int` or `(B,)`, *optional*): force the length (truncation to k tokens; fixed-k mode);
                entries ≤ 0 keep that image's adaptive length.
            early_exit (`bool`): run the slots in chunks on a KV cache and stop at the chunk where every image
                has ended; same tokens and lengths as the full pass (for inference).
            chunk_size (`int`, *optional*): slots per early-exit chunk; default: a quarter of the slots, then
                doubling (see `chunk_schedule`).
            prefix ([`DovePrefix`], *optional*): the cached visual prefix of `encode_prefix`; with one image and
                several queries, the image is reused for every query.
            latents (`(B, C, h, w)`, *optional*): VQGAN latents already computed for these images (e.g. by a model
                sharing this VQGAN); the encoder is skipped. Give pixel_values, prefix or latents; a model with
                `config.pixel_detail` needs the pixel_values beside the latents.
            output_hidden_states (`bool`): also return the generator hidden states of the kept slots (`(B, L, d)`,
                from the same pass).
        """
        n = self._resolve_max_tokens(max_tokens)
        threshold = self.config.eos_threshold if eos_threshold is None else eos_threshold
        shortest = self.config.min_tokens if min_tokens is None else min_tokens
        query_tokens = _query_tokens
        images = pixel_values if pixel_values is not None else latents  # either may be grouped by query length
        if prefix is None and query_tokens is None and self._splits_by_query_length(images, queries):
            query_tokens = self.tokenize_queries(queries, len(queries))  # once for the whole batch
            groups = _query_length_groups(query_tokens[1])
            if groups is not None:
                kwargs = dict(max_tokens=max_tokens, eos_threshold=eos_threshold, min_tokens=min_tokens,
                              early_exit=early_exit, chunk_size=chunk_size, output_hidden_states=output_hidden_states,
                              query_min_tokens=query_min_tokens, query_max_tokens=query_max_tokens)
                forced = None if num_tokens is None else torch.as_tensor(num_tokens).reshape(-1)
                ids, mask = query_tokens
                parts = []
                for rows in groups:
                    width = int(mask[rows[0]].sum())  # one query length per group: no padding inside it
                    tokens = (ids[rows, :width], mask[rows, :width]) if width else (None, None)
                    inputs = {name: value[rows] for name, value in (("pixel_values", pixel_values), ("latents", latents))
                              if value is not None}
                    parts.append(self.encode(**inputs, queries=[queries[i] for i in rows.tolist()],
                                             num_tokens=None if forced is None else forced[rows] if forced.numel() > 1
                                             else forced, _query_tokens=tokens, **kwargs))
                return _merge_encoder_outputs(parts, groups)
        if prefix is not None:
            if pixel_values is not None:
                raise ValueError("pass either pixel_values or prefix, not both.")
            count = len(queries) if isinstance(queries, (list, tuple)) else prefix.batch_size
            if prefix.batch_size not in (1, count):
                raise ValueError(f"the prefix holds {prefix.batch_size} images but {count} queries were given.")
            prefix = prefix.expand(count if prefix.batch_size == 1 else 1)
            latents = prefix.latents
        elif latents is not None:
            c, side = self.config.latent_channels, self.config.latent_size
            if latents.ndim != 4 or tuple(latents.shape[1:]) != (c, side, side) or latents.shape[0] == 0:
                raise ValueError(f"latents must have shape (batch, {c}, {side}, {side}); got {tuple(latents.shape)}.")
            if pixel_values is not None and len(pixel_values) != len(latents):
                raise ValueError(f"got {len(pixel_values)} images but latents of {len(latents)}; pass the latents of "
                                 "these pixel_values (one per image).")
        elif pixel_values is None:
            raise ValueError("encode needs pixel_values (or a prefix from encode_prefix, or latents).")
        else:
            latents = self.encode_latents(pixel_values)
        batch = latents.shape[0]
        query_ids, query_mask = self.tokenize_queries(queries, batch) if query_tokens is None else query_tokens
        forced = None
        if num_tokens is not None:
            forced = torch.as_tensor(num_tokens, device=latents.device)
            if forced.is_floating_point() or forced.is_complex() or forced.numel() not in (1, batch):
                raise ValueError(f"num_tokens must be an int or {batch} ints (one per image), got "
                                 f"{tuple(forced.shape)} of {forced.dtype}.")
            forced = forced.long().reshape(-1).expand(batch).clamp(max=n)

        floor, cap = self._length_limits(query_mask, batch, n, shortest, query_min_tokens, query_max_tokens,
                                         latents.device)
        done = None
        if early_exit:
            def done(hidden: torch.Tensor, slots: int) -> bool:
                p = self._heads(hidden)[1]
                above = p > threshold
                positions = torch.arange(1, p.shape[1] + 1, device=p.device)
                above &= positions >= floor.unsqueeze(1)  # a crossing before the floor does not end an image
                finished = above.any(1) | (cap <= slots)
                if forced is not None:
                    finished = torch.where(forced > 0, forced <= slots, finished)
                return bool(finished.all())

        detail = None if prefix is not None else self.pixel_detail(pixel_values)
        hidden = self._run_generator(latents, query_ids, query_mask, n, prefix=prefix,
                                     chunks=chunk_schedule(n, chunk_size) if early_exit else None, done=done,
                                     detail=detail)
        tokens, p_eos = self._heads(hidden)
        lengths = lengths_from_p_eos(p_eos.detach(), threshold, floor, cap)
        if forced is not None:
            lengths = torch.where(forced > 0, forced, lengths)
        lengths = lengths.clamp(max=hidden.shape[1])
        width = int(lengths.max())
        mask = length_mask(lengths, width)
        tokens = tokens[:, :width] * mask.unsqueeze(-1).to(tokens.dtype)
        kept_hidden = hidden[:, :width] * mask.unsqueeze(-1).to(hidden.dtype) if output_hidden_states else None
        return DoveEncoderOutput(tokens=tokens, lengths=lengths, attention_mask=mask, p_eos=p_eos, latents=latents,
                                 hidden_states=kept_hidden)

    def _length_limits(self, query_mask: torch.Tensor | None, batch: int, n: int, shortest: int,
                       query_min_tokens: int | None, query_max_tokens: int | None,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image `(floor, cap)` of the length, `(B,)` each: `[shortest, n]`, and for an image with a (non-null)
        query the query limits (`query_min_tokens` / `query_max_tokens`, else the config's), capped by `n`."""
        floor = torch.full((batch,), int(shortest), dtype=torch.long, device=device)
        cap = torch.full((batch,), int(n), dtype=torch.long, device=device)
        low = self.config.query_min_tokens if query_min_tokens is None else query_min_tokens
        high = self.config.query_max_tokens if query_max_tokens is None else query_max_tokens
        for name, value in (("query_min_tokens", query_min_tokens), ("query_max_tokens", query_max_tokens)):
            if value is not None and not 1 <= int(value) <= self.config.max_tokens:
                raise ValueError(f"{name} must be in [1, {self.config.max_tokens}], got {value}.")
        if query_mask is None or (low is None and high is None):
            return floor, cap
        queried = query_mask.bool().any(1).to(device)
        if high is not None:
            cap = torch.where(queried, cap.clamp(max=int(high)), cap)
        if low is not None:
            floor = torch.where(queried, torch.full_like(floor, int(low)), floor)
        return torch.minimum(floor, cap), cap

    def _heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `(B, s, k)` and p_eos `(B, s)` of hidden states `(B, s, d)`, from one product with both heads:
        BLAS routes a one-column (or one-row) product to kernels whose sums depend on the number of rows, so the
        EOS column rides along with the token columns (and a lone row is computed as one of two) — an image's
        tokens and p_eos then have the same bits in any batch."""
        weight = torch.cat([self.token_head.weight, self.eos_head.weight])
        bias = torch.cat([self.token_head.bias, self.eos_head.bias])
        rows = hidden if hidden.shape[0] * hidden.shape[1] != 1 else hidden.expand(1, 2, hidden.shape[-1])
        out = nn.functional.linear(rows, weight, bias)[:, : hidden.shape[1]]
        return out[..., :-1], torch.sigmoid(out[..., -1].float())

    def _splits_by_query_length(self, images, queries) -> bool:
        """True when a batch of per-image queries (`images`: pixel values or latents) runs in groups of equal query
        length: results must not depend on the batch (eval mode on CPU with `config.batch_invariant`). A shorter
        query padded to the longest is attended through a mask, whose kernels sum differently in the last bits;
        each group of equal lengths is padding free, so an image gets the same bits alone or in any batch. Without
        `batch_invariant` the batch runs in one padded, masked call (faster; last-bit differences across
        batches)."""
        return not (self.training or not getattr(self.config, "batch_invariant", True)
                    or not isinstance(queries, (list, tuple)) or not isinstance(images, torch.Tensor)
                    or images.ndim != 4 or images.device.type != "cpu" or len(queries) != images.shape[0])

    def decode_latents(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token decoder only: tokens `(B, L, k)` → latent grid `(B, C, h, w)`."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.config.token_dim:
            raise ValueError(f"tokens must be (batch, length, {self.config.token_dim}); got {tuple(tokens.shape)}.")
        if tokens.shape[1] > self.config.max_tokens:
            raise ValueError(f"got {tokens.shape[1]} tokens but this model takes at most {self.config.max_tokens}.")
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        tokens = tokens * attention_mask.unsqueeze(-1).to(tokens.dtype)  # masked tokens carry nothing
        grid = self.token_decoder(tokens, attention_mask)
        side = self.config.latent_size
        normalised = grid.transpose(1, 2).reshape(tokens.shape[0], self.config.latent_channels, side, side)
        mean, std = self._latent_statistics(normalised)
        return normalised * std + mean

    def decode(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> DoveDecoderOutput:
        """Tokens `(B, L, k)` (+ mask `(B, L)`) → pixels `(B, 3, H, W)` clamped to [-1, 1]."""
        latents = self.decode_latents(tokens, attention_mask)
        return DoveDecoderOutput(pixel_values=self.latents_to_pixels(latents).clamp(-1, 1), latents=latents)

    def forward(
        self,
        pixel_values: torch.Tensor,
        queries=None,
        max_tokens: int | None = None,
        eos_threshold: float | None = None,
        num_tokens: int | torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
    ) -> DoveModelOutput:
        """Encode then decode (training path); the reconstruction is not clamped so losses see real errors.
        `latents`: the frozen VQGAN's latents of `pixel_values`, computed beforehand (the encoder is skipped)."""
        enc = self.encode(
            pixel_values, queries=queries, max_tokens=max_tokens,
            eos_threshold=eos_threshold, num_tokens=num_tokens, latents=latents,
        )
        predicted = self.decode_latents(enc.tokens, enc.attention_mask)
        return DoveModelOutput(
            reconstruction=self.latents_to_pixels(predicted),
            tokens=enc.tokens,
            lengths=enc.lengths,
            attention_mask=enc.attention_mask,
            p_eos=enc.p_eos,
            latents=enc.latents,
            predicted_latents=predicted,
        )

    def _resolve_max_tokens(self, max_tokens: int | None) -> int:
        if max_tokens is None:
            return self.config.max_tokens
        if not 1 <= int(max_tokens) <= self.config.max_tokens:
            raise ValueError(f"max_tokens must be in [1, {self.config.max_tokens}], got {max_tokens}.")
        return int(max_tokens)
