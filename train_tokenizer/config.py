"""Training arguments of `dove train`: one dataclass, filled from a preset and then from command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dove_vlm.presets import preset_training


@dataclass
class TrainingArguments:
    """Everything the tokenizer training loop reads. Preset values fill whatever the user leaves as `None`.

    Args:
        output_dir: where checkpoints, the final model, `metrics.json` and plots go.
        preset: `tiny` or `paper` (model shape and training recipe).
        data: `synthetic`, `synthetic:N`, an image folder, a `datasets` save_to_disk folder or `hf:NAME[:SPLIT]`
            (streamed); with `query`, grounding data (see `query`).
        max_steps / batch_size / learning_rate / warmup_steps / gradient_accumulation_steps: the optimiser.
        mixed_precision: `no` (fp32) or `bf16` (fp16 is refused: the paper trains in bf16 or fp32).
        vqgan / generator_init: pretrained parts (folder or hub id); without `vqgan`, the preset's VQGAN stage
            trains a VQGAN for `vqgan_steps` on the data first, then freezes it.
        lpips_trunk: local VGG/AlexNet trunk weights for LPIPS (a random trunk is used otherwise).
        latent_weight: weight of an auxiliary MSE between predicted and true (normalised) VQGAN latents. Beyond
            the paper: the frozen VQGAN decoder makes the pixel loss badly conditioned for small models, and
            the latent target speeds up learning; the EOS loss and its threshold still use the paper's L_rec.
        eos_weight_start / eos_weight_end / eos_warmup_steps / eos_ramp_steps: the growing λ_eos schedule.
        threshold_window: steps averaged by the dynamic EOS threshold (100 in the paper).
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
        query_tokenizer: a transformers tokenizer folder for the queries (default: a word-level tokenizer of
            the embedded scenes' phrases and questions).
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
    mixed_precision: str = "no"
    num_train_scenes: int | None = None
    vqgan: str | None = None
    vqgan_steps: int | None = None
    vqgan_batch_size: int | None = None
    vqgan_learning_rate: float | None = None
    generator_init: str | None = None
    lpips_trunk: str | None = None
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
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r} (fp16 overflows here).")
        if not 0.0 <= self.query_null_prob <= 1.0:
            raise ValueError(f"query_null_prob must be in [0, 1], got {self.query_null_prob}.")
        if self.query_threshold not in ("teacher", "running"):
            raise ValueError(f"query_threshold must be 'teacher' or 'running', got {self.query_threshold!r}.")
        if self.query_threshold_scale <= 0:
            raise ValueError(f"query_threshold_scale must be > 0, got {self.query_threshold_scale}.")
        if self.query_min_tokens < 1 or (self.query_max_tokens is not None and self.query_max_tokens < self.query_min_tokens):
            raise ValueError(f"need 1 <= query_min_tokens ({self.query_min_tokens}) <= query_max_tokens "
                             f"({self.query_max_tokens}).")
        if not 0.0 <= self.query_full_prob <= 1.0:
            raise ValueError(f"query_full_prob must be in [0, 1], got {self.query_full_prob}.")
        if not 0.0 <= self.truncation_prob <= 1.0:
            raise ValueError(f"truncation_prob must be in [0, 1], got {self.truncation_prob}.")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}.")
        for name in ("max_steps", "batch_size", "checkpoint_every", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
