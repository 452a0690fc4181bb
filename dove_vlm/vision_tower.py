"""`DoveVisionTower`: a DOVE / Q-DOVE tokenizer as a Hugging Face vision tower for LLaVA-style models.

Each image gives its own number of feature vectors L_i (packed by the LLaVA side, so no padding reaches the LM).
Modes ([`TowerMode`]): "adaptive" (DOVE's own length), "query" (Q-DOVE: the length also depends on a text query),
"query-null" (Q-DOVE given the null query), "fixed" (DOVE truncated to `num_tokens`), "grid" (all VQGAN
latents: the fixed-length baseline), and the grid reduced to `num_tokens` cells: "pool" (average-pooled) and
"random" (drawn per image; see `dove_vlm.grid_reduction`). The settings are one [`TowerSettings`] object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .checkpoints import model_type as checkpoint_model_type
from .checkpoints import quiet_loading, weights_problem
from .configuration_dove import DoveConfig
from .grid_reduction import check_k, pool_grid, random_grid
from .image_processing_dove import DoveImageProcessor
from .modeling_dove import QUERY_TOKENIZER_DIR, DoveModel
from .query_tokenizer import load_saved_query_tokenizer
from .tower_settings import K_MODES, TowerMode, TowerSettings

# The config fields a `from_pretrained(path, **overrides)` call may change: every tower setting.
TOWER_OVERRIDES = TowerSettings.names()
# Modes whose features are VQGAN latents (the grid LLaVA's projector reads them all).
GRID_MODES = (TowerMode.GRID, TowerMode.POOL, TowerMode.RANDOM)


class DoveVisionTowerConfig(PretrainedConfig):
    r"""Configuration of [`DoveVisionTower`].

    Args:
        dove_config ([`DoveConfig`] or `dict`, *optional*): the wrapped DOVE model; defaults to `DoveConfig()`.
        mode (`str`, defaults to `"adaptive"`): one of [`TowerMode`]: `"adaptive"` (DOVE length), `"query"` (Q-DOVE;
            the query comes with each forward call), `"fixed"` (DOVE truncated to `num_tokens`), `"grid"` (all VQGAN
            latents, normalised with the model's latent statistics: the fixed-length baseline).
        num_tokens (`int`, *optional*): k, the length of every image in `"fixed"` mode (required there).
        feature (`str`, defaults to `"tokens"`): `"tokens"` (the k-dim continuous tokens d_i) or `"hidden"` (the
            generator hidden states at the kept slots, width `dove_config.hidden_size`). Grid mode always gives one
            C-dim latent per latent position.
        eos_threshold / min_tokens / max_tokens (*optional*): the length knob; `None` keeps the DOVE config's value.
        query_min_tokens / query_max_tokens (*optional*): the length limits of an image with a (non-null) query in
            `"query"` mode; `None` keeps the Q-DOVE config's (`DoveConfig.query_min_tokens` / `query_max_tokens`).
            A VLM may want longer query codes than the tokenizer's own evaluation (`dove demo`: 12–16 of 32).
        early_exit (`bool`, defaults to `True`): run the generator in chunks and stop once every image has ended
            (same output as the full pass, less compute).
        chunk_size (`int`, *optional*): timestep slots per chunk with `early_exit`; `None` keeps
            `DoveModel.encode`'s default schedule.
    """

    model_type = "dove_vision_tower"
    sub_configs_defaults = {"dove_config": DoveConfig}

    def __init__(
        self,
        dove_config: DoveConfig | dict | None = None,
        mode: str = "adaptive",
        num_tokens: int | None = None,
        feature: str = "tokens",
        eos_threshold: float | None = None,
        min_tokens: int | None = None,
        max_tokens: int | None = None,
        query_min_tokens: int | None = None,
        query_max_tokens: int | None = None,
        early_exit: bool = True,
        chunk_size: int | None = None,
        **kwargs,
    ):
        if dove_config is None:
            dove_config = DoveConfig()
        elif isinstance(dove_config, dict):
            dove_config = DoveConfig(**{k: v for k, v in dove_config.items() if k != "model_type"})
        elif not isinstance(dove_config, DoveConfig):
            raise TypeError(f"dove_config must be a DoveConfig or a dict, got {type(dove_config).__name__}.")
        self.dove_config = dove_config
        self.mode = mode.value if isinstance(mode, TowerMode) else mode
        self.num_tokens = num_tokens
        self.feature = feature
        self.eos_threshold = eos_threshold
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        self.query_min_tokens = query_min_tokens
        self.query_max_tokens = query_max_tokens
        self.early_exit = early_exit
        self.chunk_size = chunk_size
        super().__init__(**kwargs)
        self.validate_tower()

    def validate_tower(self) -> None:
        """Raise a clear `ValueError` for an unknown mode/feature, fixed mode without `num_tokens`, query mode on a
        plain DOVE model, or an out-of-range length knob. Called at construction and by the tower itself (so that
        `from_pretrained(..., mode=...)` overrides are checked too)."""
        settings = TowerSettings.of(self)  # names, types and ranges; the checks below need the DOVE config
        if settings.mode is None:
            raise ValueError("the tower needs a mode; choose one of: " + ", ".join(m.value for m in TowerMode) + ".")
        self.mode = settings.mode.value
        n = self.dove_config.max_tokens
        if self.mode == TowerMode.FIXED:
            if self.num_tokens is None:
                raise ValueError("mode='fixed' needs num_tokens (the number of tokens per image), e.g. num_tokens=16.")
            if not 1 <= int(self.num_tokens) <= n:
                raise ValueError(f"num_tokens must be in [1, {n}] (the DOVE model's max_tokens), got {self.num_tokens}.")
        elif self.mode in (TowerMode.POOL, TowerMode.RANDOM):
            side = self.dove_config.latent_size
            check_k(int(self.num_tokens) if self.num_tokens is not None else None, side, side, self.mode)
        elif self.mode == TowerMode.ENCODER:
            raise ValueError("mode='encoder' is the pretrained encoder tower's (dove_vlm.encoder_tower.EncoderTower, "
                             "`--tower efficientnet-lite0`), not a mode of a DOVE tower; choose one of: "
                             + ", ".join(m.value for m in TowerMode if m is not TowerMode.ENCODER) + ".")
        elif self.num_tokens is not None:
            raise ValueError(f"num_tokens={self.num_tokens} only applies to mode='fixed', 'pool' or 'random' (this "
                             f"tower is {self.mode!r}).")
        if self.mode in (TowerMode.QUERY, TowerMode.QUERY_NULL) and not self.dove_config.query_vocab_size:
            raise ValueError(f"mode={self.mode!r} needs a Q-DOVE model (trained with `dove train --query`); this DOVE model "
                             "has no query embedding (query_vocab_size=0). Use mode='adaptive'.")
        if self.max_tokens is not None and not 1 <= int(self.max_tokens) <= n:
            raise ValueError(f"max_tokens must be in [1, {n}], got {self.max_tokens}.")
        shortest = self.dove_config.min_tokens if self.min_tokens is None else self.min_tokens
        longest = n if self.max_tokens is None else self.max_tokens
        if not 1 <= int(shortest) <= int(longest):
            raise ValueError(f"need 1 <= min_tokens ({shortest}) <= max_tokens ({longest}).")
        for name in ("query_min_tokens", "query_max_tokens"):
            value = getattr(self, name)
            if value is not None and not 1 <= int(value) <= n:
                raise ValueError(f"{name} must be in [1, {n}] (the DOVE model's max_tokens), got {value}.")
        low = self.dove_config.query_min_tokens if self.query_min_tokens is None else self.query_min_tokens
        high = self.dove_config.query_max_tokens if self.query_max_tokens is None else self.query_max_tokens
        if low is not None and high is not None and int(low) > int(high):
            raise ValueError(f"need query_min_tokens ({low}) <= query_max_tokens ({high}).")
        if self.eos_threshold is not None and not 0.0 < self.eos_threshold < 1.0:
            raise ValueError(f"eos_threshold must be in (0, 1), got {self.eos_threshold}.")
        if self.chunk_size is not None and int(self.chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}.")

    @property
    def hidden_size(self) -> int:
        """D, the width of each feature vector (read by LLaVA's projector)."""
        if self.mode in GRID_MODES:
            return self.dove_config.latent_channels
        return self.dove_config.hidden_size if self.feature == "hidden" else self.dove_config.token_dim

    @property
    def image_size(self) -> int:
        return self.dove_config.image_size

    @property
    def max_image_tokens(self) -> int:
        """Upper bound on the number of features per image."""
        if self.mode == TowerMode.GRID:
            return self.dove_config.num_latent_positions
        if self.mode in K_MODES:
            return int(self.num_tokens)
        return self.dove_config.max_tokens if self.max_tokens is None else int(self.max_tokens)


@dataclass
class DoveVisionTowerOutput(ModelOutput):
    """Output of [`DoveVisionTower.forward`].

    Args:
        last_hidden_state (`(B, L, D)`): features, zero after each image's length (L = longest in the batch).
        attention_mask (`(B, L)` long): 1 on each image's features.
        lengths (`(B,)` long): L_i, the number of features of each image.
        features (`tuple` of `(L_i, D)` tensors): one per image, without padding (what LLaVA consumes).
    """

    last_hidden_state: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    lengths: torch.LongTensor | None = None
    features: tuple[torch.FloatTensor, ...] | None = None


class TowerProperties:
    """What LLaVA reads off a vision tower, from its config (shared by the DOVE tower and the encoder tower)."""

    @property
    def image_processor(self) -> DoveImageProcessor:
        """A [`DoveImageProcessor`] at the tower's image size."""
        return DoveImageProcessor(size=self.config.image_size)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def max_tokens(self) -> int:
        """Upper bound on L_i (grid: the number of latent positions; fixed, pool, random: k)."""
        return self.config.max_image_tokens


class DoveVisionTower(TowerProperties, PreTrainedModel):
    """A frozen DOVE / Q-DOVE model as a vision tower: `forward(pixel_values, queries)` → one `(L_i, D)` feature
    tensor per image. The DOVE weights have `requires_grad=False` and stay in eval mode under `.train()`.

    Build it with `DoveVisionTower.from_pretrained(path, mode=..., ...)` from a tower folder or from a plain DOVE
    checkpoint written by `dove train`; or `DoveVisionTower(config, dove=model)` around a loaded `DoveModel`.
    """

    config_class = DoveVisionTowerConfig
    base_model_prefix = "dove_tower"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    def __init__(self, config: DoveVisionTowerConfig, dove: DoveModel | None = None):
        super().__init__(config)
        config.validate_tower()
        if dove is not None:
            for module in dove.modules():  # already trained: post_init must not re-initialise it
                module._is_hf_initialized = True
        self.dove = dove if dove is not None else DoveModel(config.dove_config)
        self.post_init()
        self.freeze()

    def _init_weights(self, module) -> None:
        pass  # the only weights are DoveModel's, initialised by its own `_init_weights`

    def freeze(self) -> DoveVisionTower:
        """No gradients for the DOVE weights and eval mode (the default; loading re-creates parameters, so the
        `from_pretrained` paths call this again)."""
        self.dove.requires_grad_(False)
        self.dove.eval()
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.dove.eval()  # frozen tower: no dropout, fixed norms, same lengths in training and inference
        return self

    # Properties -------------------------------------------------------------------------------------------
    @property
    def supports_queries(self) -> bool:
        """True when the tower uses text queries (mode "query", on a Q-DOVE model)."""
        return self.config.mode == TowerMode.QUERY

    @property
    def query_tokenizer(self):
        return self.dove.query_tokenizer

    # Forward ----------------------------------------------------------------------------------------------
    def _check_inputs(self, pixel_values, queries):
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}; use "
                            "tower.image_processor to turn images into pixel_values.")
        size, channels = self.config.dove_config.image_size, self.config.dove_config.num_channels
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (channels, size, size):
            raise ValueError(f"pixel_values must have shape (batch, {channels}, {size}, {size}); got "
                             f"{tuple(pixel_values.shape)}. Use tower.image_processor to resize and batch images.")
        batch = pixel_values.shape[0]
        if isinstance(queries, (list, tuple)) and len(queries) != batch:
            raise ValueError(f"got {len(queries)} queries for {batch} images; pass one query (or None) per image.")
        if self.config.mode == TowerMode.QUERY_NULL:
            queries = None  # the null query whatever is asked
        elif self.config.mode != TowerMode.QUERY and queries is not None:
            entries = [queries] if isinstance(queries, str) else list(queries)
            if any(isinstance(q, str) and q.strip() for q in entries):
                raise ValueError(f"this tower is in {self.config.mode!r} mode and ignores text queries; pass "
                                 "queries=None, or load it with mode='query' (needs a Q-DOVE model).")
            queries = None
        return pixel_values.to(self.dove.latent_in.weight.dtype), queries

    def forward(self, pixel_values: torch.Tensor, queries=None, **kwargs) -> DoveVisionTowerOutput:
        """Images → per-image variable-length features.

        Args:
            pixel_values (`(B, 3, H, W)`): images in [-1, 1] at the DOVE image size (see `image_processor`).
            queries: Q-DOVE text queries (mode "query" only): `None`, one string, or one string/None per image;
                None or "" is the null query (plain DOVE behaviour). Other modes accept only null queries.
            kwargs: accepted for compatibility with vision-tower callers (e.g. `return_dict`); ignored.
        """
        pixel_values, queries = self._check_inputs(pixel_values, queries)
        config, dove = self.config, self.dove
        if config.mode in GRID_MODES:
            latents = dove.encode_latents(pixel_values)
            mean, std = dove._latent_statistics(latents)
            grid = (latents - mean) / std
            if config.mode == TowerMode.POOL:
                hidden = pool_grid(grid, int(config.num_tokens))
            elif config.mode == TowerMode.RANDOM:
                hidden = random_grid(grid, int(config.num_tokens), pixel_values)
            else:
                hidden = grid.flatten(2).transpose(1, 2)
            lengths = torch.full((hidden.shape[0],), hidden.shape[1], dtype=torch.long, device=hidden.device)
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        else:
            chunking = {} if config.chunk_size is None else {"chunk_size": int(config.chunk_size)}
            encoded = dove.encode(
                pixel_values,
                queries=queries,
                max_tokens=config.max_tokens,
                eos_threshold=config.eos_threshold,
                min_tokens=config.min_tokens,
                query_min_tokens=config.query_min_tokens,
                query_max_tokens=config.query_max_tokens,
                num_tokens=config.num_tokens if config.mode == TowerMode.FIXED else None,
                early_exit=bool(config.early_exit),
                **chunking,
                output_hidden_states=config.feature == "hidden",
            )
            hidden = encoded.hidden_states if config.feature == "hidden" else encoded.tokens
            lengths, mask = encoded.lengths, encoded.attention_mask
        features = tuple(hidden[i, : int(n)] for i, n in enumerate(lengths.tolist()))
        return DoveVisionTowerOutput(last_hidden_state=hidden, attention_mask=mask, lengths=lengths, features=features)

    @property
    def counts_need_a_pass(self) -> bool:
        """False when every image has the same, known number of features (grid and fixed modes)."""
        return self.config.mode not in (*GRID_MODES, TowerMode.FIXED)

    @torch.no_grad()
    def num_image_tokens(self, pixel_values: torch.Tensor, queries=None) -> torch.LongTensor:
        """`(B,)` feature counts, equal to `forward(pixel_values, queries).lengths` (grid and fixed modes need no
        model pass)."""
        pixel_values, queries = self._check_inputs(pixel_values, queries)
        if not self.counts_need_a_pass:
            return torch.full((pixel_values.shape[0],), self.max_tokens, dtype=torch.long, device=pixel_values.device)
        return self.forward(pixel_values, queries).lengths

    @property
    def settings(self) -> TowerSettings:
        """This tower's settings as one object."""
        return TowerSettings.of(self.config)

    def with_settings(self, settings: TowerSettings | str | dict) -> DoveVisionTower:
        """A tower around the same (shared, frozen) DOVE weights with `settings` over this one's: e.g.
        `tower.with_settings("fixed-16")`. Returns `self` when nothing changes."""
        new_settings = self.settings.merged(TowerSettings.parse(settings))
        if new_settings == self.settings:
            return self
        config = DoveVisionTowerConfig(dove_config=self.dove.config, **new_settings.to_dict())
        return DoveVisionTower(config, dove=self.dove).eval()

    # Saving and loading -----------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """Weights (safetensors) + config, the [`DoveImageProcessor`] and, for Q-DOVE, the query tokenizer."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        self.image_processor.save_pretrained(save_directory)
        if self.dove.query_tokenizer is not None:
            self.dove.query_tokenizer.save_pretrained(os.path.join(save_directory, QUERY_TOKENIZER_DIR))
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a tower folder (`save_pretrained`) or a plain DOVE checkpoint (model_type "dove", e.g. written by
        `dove train`). Tower config fields (`TOWER_OVERRIDES`: `mode`, `num_tokens`, `feature`, `eos_threshold`,
        `min_tokens`, `max_tokens`, `query_min_tokens`, `query_max_tokens`, `early_exit`, `chunk_size`) may be given
        as keyword overrides; other keywords go to `PreTrainedModel.from_pretrained`."""
        source = str(pretrained_model_name_or_path)
        settings = TowerSettings.parse(kwargs.pop("settings", None),
                                       **{k: kwargs.pop(k) for k in TOWER_OVERRIDES if k in kwargs})
        overrides = settings.to_dict()
        config = kwargs.pop("config", None)
        if config is not None:
            for key, value in overrides.items():
                setattr(config, key, value)
            return cls._load_tower(source, model_args, config=config, **kwargs)
        model_type = checkpoint_model_type(source)
        if model_type == DoveConfig.model_type:
            dove = DoveModel.from_pretrained(source, *model_args, **kwargs)
            return cls(DoveVisionTowerConfig(dove_config=dove.config, **overrides), dove=dove)
        if model_type not in (None, DoveVisionTowerConfig.model_type):
            raise ValueError(f"{source!r} holds a {model_type!r} model; DoveVisionTower loads a DOVE checkpoint "
                             "(model_type 'dove') or a tower folder (model_type 'dove_vision_tower').")
        return cls._load_tower(source, model_args, **overrides, **kwargs)

    @classmethod
    def _load_tower(cls, source, model_args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("use_safetensors", True)  # never unpickle a `pytorch_model.bin` someone handed over
        try:
            with quiet_loading():  # mismatches are raised below as one error, not a per-key report
                tower, info = super().from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
        except OSError as err:
            problem = weights_problem(source)
            if problem is None:
                raise
            raise ValueError(f"cannot load the DOVE tower {source!r}: {problem}") from err
        bad = {k: list(v)[:3] for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            raise ValueError(f"the weights in {source!r} do not match its tower config ({bad}).")
        tower.config.validate_tower()
        tower.freeze()
        if tower.dove.supports_queries:
            tokenizer = load_saved_query_tokenizer(source, **kwargs)
            if tokenizer is not None:
                tower.dove.set_query_tokenizer(tokenizer)
        return (tower, info) if want_info else tower


__all__ = ["DoveVisionTower", "DoveVisionTowerConfig", "DoveVisionTowerOutput", "TowerMode", "TowerSettings"]
