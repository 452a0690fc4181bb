"""`dove llava-train`: LLaVA on DOVE / Q-DOVE towers, trained through accelerate.

Two stages, as a user of a real LLaVA-1.5 would run them:

- `base`: a tiny LLaVA (small Llama + a word-level tokenizer built here) on the fixed-length grid tower (all
  VQGAN latents of a DOVE checkpoint); the whole LM and the projector are trained. This stands in for a
  pretrained LLaVA, which cannot be downloaded here.
- `lora`: a base LLaVA (the `base` output, or a llava-1.5-hf style checkpoint) gets a DOVE / Q-DOVE tower
  (`--tower PATH --mode adaptive|query|fixed`); peft LoRA on the LM's attention and MLP projections, the
  projector trained in full (`modules_to_save`). The adapter is saved with `PeftModel.save_pretrained`, the
  tower beside it; `--merge` also writes a merged full model.

The loss is on the answer tokens only (and the end-of-sequence token after them). The loop reads top to
bottom like `dove train`: batch → forward → loss → step → log → checkpoint; `--resume` continues from the
newest complete checkpoint with the same batches. The tower is frozen, so its features are computed once per
(image, query) and cached (`--recompute-features` runs it on every batch instead; same features).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup
from transformers.modeling_outputs import BaseModelOutputWithPooling

from train_tokenizer.checkpointing import (
    load_torch_state,
    resume_point,
    save_checkpoint,
)
from train_tokenizer.data import batch_indices
from train_tokenizer.train import check_output_dir

from ..data.synthetic import COLORS, SHAPES
from ..vision_tower import DoveVisionTower, TowerMode
from .modeling_dove_llava import DoveLlavaForConditionalGeneration
from .processing_dove_llava import DoveLlavaProcessor
from .vqa import (CAPTION_QUESTION, build_prompt, build_vqa_split, evaluate_vqa, majority_baseline, record_query,
                  type_counts)

STAGES = ("base", "lora")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROJECTOR = "multi_modal_projector"
ADAPTER_DIR, TOWER_DIR, MERGED_DIR = "adapter", "tower", "merged"
LORA_INFO_FILE = "dove_llava_lora.json"
IGNORE_INDEX = -100


@dataclass
class LlavaTrainingArguments:
    """Everything `train_llava` reads (one `--flag` per field in `dove llava-train`).

    Args:
        output_dir: checkpoints, the final model (base) or adapter + tower (lora), `metrics.json`.
        stage: `base` (grid tower, full LM + projector trained) or `lora` (DOVE/Q-DOVE tower swapped into
            `base_model`; LoRA on the LM, projector in `modules_to_save`).
        tower: a DOVE checkpoint (`dove train` output) or a tower folder. Base stage: its VQGAN gives the grid
            features; lora stage: the tower swapped in.
        mode: tower mode; default `grid` for the base stage and `adaptive` for lora (`query` for Q-DOVE, `fixed`
            with `num_tokens`).
        num_tokens / feature: tower settings (`feature`: `tokens` = the k-dim DOVE tokens, `hidden` = generator
            hidden states).
        min_tokens: the adaptive / query tower's floor on an image's length (the length knob; `None` keeps the
            DOVE checkpoint's). Saved with the tower, so evaluation and `generate` use it too.
        query_min_tokens / query_max_tokens: the query tower's length limits of an image asked about (`None` keeps
            the Q-DOVE checkpoint's, which `dove train --query` sets for the tokenizer's own evaluation); saved
            with the tower like `min_tokens`.
        base_model: lora stage: a folder written by the base stage, or a LLaVA checkpoint (e.g. llava-1.5-7b-hf).
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
    mode: str | None = None
    num_tokens: int | None = None
    feature: str = "tokens"
    min_tokens: int | None = None
    query_min_tokens: int | None = None
    query_max_tokens: int | None = None
    base_model: str | None = None
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
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of: {', '.join(STAGES)}.")
        if self.mode is None:
            self.mode = TowerMode.GRID.value if self.stage == "base" else TowerMode.ADAPTIVE.value
        modes = [m.value for m in TowerMode]
        if self.mode not in modes:
            raise ValueError(f"unknown tower mode {self.mode!r}; choose one of: {', '.join(modes)}.")
        if self.tower is None:
            raise ValueError("--tower is required: a DOVE checkpoint (`dove train` output) or a tower folder.")
        if self.stage == "lora" and self.base_model is None:
            raise ValueError("--stage lora needs --base-model: a folder written by `dove llava-train --stage base` "
                             "or a LLaVA checkpoint.")
        if self.init_adapter is not None and self.stage != "lora":
            raise ValueError("--init-adapter starts a lora stage from an earlier one; use it with --stage lora.")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}.")
        if self.turns_per_image > 1 and self.mode == TowerMode.QUERY.value:
            raise ValueError("mode='query' encodes each image for one question; use --turns-per-image 1.")
        for name in ("max_steps", "batch_size", "turns_per_image", "checkpoint_every", "gradient_accumulation_steps", "eval_batch_size",
                     "num_train_scenes", "lora_r"):
            if name == "max_steps" and self.init_adapter is not None and self.max_steps == 0:
                continue  # the started adapter as it is, on this stage's tower (saved and scored)
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}"
                                 + (" (0 only with --init-adapter)." if name == "max_steps" else "."))

    @property
    def target_modules(self) -> list[str]:
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- data ---------------------------------------------------------------------------------------------------


def vqa_texts() -> list[str]:
    """Every question and answer the embedded scenes can produce (the tiny tokenizer's vocabulary)."""
    texts = [str(n) for n in range(10)] + ["yes", "no", "left", "right", "how many objects are there?",
                                            CAPTION_QUESTION, "nothing", ","]
    for shape in SHAPES:
        texts += [f"what colour is the {shape}?", f"is the {shape} on the left or the right?", shape]
    for color in COLORS:
        texts += [f"what shape is the {color} object?", color] + [f"is there a {color} {s}?" for s in SHAPES]
    return texts


def group_examples(records: list[dict], turns_per_image: int, seed: int) -> list[list[dict]]:
    """Training examples: lists of records about one image. `turns_per_image=1` gives one question per example;
    more gives multi-turn conversations (LLaVA-style) of up to that many of a scene's questions, in a
    deterministic shuffled order, so one pass over the image tokens trains several answers."""
    if turns_per_image == 1:
        return [[r] for r in records]
    by_scene: dict[int, list[dict]] = {}
    for r in records:
        by_scene.setdefault(r["scene"], []).append(r)
    examples = []
    for scene, items in by_scene.items():
        order = np.random.default_rng([seed, scene, 11]).permutation(len(items))
        items = [items[i] for i in order]
        examples += [items[i : i + turns_per_image] for i in range(0, len(items), turns_per_image)]
    return examples


class PromptEncoder:
    """Token ids and answer-only labels of a conversation about one image (one or more question/answer turns),
    from the processor's chat template (or LLaVA-1.5's prompt format); `collate` expands the `<image>` id to
    each image's length, pads on the right and masks everything but the answers (and their end-of-sequence
    tokens) in `labels`."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = processor.image_token_id
        self._cache: dict[tuple, tuple[list[int], list[int]]] = {}
        self._prompts: dict[str, str] = {}  # rendering the chat template dominated collate time

    def _render(self, turns: list[tuple[str, str]], upto: int, with_answer: bool) -> str:
        """The text of the first `upto` turns (the last one with or without its answer)."""
        eos = self.tokenizer.eos_token or ""
        text = ""
        for i, (question, answer) in enumerate(turns[:upto]):
            prompt = self._prompts.get(question)
            if prompt is None:
                prompt = self._prompts[question] = build_prompt(self.processor, question)
            if i > 0:  # later turns: the same format without the image
                prompt = prompt.replace(self.processor.image_token, "").replace("\n", "", 1)
            text += prompt
            if i < upto - 1 or with_answer:
                text += " " + answer + eos
        return text

    def encode(self, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """`(input_ids, labels)` with one `<image>` id (expanded later) and -100 outside the answers."""
        key = tuple(turns)
        if key not in self._cache:
            full = self._render(turns, len(turns), True)
            ids = self.tokenizer(full)["input_ids"]
            labels = [IGNORE_INDEX] * len(ids)
            for i in range(1, len(turns) + 1):
                start = len(self.tokenizer(self._render(turns, i, False))["input_ids"])
                upto = self.tokenizer(self._render(turns, i, True))["input_ids"]
                stop = len(upto)
                if ids[:stop] != upto:
                    raise ValueError("the tokenizer does not split the conversation at turn boundaries; use one "
                                     "question per image (--turns-per-image 1).")
                labels[start:stop] = ids[start:stop]
            if ids.count(self.image_token_id) != 1:
                raise ValueError(f"the prompt {full!r} has {ids.count(self.image_token_id)} image tokens after "
                                 "tokenization; expected exactly one.")
            self._cache[key] = (ids, labels)
        return self._cache[key]

    def collate(self, examples: list[list[dict]], lengths: list[int]) -> dict[str, torch.Tensor]:
        rows, label_rows = [], []
        for example, length in zip(examples, lengths):
            ids, labels = self.encode([(r["question"], r["answer"]) for r in example])
            at = ids.index(self.image_token_id)
            rows.append(ids[:at] + [self.image_token_id] * int(length) + ids[at + 1:])
            label_rows.append(labels[:at] + [IGNORE_INDEX] * int(length) + labels[at + 1:])
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(rows, label_rows)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tower_features(tower: DoveVisionTower, records: list[dict]) -> list[torch.Tensor]:
    """The frozen tower's `(L_i, D)` features of each record's image (with its question as the query when the
    tower takes one). Training needs no bit-exact batch invariance, so the batched VQGAN call runs (~2.5x faster
    on CPU than image by image)."""
    device = next(tower.parameters()).device
    pixels = tower.image_processor([r["image"] for r in records], return_tensors="pt")["pixel_values"].to(device)
    queries = [record_query(r) for r in records] if tower.supports_queries else None
    with torch.no_grad(), tower.dove.batch_invariance(False):
        return [f.detach() for f in tower(pixels, queries=queries).features]


class TowerFeatureCache:
    """The frozen tower's features of every training example, computed once: one `(L_i, D)` tensor per
    (image, query) pair. The tower is frozen and stays in eval mode, so these are the features it would give
    at every step (up to last-bit differences of the batched VQGAN call)."""

    def __init__(self, tower: DoveVisionTower, examples: list[list[dict]], batch_size: int = 64,
                 desc: str = "features"):
        self.use_queries = tower.supports_queries
        self._keys = [self.key(example) for example in examples]
        firsts: dict[tuple, dict] = {}
        for key, example in zip(self._keys, examples):
            firsts.setdefault(key, example[0])
        ordered = list(firsts)
        self._features: dict[tuple, torch.Tensor] = {}
        for start in tqdm(range(0, len(ordered), batch_size), desc=desc, leave=False, dynamic_ncols=True):
            keys = ordered[start : start + batch_size]
            features = tower_features(tower, [firsts[k] for k in keys])
            # A copy per feature: a slice would keep its whole padded batch tensor alive in the cache.
            self._features.update({k: f.to("cpu", torch.float32, copy=True) for k, f in zip(keys, features)})

    def key(self, example: list[dict]) -> tuple:
        return (id(example[0]["image"]), record_query(example[0]) if self.use_queries else None)

    def features(self, indices: list[int]) -> list[torch.Tensor]:
        return [self._features[self._keys[i]] for i in indices]

    def lengths(self) -> np.ndarray:
        return np.array([len(self._features[k]) for k in self._keys])


# --- models -------------------------------------------------------------------------------------------------


def load_tower(path: str, mode: str, num_tokens: int | None = None, feature: str = "tokens",
               min_tokens: int | None = None, query_min_tokens: int | None = None,
               query_max_tokens: int | None = None) -> DoveVisionTower:
    """A frozen `DoveVisionTower` from a DOVE checkpoint or tower folder, in `mode` (length limits given as not
    `None` override the checkpoint's)."""
    limits = {"min_tokens": min_tokens, "query_min_tokens": query_min_tokens, "query_max_tokens": query_max_tokens}
    overrides = {k: v for k, v in limits.items() if v is not None}
    return DoveVisionTower.from_pretrained(path, mode=mode, num_tokens=num_tokens, feature=feature, **overrides)


def tower_of(args: LlavaTrainingArguments) -> DoveVisionTower:
    """The tower a training stage swaps in, with its settings."""
    return load_tower(args.tower, args.mode, args.num_tokens, args.feature, args.min_tokens, args.query_min_tokens,
                      args.query_max_tokens)


def load_base_llava(path: str) -> DoveLlavaForConditionalGeneration:
    """A base LLaVA (a `--stage base` folder or a LLaVA checkpoint); refuses checkpoints whose projector or
    language-model weights are missing, naming them."""
    if not os.path.exists(path) and path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"base model {path!r} does not exist; pass a folder written by "
                                "`dove llava-train --stage base` or a LLaVA checkpoint.")
    model, info = DoveLlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "vision_tower" not in k and "lm_head" not in k]
    if missing:
        projector = [k for k in missing if PROJECTOR in k]
        what = "the multimodal projector" if projector else "language-model weights"
        raise ValueError(f"the base model {path!r} is missing {what} ({', '.join(sorted(missing)[:4])}); it would be "
                         "randomly initialised. Pass a complete LLaVA checkpoint (projector + language model).")
    return model


def build_processor(tower: DoveVisionTower, tokenizer) -> DoveLlavaProcessor:
    processor = DoveLlavaProcessor(image_processor=tower.image_processor, tokenizer=tokenizer)
    return processor.attach_tower(tower)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def text_fingerprint(model) -> dict[str, Any]:
    """What a LoRA adapter depends on: the language model's shape."""
    text = model.config.text_config
    return {"model_type": text.model_type, "hidden_size": text.hidden_size, "num_hidden_layers": text.num_hidden_layers,
            "intermediate_size": getattr(text, "intermediate_size", None), "vocab_size": text.vocab_size}


def lora_config(args: LlavaTrainingArguments):
    from peft import LoraConfig

    names = "|".join(args.target_modules)
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        # Only the language model's projections (never the frozen DOVE tower's layers).
        target_modules=rf".*language_model\..*\.({names})",
        modules_to_save=[PROJECTOR],
    )


def check_adapter(adapter_dir: str | os.PathLike, base_model) -> None:
    """Clear errors before peft loads `adapter_dir` onto `base_model`: an adapter trained on another base model
    (language-model shape or weight shapes that differ), or an adapter without the projector."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter in {adapter_dir} (adapter_config.json is missing).")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"the LoRA adapter in {adapter_dir} has no adapter_model.safetensors.")
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118 (not a dict)
    if not any(PROJECTOR in k for k in shapes):
        raise ValueError(f"the LoRA adapter in {adapter_dir} has no projector weights ({PROJECTOR} in "
                         "modules_to_save); without them the new tower's projector would be random. Retrain with "
                         "`dove llava-train --stage lora` (which saves it).")
    info_file = adapter_dir.parent / LORA_INFO_FILE
    if info_file.is_file():
        saved = json.loads(info_file.read_text()).get("text_model", {})
        current = text_fingerprint(base_model)
        diff = {k: (saved[k], current.get(k)) for k in saved if saved[k] != current.get(k)}
        if diff:
            detail = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
            raise ValueError(f"the LoRA adapter in {adapter_dir} was trained on another base model: its language "
                             f"model differs ({detail}; adapter vs given base).")
    params = dict(base_model.named_parameters())
    for key, shape in shapes.items():
        if ".lora_A." in key or ".lora_B." in key:
            module = key.split(".lora_")[0].removeprefix("base_model.model.")
            weight = params.get(module + ".weight")
            if weight is None:
                raise ValueError(f"the LoRA adapter in {adapter_dir} targets {module}, which the given base model does "
                                 "not have: the adapter was trained on another base model.")
            expected = weight.shape[1] if ".lora_A." in key else weight.shape[0]
            got = shape[1] if ".lora_A." in key else shape[0]
            if expected != got:
                raise ValueError(f"the LoRA adapter in {adapter_dir} was trained on another base model: {module} is "
                                 f"{tuple(weight.shape)} in the given base model but the adapter expects width {got}.")
        elif PROJECTOR in key and key.endswith(".weight"):
            module = key.replace(".modules_to_save.default", "").removeprefix("base_model.model.")
            weight = params.get(module)
            if weight is not None and tuple(weight.shape) != shape:
                raise ValueError(f"the adapter's projector {module} is {shape} but the model's is "
                                 f"{tuple(weight.shape)}: the adapter was trained for another vision tower or base model.")


def load_llava_lora(output_dir: str | os.PathLike, merged: bool = False, base_model: str | None = None):
    """A model written by `--stage lora`, ready for `generate`: `(model, processor)`.

    Args:
        output_dir: the stage's output folder (`adapter/`, `tower/`, `dove_llava_lora.json`, the tokenizer).
        merged: load `merged/` (written with `--merge`) instead of base + adapter.
        base_model: override the base model path recorded at training time.
    """
    root = Path(output_dir)
    if merged:
        if not (root / MERGED_DIR / "config.json").is_file():
            raise FileNotFoundError(f"no merged model in {root / MERGED_DIR}; train with --merge or call merge_adapter.")
        model = DoveLlavaForConditionalGeneration.from_pretrained(root / MERGED_DIR).eval()
        tower = model.model.vision_tower
    else:
        info_file = root / LORA_INFO_FILE
        if not info_file.is_file():
            raise FileNotFoundError(f"{root} holds no `dove llava-train --stage lora` output ({LORA_INFO_FILE} missing).")
        info = json.loads(info_file.read_text())
        model = load_base_llava(base_model or info["base_model"])
        tower = DoveVisionTower.from_pretrained(root / TOWER_DIR)
        model.set_vision_tower(tower)
        model = attach_adapter(model, root / ADAPTER_DIR).eval()
    processor = build_processor(tower, load_tokenizer(str(root)))
    return model, processor


def attach_adapter(model, adapter_dir: str | os.PathLike, is_trainable: bool = False):
    """`PeftModel.from_pretrained` after `check_adapter`'s clear errors."""
    from peft import PeftModel

    check_adapter(adapter_dir, model)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)


def merge_adapter(peft_model, output_dir: str | os.PathLike, processor=None) -> Path:
    """Merge the LoRA weights (and the trained projector) into a copy-free full model in `output_dir/merged`."""
    merged = peft_model.merge_and_unload()
    path = Path(output_dir) / MERGED_DIR
    merged.save_pretrained(path)
    if processor is not None:
        processor.tokenizer.save_pretrained(path)
    return path


# --- training -----------------------------------------------------------------------------------------------


def build_model(args: LlavaTrainingArguments, resume_from: Path | None):
    """The model to train, its tower and processor, and the base model it came from (lora stage)."""
    from peft import get_peft_model

    if args.stage == "base":
        if resume_from is not None:
            model = DoveLlavaForConditionalGeneration.from_pretrained(resume_from / "model")
            tower = model.model.vision_tower
            tokenizer = load_tokenizer(str(resume_from / "model"))
        else:
            from .tiny import build_text_tokenizer, build_tiny_llava

            tower = tower_of(args)
            tokenizer = build_text_tokenizer(vqa_texts())
            torch.manual_seed(args.seed)
            model = build_tiny_llava(tower, tokenizer, hidden_size=args.hidden_size,
                                     num_hidden_layers=args.num_hidden_layers,
                                     num_attention_heads=args.num_attention_heads,
                                     num_key_value_heads=args.num_attention_heads,
                                     intermediate_size=args.intermediate_size)
        model.requires_grad_(True)
        model.model.vision_tower.freeze()
        return model, tower, build_processor(tower, tokenizer)

    base = load_base_llava(args.base_model)
    tokenizer = load_tokenizer(args.base_model)
    tower = tower_of(args)
    torch.manual_seed(args.seed)
    base.set_vision_tower(tower)
    base.requires_grad_(False)
    if resume_from is not None:
        model = attach_adapter(base, resume_from / "model", is_trainable=True)
    elif args.init_adapter is not None:
        model = attach_adapter(base, Path(args.init_adapter) / ADAPTER_DIR, is_trainable=True)
    else:
        model = get_peft_model(base, lora_config(args))
    tower.freeze()
    return model, tower, build_processor(tower, tokenizer)


def projector_of(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.multi_modal_projector


def _save_final(args, output_dir: Path, raw_model, tower, processor) -> None:
    if args.stage == "base":
        raw_model.save_pretrained(output_dir)
        processor.tokenizer.save_pretrained(output_dir)
        tower.image_processor.save_pretrained(output_dir)
        return
    raw_model.save_pretrained(output_dir / ADAPTER_DIR)
    tower.save_pretrained(output_dir / TOWER_DIR)
    processor.tokenizer.save_pretrained(output_dir)
    tower.image_processor.save_pretrained(output_dir)
    info = {"base_model": str(args.base_model), "tower": str(args.tower), "mode": args.mode,
            "feature": args.feature, "num_tokens": args.num_tokens, "text_model": text_fingerprint(raw_model.get_base_model())}
    (output_dir / LORA_INFO_FILE).write_text(json.dumps(info, indent=2))


@functools.lru_cache(maxsize=4)
def _cached_split(split: str, num_scenes: int, seed: int, image_size: int, questions_per_scene: int | None,
                  captions: bool = False) -> list[dict]:
    """`build_vqa_split`, rendered once per process (the demo's stages share their scenes)."""
    return build_vqa_split(split, num_scenes, seed, image_size, questions_per_scene, captions=captions)


def train_llava(args: LlavaTrainingArguments) -> dict:
    """Train one stage as `args` says; returns the metrics (also written to `output_dir/metrics.json`)."""
    started_all = time.time()
    output_dir = check_output_dir(args.output_dir)
    accelerator = Accelerator(mixed_precision=args.mixed_precision,
                              gradient_accumulation_steps=args.gradient_accumulation_steps)
    set_seed(args.seed)
    resume_from, state = resume_point(output_dir, args.resume, accelerator.print)
    start_step = state.get("step", 0)

    model, tower, processor = build_model(args, resume_from)
    image_size = tower.config.dove_config.image_size
    timings: dict[str, float] = {}
    t0 = time.time()
    records = _cached_split("train", args.num_train_scenes, args.seed, image_size, args.questions_per_scene,
                            args.captions)
    timings["data_seconds"] = time.time() - t0
    examples = group_examples(records, args.turns_per_image, args.seed)
    encoder = PromptEncoder(processor)
    cache = None
    if not args.recompute_features and args.max_steps > start_step:
        t0 = time.time()
        cache = TowerFeatureCache(tower.to(accelerator.device), examples, desc=f"{args.mode} features")
        timings["feature_cache_seconds"] = time.time() - t0

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    if resume_from is not None:
        optimizer.load_state_dict(load_torch_state(resume_from / "optimizer.pt"))
        scheduler.load_state_dict(load_torch_state(resume_from / "scheduler.pt"))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw_model = accelerator.unwrap_model(model)
    projector = projector_of(raw_model)
    history: list[dict] = state.get("history", [])
    num_trainable = sum(p.numel() for p in trainable)

    model.train()
    progress = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps,
                    desc=f"LLaVA {args.stage} ({args.mode})", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    started = time.time()
    loss = torch.tensor(float("nan"))
    for step in progress:
        for micro in range(args.gradient_accumulation_steps):
            micro_step = step * args.gradient_accumulation_steps + micro
            indices = batch_indices(len(examples), args.batch_size, micro_step, args.seed,
                                    accelerator.process_index, accelerator.num_processes)
            batch_examples = [examples[i] for i in indices]
            with accelerator.accumulate(model), accelerator.autocast():
                # The frozen tower's features (cached, or computed once for this batch) go through the
                # trainable projector here and reach the model as its image features.
                features = (cache.features(indices) if cache is not None
                            else tower_features(tower, [e[0] for e in batch_examples]))
                batch = encoder.collate(batch_examples, [len(f) for f in features])
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                packed = torch.cat(features).to(accelerator.device, projector_dtype(projector))
                projected = list(projector(packed).split([len(f) for f in features]))
                image = BaseModelOutputWithPooling(pooler_output=projected)
                out = model(**batch, mm_encoder_outputs={"image": image})
                loss = out.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --learning-rate or use fp32.")
        if step % args.log_every == 0 or step == args.max_steps - 1:
            history.append({"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
            progress.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if accelerator.is_main_process and (done % args.checkpoint_every == 0 or done == args.max_steps):
            save_checkpoint(output_dir, done, raw_model, optimizer, scheduler,
                            {"history": history, "args": args.to_dict()}, keep=args.keep_checkpoints)
            if args.stage == "base":
                processor.tokenizer.save_pretrained(output_dir / f"checkpoint-{done}" / "model")
    timings["train_seconds"] = time.time() - started

    metrics: dict[str, Any] = {
        "stage": args.stage, "mode": args.mode, "feature": args.feature, "steps": args.max_steps,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate, "num_train_questions": len(records),
        "num_train_examples": len(examples), "turns_per_image": args.turns_per_image,
        "num_train_scenes": args.num_train_scenes, "trainable_parameters": num_trainable,
        "train_type_counts": type_counts(records), "history": history, "args": args.to_dict(),
    }
    if cache is not None:
        lengths = cache.lengths()
        metrics["train_tokens_per_image_mean"] = float(lengths.mean())
    if accelerator.is_main_process:
        model.eval()
        _save_final(args, output_dir, raw_model, tower, processor)
        if args.eval_scenes:
            t0 = time.time()
            test = _cached_split("test", args.eval_scenes, args.seed, image_size, args.eval_questions_per_scene)
            metrics["eval"] = evaluate_vqa(raw_model, processor, test, batch_size=args.eval_batch_size)
            metrics["majority_baseline"] = majority_baseline([r for r in records if r["type"] != "caption"], test)
            metrics["eval_type_counts"] = type_counts(test)
            timings["eval_seconds"] = time.time() - t0
        if args.merge:
            if args.stage != "lora":
                accelerator.print("--merge applies to --stage lora (the base stage already writes a full model).")
            else:
                t0 = time.time()
                merge_adapter(raw_model, output_dir, processor)
                timings["merge_seconds"] = time.time() - t0
        timings["total_seconds"] = time.time() - started_all
        metrics["timings"] = timings
        with open(output_dir / "metrics.json", "w") as handle:
            json.dump(metrics, handle, indent=2)
    accelerator.wait_for_everyone()
    return metrics


def projector_dtype(projector) -> torch.dtype:
    return next(projector.parameters()).dtype


def format_llava_report(metrics: dict, output_dir: str) -> str:
    """A short human-readable report of a `train_llava` run."""
    lines = [f"LLaVA {metrics['stage']} stage ({metrics['mode']} tower) written to {output_dir}",
             (f"{metrics['steps']} steps × batch {metrics['batch_size']} on {metrics['num_train_questions']} questions; "
              f"{metrics['trainable_parameters']:,} trainable parameters")]
    ev = metrics.get("eval")
    if ev:
        per_type = ", ".join(f"{t} {100 * a:.1f}" for t, a in ev["accuracy_by_type"].items())
        lines.append(f"held-out VQA accuracy {100 * ev['accuracy']:.1f}% on {ev['num_questions']} questions ({per_type}); "
                     f"tokens per image {ev['tokens_per_image_mean']:.1f} ± {ev['tokens_per_image_std']:.1f}")
        base = metrics["majority_baseline"]
        lines.append(f"majority baselines: overall '{base['overall']['answer']}' {100 * base['overall']['accuracy']:.1f}%, "
                     f"per question type {100 * base['per_type']['accuracy']:.1f}%")
    timings = metrics.get("timings", {})
    if timings:
        lines.append("timings: " + ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in timings.items()))
    return "\n".join(lines)
