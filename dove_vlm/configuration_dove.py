"""Configuration of the DOVE / Q-DOVE tokenizer."""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig

# The aMUSEd VQ-GAN (f=16, 64 latent channels, codebook 8192) as diffusers `VQModel` kwargs: the paper's VQGAN.
AMUSED_VQGAN_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 5,
    "up_block_types": ["UpDecoderBlock2D"] * 5,
    "block_out_channels": [128, 256, 256, 512, 768],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 64,
    "num_vq_embeddings": 8192,
    "norm_num_groups": 32,
    "vq_embed_dim": None,
    "scaling_factor": 0.18215,
    "norm_type": "group",
    "mid_block_add_attention": False,
    "lookup_from_codebook": True,
    "force_upcast": False,
    "sample_size": 256,
}


class DoveConfig(PretrainedConfig):
    r"""Configuration for [`DoveModel`]: VQGAN encoder → causal token generator (with EOS head) → bidirectional
    token decoder → VQGAN decoder. Defaults follow the paper (aMUSEd VQGAN, Pythia-70M shaped transformers,
    256 max tokens).

    Args:
        image_size (`int`, defaults to 256): side of the square input image in pixels.
        num_channels (`int`, defaults to 3): image channels.
        vqgan_config (`dict`, *optional*): keyword arguments of `diffusers.VQModel`; defaults to the aMUSEd VQGAN.
        freeze_vqgan (`bool`, defaults to `True`): keep the VQGAN frozen (no gradients, eval mode) while training.
        batch_invariant (`bool`, defaults to `True`): in eval mode on CPU, run the VQGAN encoder one image at a
            time so an image's tokens are bit-identical whatever its batch (oneDNN picks its convolution
            algorithm by batch size), and Q-DOVE queries of different lengths run in padding-free groups. `False`
            keeps one batched call for both: about 2.5x faster on CPU, with differences in the last bits between
            batch sizes. GPUs and training always use the batched call.
        hidden_size / num_hidden_layers / num_attention_heads / intermediate_size: the causal generator
            (a GPTNeoX; Pythia-70M is 512 / 6 / 8 / 2048).
        rotary_pct (`float`, defaults to 0.25): share of head dims with rotary position embeddings (Pythia's).
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads / decoder_intermediate_size:
            the bidirectional token decoder.
        token_dim (`int`, *optional*): width of each continuous output token; defaults to `hidden_size`. A small
            value makes every token a real information bottleneck (useful for tiny models).
        max_tokens (`int`, defaults to 256): n, the number of timestep slots and the longest sequence.
        min_tokens (`int`, defaults to 1): shortest sequence produced at inference.
        eos_threshold (`float`, defaults to 0.5): the length is the first position with p_eos above it.
        query_vocab_size (`int`, defaults to 0): vocabulary of the Q-DOVE text query; 0 means plain DOVE.
        query_max_length (`int`, defaults to 32): query budget in text tokens (longer queries are truncated).
        query_min_tokens / query_max_tokens (`int`, *optional*): the length limits of an image encoded with a
            (non-null) text query; `None` means `min_tokens` / `max_tokens`. One object's in-box quality levels off
            long before a whole image's (tiny preset: within ~12 of 32 tokens), so a query gets a smaller budget;
            `dove train --query` sets them.
        latent_mean / latent_std (`list[float]`, *optional*): per-channel statistics of the VQGAN latents; the
            generator sees normalised latents and the decoder predicts normalised ones. Filled in by `dove train`
            from the training data (`None` means 0 / 1).
        pixel_detail (`bool`, defaults to `False`): H_v also carries each latent cell's log high-pass energy of the
            input pixels (`pixel_detail_map`): the edges and texture that the VQGAN latents blur, so the EOS head
            can follow detail on images unlike the training data instead of their palette. The model then needs
            the pixels even when its latents are given (`encode(pixel_values, latents=...)`).
        layer_norm_eps (`float`), initializer_range (`float`): as in transformers.
    """

    model_type = "dove"

    def __init__(
        self,
        image_size: int = 256,
        num_channels: int = 3,
        vqgan_config: dict[str, Any] | None = None,
        freeze_vqgan: bool = True,
        batch_invariant: bool = True,
        hidden_size: int = 512,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 8,
        intermediate_size: int = 2048,
        rotary_pct: float = 0.25,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 6,
        decoder_num_attention_heads: int = 8,
        decoder_intermediate_size: int = 2048,
        token_dim: int | None = None,
        max_tokens: int = 256,
        min_tokens: int = 1,
        eos_threshold: float = 0.5,
        query_vocab_size: int = 0,
        query_max_length: int = 32,
        query_min_tokens: int | None = None,
        query_max_tokens: int | None = None,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        latent_mean: list[float] | None = None,
        latent_std: list[float] | None = None,
        pixel_detail: bool = False,
        **kwargs,
    ):
        self.image_size = image_size
        self.num_channels = num_channels
        self.vqgan_config = copy.deepcopy(vqgan_config if vqgan_config is not None else AMUSED_VQGAN_CONFIG)
        self.freeze_vqgan = freeze_vqgan
        self.batch_invariant = batch_invariant
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.rotary_pct = rotary_pct
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.token_dim = token_dim if token_dim is not None else hidden_size
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.eos_threshold = eos_threshold
        self.query_vocab_size = query_vocab_size
        self.query_max_length = query_max_length
        self.query_min_tokens = query_min_tokens
        self.query_max_tokens = query_max_tokens
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.latent_mean = None if latent_mean is None else [float(v) for v in latent_mean]
        self.latent_std = None if latent_std is None else [float(v) for v in latent_std]
        self.pixel_detail = bool(pixel_detail)
        super().__init__(**kwargs)
        self._validate()

    # Derived geometry -------------------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vqgan_config["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vqgan_config["latent_channels"]

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor

    @property
    def num_latent_positions(self) -> int:
        return self.latent_size**2

    def _validate(self) -> None:
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of the VQGAN downsampling factor "
                f"{self.downsample_factor}; pick an image_size divisible by it."
            )
        for name in ("latent_mean", "latent_std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.latent_channels:
                raise ValueError(f"{name} has {len(values)} entries but the VQGAN has {self.latent_channels} latent channels.")
        if self.latent_std is not None and min(self.latent_std) <= 0:
            raise ValueError(f"latent_std must be positive, got {self.latent_std}.")
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 1 <= min_tokens ({self.min_tokens}) <= max_tokens ({self.max_tokens}).")
        shortest = self.min_tokens if self.query_min_tokens is None else self.query_min_tokens
        longest = self.max_tokens if self.query_max_tokens is None else self.query_max_tokens
        if not 1 <= shortest <= longest <= self.max_tokens:
            raise ValueError(f"need 1 <= query_min_tokens ({shortest}) <= query_max_tokens ({longest}) <= max_tokens "
                             f"({self.max_tokens}).")
        if not 0.0 < self.eos_threshold < 1.0:
            raise ValueError(f"eos_threshold must be in (0, 1), got {self.eos_threshold}.")
        for name, width, heads in (
            ("", self.hidden_size, self.num_attention_heads),
            ("decoder_", self.decoder_hidden_size, self.decoder_num_attention_heads),
        ):
            if width % heads:
                raise ValueError(f"{name}hidden_size={width} is not divisible by {name}num_attention_heads={heads}.")
