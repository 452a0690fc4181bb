"""Named presets: model configuration plus the training recipe that goes with it. The one place for presets."""

from __future__ import annotations

import copy
from typing import Any

from .configuration_dove import AMUSED_VQGAN_CONFIG, DoveConfig

# A small VQGAN (f=4: 32 px → 8×8 latents) that trains on the CPU in a couple of minutes.
TINY_VQGAN_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 16,
    "num_vq_embeddings": 256,
    "norm_num_groups": 8,
    "vq_embed_dim": None,
    "scaling_factor": 1.0,
    "norm_type": "group",
    "mid_block_add_attention": False,
    "lookup_from_codebook": False,
    "force_upcast": False,
    "sample_size": 32,
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": {
            "image_size": 32,
            "vqgan_config": TINY_VQGAN_CONFIG,
            "hidden_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "rotary_pct": 0.25,
            "decoder_hidden_size": 64,
            "decoder_num_hidden_layers": 3,
            "decoder_num_attention_heads": 4,
            "decoder_intermediate_size": 256,
            "token_dim": 4,  # 32 tokens × 4 = 128 numbers: the token budget binds at every length (PSNR rises to 32)
            "max_tokens": 32,
        },
        "train": {
            "vqgan_steps": 500,
            "vqgan_batch_size": 32,
            "vqgan_learning_rate": 1e-3,
            # Small batches, many steps: the transformers learn from the number of updates more than from
            # the batch size at this scale (measured: 3000×16 beats 1500×32 by ~1 dB in the same time).
            "max_steps": 3000,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "warmup_steps": 100,
            "num_train_scenes": 10000,
            "eos_weight_start": 1e-3,
            "eos_weight_end": 1.0,
            "eos_warmup_steps": 400,
            "eos_ramp_steps": 1600,
            "truncation_prob": 0.25,
            "lpips_weight": 0.1,
            "latent_weight": 1.0,
            "gan_weight": 0.0,
            "checkpoint_every": 500,
            "eval_scenes": 200,
        },
    },
    "paper": {
        "model": {
            "image_size": 256,
            "vqgan_config": AMUSED_VQGAN_CONFIG,
            "hidden_size": 512,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "intermediate_size": 2048,
            "decoder_hidden_size": 512,
            "decoder_num_hidden_layers": 6,
            "decoder_num_attention_heads": 8,
            "decoder_intermediate_size": 2048,
            "max_tokens": 256,
        },
        "train": {
            "vqgan_steps": 0,  # the paper wraps a pretrained (aMUSEd) VQGAN: pass --vqgan PATH_OR_HUB_ID
            "vqgan_batch_size": 32,
            "max_steps": 200_000,
            "batch_size": 32,
            "learning_rate": 1e-4,
            "warmup_steps": 2000,
            "num_train_scenes": 100_000,
            "eos_weight_start": 1e-4,
            "eos_weight_end": 1.0,
            "eos_warmup_steps": 5000,
            "eos_ramp_steps": 50_000,
            "truncation_prob": 0.0,
            "lpips_weight": 0.1,
            "latent_weight": 0.0,
            "gan_weight": 5e-10,
            "checkpoint_every": 2000,
            "eval_scenes": 200,
        },
    },
}


def _preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}.")
    return PRESETS[name]


def preset_config(name: str, **overrides) -> DoveConfig:
    """The `DoveConfig` of a named preset (`tiny` or `paper`), with keyword overrides."""
    kwargs = copy.deepcopy(_preset(name)["model"])
    kwargs.update(overrides)
    return DoveConfig(**kwargs)


def preset_training(name: str) -> dict[str, Any]:
    """The training recipe (steps, batch size, loss weights, schedules) of a named preset."""
    return copy.deepcopy(_preset(name)["train"])
