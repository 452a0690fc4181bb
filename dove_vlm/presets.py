"""Every recipe in one place: the model presets (configuration plus the training recipe that goes with it), the
schedules of `dove demo`'s stages and the defaults of `dove eval compare`."""

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

# The paper preset at micro widths, for CPU tests and `benchmarks/paper_preset.py --micro`: an aMUSEd-shaped VQGAN
# (five blocks, f=16, `lookup_from_codebook`, spatial 64 px → 4×4 latents) and very narrow transformers.
MICRO_AMUSED_VQGAN_CONFIG: dict[str, Any] = dict(
    AMUSED_VQGAN_CONFIG, block_out_channels=[8, 8, 16, 16, 32], layers_per_block=1, latent_channels=8,
    num_vq_embeddings=64, norm_num_groups=4, sample_size=64,
)
PAPER_MICRO_OVERRIDES: dict[str, Any] = dict(
    image_size=64, vqgan_config=MICRO_AMUSED_VQGAN_CONFIG, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
    decoder_intermediate_size=64, max_tokens=8,
)

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
            # "wide": scenes of every background and palette, photo crops, augmentation (opt-in: not yet measured
            # to keep the demo's targets, see docs/results.md)
            "data_mix": "scenes",
            # or "source" (the EOS threshold calibrated per data source of the mix) or "detail" (lengths by rank of
            # the high-pass reconstruction error; with "wide", lengths that follow detail on held-out photos and a
            # second renderer better than the default, not on foolbox's samples: docs/results.md)
            "length_objective": "paper",
            "lpips_weight": 0.1,
            "latent_weight": 1.0,
            "gan_weight": 0.0,
            "mixed_precision": "no",
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
            "data_mix": "scenes",
            "length_objective": "paper",
            # Beyond the paper (which trains at the adaptive lengths only): a quarter of the samples decode from a
            # random prefix, so every prefix decodes (the length knob, fixed-k baselines and `dove report`'s curve).
            "truncation_prob": 0.25,
            "lpips_weight": 0.1,
            "latent_weight": 0.0,
            "gan_weight": 5e-10,
            "mixed_precision": "auto",  # bf16 autocast (TF32 for the fp32 parts) on CUDA, fp32 on the CPU
            "refuse_random_lpips": True,  # the real AlexNet trunk, or --allow-random-lpips
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


# DoveConfig fields that may be 0 (every other integer field counts something and must be >= 1).
_ZERO_OK = ("query_vocab_size",)
_FLOAT_RANGES = {"rotary_pct": (0.0, 1.0), "layer_norm_eps": (0.0, 1.0), "initializer_range": (0.0, 10.0)}


def override_fields() -> dict[str, Any]:
    """`{name: type}` of the `DoveConfig` fields `--model-overrides` may set (its constructor's arguments)."""
    import inspect
    import typing

    hints = typing.get_type_hints(DoveConfig.__init__)
    return {name: hints.get(name, Any) for name, p in inspect.signature(DoveConfig.__init__).parameters.items()
            if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def _check_value(key: str, value: Any, kind: Any) -> None:
    import math
    import typing

    options = [t for t in typing.get_args(kind) if t is not type(None)] if typing.get_origin(kind) in (
        typing.Union, getattr(__import__("types"), "UnionType", None)) else [kind]
    if value is None:
        if type(None) in typing.get_args(kind):
            return
        raise ValueError(f"--model-overrides: {key} cannot be null.")
    base = typing.get_origin(options[0]) or options[0]
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= (0 if key in _ZERO_OK else 1)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif base is dict:
        ok = isinstance(value, dict)
    elif base is list:
        ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    else:
        ok = True
    if not ok:
        want = {bool: "true or false", int: "an integer >= " + ("0" if key in _ZERO_OK else "1"),
                float: "a finite number", dict: "a JSON object", list: "a list of numbers"}.get(base, str(kind))
        raise ValueError(f"--model-overrides: {key} must be {want}, got {value!r}.")


def check_model_overrides(name: str, overrides: dict[str, Any]) -> DoveConfig:
    """The preset's `DoveConfig` with `overrides`, after checking every key is a `DoveConfig` field with a value of
    its type (a typo such as `hiden_size` is an error listing the valid keys, not a silently ignored extra)."""
    if not isinstance(overrides, dict):
        raise ValueError(f"--model-overrides must be a JSON object, got {type(overrides).__name__}.")
    fields = override_fields()
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"--model-overrides: unknown DoveConfig field(s) {', '.join(map(repr, unknown))}; valid "
                         f"keys: {', '.join(sorted(fields))}.")
    for key, value in overrides.items():
        _check_value(key, value, fields[key])
    for key, (low, high) in _FLOAT_RANGES.items():
        if key in overrides and not low < overrides[key] <= high:
            raise ValueError(f"--model-overrides: {key} must be in ({low}, {high}], got {overrides[key]!r}.")
    if "vqgan_config" in overrides:
        import inspect

        from diffusers import VQModel

        known = set(inspect.signature(VQModel.__init__).parameters) - {"self"}
        bad = sorted(set(overrides["vqgan_config"]) - known)
        if bad:
            raise ValueError(f"--model-overrides: vqgan_config has unknown VQModel argument(s) {', '.join(bad)}.")
    try:
        return preset_config(name, **overrides)
    except (TypeError, KeyError, ZeroDivisionError) as err:
        raise ValueError(f"--model-overrides {overrides} do not give a valid DoveConfig ({err}).") from err
    except ValueError as err:
        raise ValueError(f"--model-overrides: {err}") from err


def preset_training(name: str) -> dict[str, Any]:
    """The training recipe (steps, batch size, loss weights, schedules) of a named preset."""
    return copy.deepcopy(_preset(name)["train"])


# --- `dove demo` -------------------------------------------------------------------------------------------------

# Q-DOVE fine-tunes the trained DOVE (decoder kept, null query distilled from DOVE), with the EOS weight quickly at
# full strength. A queried sample stops at the first length whose in-box loss is within 1.2x of what the starting
# DOVE reaches on that box (the teacher threshold; the running threshold swung between 28% and 46% of the null
# query's tokens). A quarter of the queried samples use all slots toward the whole image, so that longer query codes
# hold the rest of the scene and the DOVE LLaVA adapter reads them (docs/results.md).
QDOVE_DEMO_SCHEDULE: dict[str, Any] = dict(max_steps=2500, warmup_steps=50, eos_weight_start=0.1, eos_warmup_steps=0,
                                           eos_ramp_steps=300, learning_rate=5e-4, freeze_decoder=True,
                                           query_threshold="teacher", query_threshold_scale=1.2, query_full_prob=0.25)

# The LLaVA stages, sized for a 2-core CPU, where the base and DOVE LoRA stages run beside the Q-DOVE tokenizer (one
# thread each) and should not outlast it. Dense caption turns (LLaVA's alignment data) lift the grid baseline from
# 42.4% to 47.0%, mostly on colour questions; multi-turn examples give ~8 answers per pass over the image tokens.
LLAVA_DEMO_SHARED: dict[str, Any] = dict(num_train_scenes=6000, captions=True, eval_scenes=250,
                                         eval_questions_per_scene=2, batch_size=16, checkpoint_every=200,
                                         eval_batch_size=100)
LLAVA_DEMO_BASE: dict[str, Any] = dict(max_steps=1500, learning_rate=1e-3, warmup_steps=50, turns_per_image=8,
                                       hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
# DOVE's shortest codes (one token for a plain scene) drop the object's colour: a floor on the length (the tower's
# `min_tokens`; above it the length still follows the image) buys accuracy with tokens. On one base LLaVA (500
# held-out questions, grid 47.0% at 64 tokens): floor 4 -> 40.2% at 17.7 tokens, 8 -> 40.6% at 19.3, 16 -> 43.0% at
# 22.8, 24 -> 45.2% at 27.1. The new projector needs more steps than the LoRA alone (37.4% after 400, 42.0% after 1200).
LLAVA_DEMO_LORA: dict[str, Any] = dict(max_steps=1200, learning_rate=2e-3, warmup_steps=25, lora_r=16, lora_alpha=32,
                                       turns_per_image=8, feature="hidden", min_tokens=24)
# Q-DOVE starts from the DOVE LoRA (`init_adapter`): its null query is DOVE's code, and its query codes, trained to
# go on into the whole image, read like DOVE's. Query limits and steps picked on the validation split (500
# questions, grid 47.8%): query lengths 8-16 -> 46.6%, 12-16 -> 47.8%, 16-19 -> 45.0%; 400 further query-mode steps
# (one question per image) -> 47.2%. So the stage keeps the DOVE adapter (`max_steps=0`: saved with the Q-DOVE tower
# and scored); `dove llava-train --mode query --max-steps N` trains it further.
LLAVA_DEMO_QDOVE: dict[str, Any] = dict(turns_per_image=1, batch_size=32, num_train_scenes=1000, max_steps=0,
                                        query_min_tokens=12, query_max_tokens=16)

# The same rows on a pretrained language model (`dove demo --language-model PATH`), sized for SmolLM2-135M-Instruct
# within an hour on a 2-core CPU. Measured on one thread (CPU seconds, `benchmarks`-style): a training example costs
# 0.85 / 0.64 s in `align` (grid / DOVE at 27 tokens: a caption turn) and 2.3 / 2.0 s in `finetune` (8 turns), a
# held-out question 0.48 / 0.35 s (batch 16, 4 answer tokens), ~115-145 tokens/s: ~400x the tiny LM's cost.
# LLaVA-1.5's two stages per tower: `align` trains the projector alone on the dense caption turns (LM frozen);
# `finetune` trains LoRA + the projector on the questions and captions, 8 questions about one image per example
# (one pass over its image tokens trains 8 answers: ~33 tokens per answer instead of ~110 single-turn). Steps are
# few, so the rates are high. Q-DOVE keeps the DOVE finetune's adapter, as in the tiny recipe. 500 held-out
# questions per row. Expected: ~3,300 single-thread CPU seconds for the LLaVA rows, ~32 min on 2 idle cores
# (~46 min for the whole demo with its tokenizer stages); not run in full on the (shared) development machine.
LLAVA_LM_DEMO_SHARED: dict[str, Any] = dict(eval_scenes=250, eval_questions_per_scene=2, batch_size=16,
                                            checkpoint_every=10, eval_batch_size=32, log_every=2)
LLAVA_LM_DEMO_ALIGN: dict[str, Any] = dict(num_train_scenes=600, max_steps=20, learning_rate=2e-3, warmup_steps=3,
                                           eval_scenes=0)
LLAVA_LM_DEMO_FINETUNE: dict[str, Any] = dict(num_train_scenes=600, captions=True, turns_per_image=8, max_steps=30,
                                              learning_rate=1e-3, warmup_steps=3, lora_r=16, lora_alpha=32)
LLAVA_LM_DEMO_DOVE: dict[str, Any] = dict(feature="hidden", min_tokens=24)
LLAVA_LM_DEMO_QDOVE: dict[str, Any] = dict(turns_per_image=1, captions=False, num_train_scenes=50, max_steps=0,
                                           query_min_tokens=12, query_max_tokens=16)

# --- `dove eval compare` ------------------------------------------------------------------------------------------

# Adapter options of every comparison row: one batched VQGAN call per batch (faster on CPU; last-bit differences
# across batch sizes only).
COMPARE_MODEL_ARGS: dict[str, str] = {"batch_invariant": "false"}
# The demo's comparison: DOVE truncated to 16 tokens and to 28 (adaptive DOVE's mean count).
DEMO_COMPARE_FIXED_K: tuple[int, ...] = (16, 28)
# FastV's K in the token-budget rows: prune after the second decoder layer (the last-but-one on a shallower LM).
COMPARE_FASTV_LAYER = 2
