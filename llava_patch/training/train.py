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

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup
from transformers.modeling_outputs import BaseModelOutputWithPooling

from dove_vlm.llava.modeling_dove_llava import DoveLlavaForConditionalGeneration
from dove_vlm.llava.saved import (ADAPTER_DIR, PROJECTOR, TOWER_DIR, attach_adapter, build_processor,
                                  load_base_llava, load_tokenizer, merge_adapter, projector_of, text_fingerprint,
                                  write_lora_info)
from dove_vlm.llava.vqa import evaluate_vqa, majority_baseline, type_counts
from dove_vlm.vision_tower import DoveVisionTower
from train_tokenizer.checkpointing import load_torch_state, resume_point, save_checkpoint
from train_tokenizer.data import batch_indices
from train_tokenizer.train import check_output_dir

from .arguments import LlavaTrainingArguments
from .data import PromptEncoder, cached_split, group_examples, vqa_texts
from .features import TowerFeatureCache, tower_features


def tower_of(args: LlavaTrainingArguments) -> DoveVisionTower:
    """The tower a training stage swaps in, with its settings."""
    return DoveVisionTower.from_pretrained(args.tower, settings=args.tower_settings)


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
            from dove_vlm.llava.tiny import build_text_tokenizer, build_tiny_llava

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
    write_lora_info(output_dir, args.base_model, args.tower, tower.settings, text_fingerprint(raw_model.get_base_model()))


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
    records = cached_split("train", args.num_train_scenes, args.seed, image_size, args.questions_per_scene,
                            args.captions)
    timings["data_seconds"] = time.time() - t0
    examples = group_examples(records, args.turns_per_image, args.seed)
    encoder = PromptEncoder(processor)
    cache = None
    if not args.recompute_features and args.max_steps > start_step:
        t0 = time.time()
        cache = TowerFeatureCache(tower.to(accelerator.device), examples, desc=f"{args.mode.value} features")
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
                    desc=f"LLaVA {args.stage} ({args.mode.value})", dynamic_ncols=True,
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
        "stage": args.stage, "mode": args.mode.value, "feature": tower.config.feature, "steps": args.max_steps,
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
            test = cached_split("test", args.eval_scenes, args.seed, image_size, args.eval_questions_per_scene)
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
