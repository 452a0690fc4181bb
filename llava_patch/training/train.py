"""`dove llava-train`: LLaVA on DOVE / Q-DOVE towers, trained through accelerate.

LLaVA-1.5's recipe on any pretrained causal LM (`--language-model`: hub id, folder or `.gguf` file):

- `align`: the projector alone, the LM frozen, on caption data (the embedded scenes' dense captions, or the
  user's `--data-path`); saves the projector, the tower and the tokenizer (with `<image>`), and records the LM.
- `finetune` (or its older name `lora`): a base LLaVA (an `align` / `base` folder, or a llava-1.5-hf style
  checkpoint) gets a DOVE / Q-DOVE tower (`--tower PATH --mode adaptive|query|fixed`); peft LoRA on the LM's
  attention and MLP projections, the projector trained in full (`modules_to_save`). The adapter is saved with
  `PeftModel.save_pretrained`, the tower beside it; `--merge` also writes a merged full model.
- `base`: the whole LM and the projector trained: a tiny Llama with a word-level tokenizer built here (the
  fastest CPU demo; on the fixed-length grid tower, all VQGAN latents of a DOVE checkpoint), or `--language-model`.

The loss is on the answer tokens only (and the end-of-turn tokens after them), averaged over every answer
token of the step across processes, so that N processes train what one process does on N times the batch. The
examples come through a torch DataLoader whose batches are a pure function of (seed, step, process), so
`--resume` continues with the same batches. The loop reads top to bottom like `dove train`: batch → forward →
loss → step → log → checkpoint. The tower is frozen, so its features are computed once per (image, query) and
cached (`--recompute-features` runs it on every batch instead; same features).
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

from dove_vlm.llava.language_model import build_llava_on_language_model, fresh_projector
from dove_vlm.llava.modeling_dove_llava import DoveLlavaForConditionalGeneration
from dove_vlm.llava.saved import (ADAPTER_DIR, PROJECTOR, TOWER_DIR, attach_adapter, build_processor,
                                  load_base_llava, load_tokenizer, merge_adapter,
                                  projector_of, save_aligned_projector, text_fingerprint, write_align_info,
                                  write_lora_info)
from dove_vlm.llava.vqa import evaluate_vqa, majority_baseline, type_counts
from dove_vlm.encoder_tower import load_tower
from dove_vlm.vision_tower import DoveVisionTower
from train_tokenizer.checkpointing import load_safetensors_state, load_torch_state, resume_point, save_checkpoint
from train_tokenizer.train import check_output_dir

from .arguments import LORA_STAGES, LlavaTrainingArguments
from .data import PromptEncoder, cached_split, group_examples, vqa_texts
from .features import TowerFeatureCache, feature_record, tower_features
from .loop import ProjectorCheckpoint, answer_loss, example_loader


def tower_of(args: LlavaTrainingArguments) -> DoveVisionTower:
    """The tower a training stage swaps in, with its settings (`efficientnet-lite0`: the pretrained encoder)."""
    return load_tower(args.tower, settings=args.tower_settings)


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


# --- the training data ----------------------------------------------------------------------------------------


def training_examples(args: LlavaTrainingArguments, image_size: int) -> tuple[list[dict], list[list[dict]]]:
    """`(records, examples)`: the user's conversations (`data_path`), or the embedded scenes' questions (the
    align stage: their caption turns only, LLaVA's alignment data)."""
    if args.data_path is not None:
        from .conversations import load_conversations

        examples = load_conversations(args.data_path, args.image_folder, args.bad_samples,
                                      split_turns=args.mode.value == "query")
        return [r for e in examples for r in e if r.get("label", True)], examples
    captions = args.captions or args.stage == "align"
    records = cached_split("train", args.num_train_scenes, args.seed, image_size, args.questions_per_scene, captions)
    if args.stage == "align":
        records = [r for r in records if r["type"] == "caption"]
    return records, group_examples(records, args.turns_per_image, args.seed)


def evaluation_records(args: LlavaTrainingArguments, image_size: int) -> list[dict]:
    """The questions scored at the end: the user's VQA file (`eval_data_path`), or the embedded held-out split."""
    if args.eval_data_path is None:
        return cached_split("test", args.eval_scenes, args.seed, image_size, args.eval_questions_per_scene)
    from dove_vlm.data.images import load_image
    from eval.compare import read_records

    records = read_records(args.eval_data_path)
    for r in records:
        for field in ("image", "question", "answer"):
            if not isinstance(r.get(field), str) or not r[field].strip():
                raise ValueError(f"{args.eval_data_path}: record {r.get('id')!r} needs a non-empty {field!r}.")
    return [dict(r, image=load_image(r["image"]), type=r.get("type", "user")) for r in records]


# --- the model ------------------------------------------------------------------------------------------------


def _language_model_llava(args: LlavaTrainingArguments, tower: DoveVisionTower):
    """`(model, tokenizer)`: the pretrained LM of `--language-model` under a new projector on `tower`."""
    torch.manual_seed(args.seed)
    return build_llava_on_language_model(tower, args.language_model, chat_template=args.chat_template)


def build_model(args: LlavaTrainingArguments, resume_from: Path | None, extra_texts: list[str] | None = None):
    """The model to train, its tower and processor (see the module docstring for what each stage trains)."""
    from peft import get_peft_model

    if args.stage == "base":
        if resume_from is not None:
            model = DoveLlavaForConditionalGeneration.from_pretrained(resume_from / "model")
            tower = model.model.vision_tower
            tokenizer = load_tokenizer(str(resume_from / "model"))
        elif args.language_model is not None:
            tower = tower_of(args)
            model, tokenizer = _language_model_llava(args, tower)
        else:
            from dove_vlm.llava.tiny import build_text_tokenizer, build_tiny_llava

            tower = tower_of(args)
            tokenizer = build_text_tokenizer(vqa_texts() + list(extra_texts or []))
            torch.manual_seed(args.seed)
            model = build_tiny_llava(tower, tokenizer, hidden_size=args.hidden_size,
                                     num_hidden_layers=args.num_hidden_layers,
                                     num_attention_heads=args.num_attention_heads,
                                     num_key_value_heads=args.num_attention_heads,
                                     intermediate_size=args.intermediate_size)
        model.requires_grad_(True)
        model.model.vision_tower.freeze()
        return model, tower, build_processor(tower, tokenizer)

    tower = tower_of(args)
    if args.language_model is not None:
        base, tokenizer = _language_model_llava(args, tower)
    else:
        base, tokenizer = load_base_llava(args.base_model), load_tokenizer(args.base_model)
        torch.manual_seed(args.seed)
        base.set_vision_tower(tower)
        if args.stage == "align":  # LLaVA's alignment starts from a new projector
            fresh_projector(base)
    base.requires_grad_(False)
    tower.freeze()
    if args.stage == "align":
        projector = projector_of(base)
        if resume_from is not None:
            projector.load_state_dict(load_safetensors_state(resume_from / "model" / "model.safetensors"))
        projector.requires_grad_(True)
        return base, tower, build_processor(tower, tokenizer)
    if resume_from is not None:
        model = attach_adapter(base, resume_from / "model", is_trainable=True)
    elif args.init_adapter is not None:
        model = attach_adapter(base, Path(args.init_adapter) / ADAPTER_DIR, is_trainable=True)
    else:
        model = get_peft_model(base, lora_config(args))
    tower.freeze()
    return model, tower, build_processor(tower, tokenizer)


def _source(args: LlavaTrainingArguments) -> tuple[str, str]:
    return (args.language_model, "language_model") if args.language_model is not None else (args.base_model, "base_model")


def _save_final(args, output_dir: Path, raw_model, tower, processor) -> None:
    if args.stage == "base":
        raw_model.save_pretrained(output_dir)
        processor.tokenizer.save_pretrained(output_dir)
        tower.image_processor.save_pretrained(output_dir)
        return
    tower.save_pretrained(output_dir / TOWER_DIR)
    processor.tokenizer.save_pretrained(output_dir)
    tower.image_processor.save_pretrained(output_dir)
    source, key = _source(args)
    if args.stage == "align":
        save_aligned_projector(raw_model, output_dir)
        write_align_info(output_dir, source, key, args.tower, tower.settings, text_fingerprint(raw_model))
        return
    raw_model.save_pretrained(output_dir / ADAPTER_DIR)
    write_lora_info(output_dir, source, args.tower, tower.settings, text_fingerprint(raw_model.get_base_model()),
                    source_key=key)


def _fit_examples(encoder: PromptEncoder, examples: list[list[dict]], max_image_tokens: int) -> list[list[dict]]:
    """Every example within the context (cut or left out, with warnings; see `PromptEncoder.fit`)."""
    fitted = [encoder.fit(example, max_image_tokens) for example in examples]
    kept = [e for e in fitted if e is not None]
    if not kept:
        raise ValueError(f"no training example fits the context of {encoder.max_length} tokens with up to "
                         f"{max_image_tokens} image tokens; raise --model-max-length or use fewer tokens per image.")
    return kept


# --- training -------------------------------------------------------------------------------------------------


def train_llava(args: LlavaTrainingArguments, step_callback=None) -> dict:
    """Train one stage as `args` says; returns the metrics (also written to `output_dir/metrics.json`).
    `step_callback(steps_done)`, when given, runs after every optimizer step (e.g. `dove demo`'s `ThreadBoost`)."""
    started_all = time.time()
    output_dir = check_output_dir(args.output_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=args.mixed_precision,
                              gradient_accumulation_steps=args.gradient_accumulation_steps)
    set_seed(args.seed)
    resume_from, state = resume_point(output_dir, args.resume, accelerator.print)
    start_step = state.get("step", 0)

    timings: dict[str, float] = {}
    t0 = time.time()
    image_size = tower_of(args).config.image_size
    records, examples = training_examples(args, image_size)
    timings["data_seconds"] = time.time() - t0
    extra = [t for r in records for t in (r["question"], r["answer"])] if args.data_path else None
    model, tower, processor = build_model(args, resume_from, extra)
    encoder = PromptEncoder(processor, args.model_max_length)
    examples = _fit_examples(encoder, examples, tower.max_tokens)
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
    # The scheduler steps once per optimizer step here; accelerate's wrapper would step it once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    projector = projector_of(raw_model)
    to_save = ProjectorCheckpoint(projector) if args.stage == "align" else raw_model
    history: list[dict] = state.get("history", [])
    num_trainable = sum(p.numel() for p in trainable)
    accumulation = args.gradient_accumulation_steps
    loader = example_loader(examples, args.batch_size, args.seed, accelerator.process_index,
                            accelerator.num_processes, start_step * accumulation, args.max_steps * accumulation,
                            load_images=cache is None, num_workers=args.dataloader_num_workers)
    batches = iter(loader)

    model.train()
    progress = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps,
                    desc=f"LLaVA {args.stage} ({args.mode.value})", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    started = time.time()
    loss = torch.tensor(float("nan"))
    for step in progress:
        for _ in range(accumulation):
            items = next(batches)
            indices, batch_examples = [i for i, _ in items], [e for _, e in items]
            with accelerator.accumulate(model), accelerator.autocast():
                # The frozen tower's features (cached, or computed once for this batch) go through the
                # trainable projector here and reach the model as its image features.
                features = (cache.features(indices) if cache is not None
                            else tower_features(tower, [feature_record(e) for e in batch_examples]))
                batch = encoder.collate(batch_examples, [len(f) for f in features])
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with_image = [f for f in features if len(f)]
                packed = torch.cat(features).to(accelerator.device, projector_dtype(projector))
                projected = projector(packed)
                image = (BaseModelOutputWithPooling(pooler_output=list(projected.split([len(f) for f in with_image])))
                         if with_image else None)
                loss = answer_loss(model, batch, image, accelerator) + 0.0 * projected.sum()  # the projector takes part
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --learning-rate or use fp32.")
        if step % args.log_every == 0 or step == args.max_steps - 1:
            logged = accelerator.reduce(loss.detach(), reduction="mean").item()  # the step's loss over all processes
            history.append({"step": step, "loss": logged, "lr": scheduler.get_last_lr()[0]})
            progress.set_postfix(loss=f"{logged:.4f}")
        done = step + 1
        if step_callback is not None:
            step_callback(done)
        if accelerator.is_main_process and (done % args.checkpoint_every == 0 or done == args.max_steps):
            save_checkpoint(output_dir, done, to_save, optimizer, scheduler,
                            {"history": history, "args": args.to_dict()}, keep=args.keep_checkpoints)
            if args.stage == "base":
                processor.tokenizer.save_pretrained(output_dir / f"checkpoint-{done}" / "model")
    timings["train_seconds"] = time.time() - started

    metrics: dict[str, Any] = {
        "stage": args.stage, "mode": args.mode.value, "feature": getattr(tower.config, "feature", "encoder"), "steps": args.max_steps,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate, "num_train_questions": len(records),
        "num_train_examples": len(examples), "turns_per_image": args.turns_per_image,
        "num_train_scenes": args.num_train_scenes, "trainable_parameters": num_trainable,
        "num_processes": accelerator.num_processes, "language_model": args.language_model or (
            "tiny (from scratch)" if args.stage == "base" else f"of {args.base_model}"),
        "train_type_counts": type_counts(records), "history": history, "args": args.to_dict(),
    }
    if cache is not None:
        lengths = [n for n in cache.lengths() if n]
        metrics["train_tokens_per_image_mean"] = float(sum(lengths) / len(lengths)) if lengths else 0.0
    if accelerator.is_main_process:
        model.eval()
        _save_final(args, output_dir, raw_model, tower, processor)
        if args.eval_scenes or args.eval_data_path:
            t0 = time.time()
            test = evaluation_records(args, image_size)
            metrics["eval"] = evaluate_vqa(raw_model, processor, test, batch_size=args.eval_batch_size,
                                           max_new_tokens=args.eval_max_new_tokens)
            answered = [r for r in records if r["type"] != "caption"]
            if answered:
                metrics["majority_baseline"] = majority_baseline(answered, test)
            metrics["eval_type_counts"] = type_counts(test)
            timings["eval_seconds"] = time.time() - t0
        if args.merge:
            if args.stage not in LORA_STAGES:
                accelerator.print("--merge applies to --stage finetune / lora (base writes a full model; align a "
                                  "projector).")
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
             f"language model: {metrics.get('language_model', 'tiny (from scratch)')}",
             (f"{metrics['steps']} steps × batch {metrics['batch_size']} on {metrics['num_train_questions']} questions; "
              f"{metrics['trainable_parameters']:,} trainable parameters")]
    ev = metrics.get("eval")
    if ev:
        per_type = ", ".join(f"{t} {100 * a:.1f}" for t, a in ev["accuracy_by_type"].items())
        lines.append(f"held-out VQA accuracy {100 * ev['accuracy']:.1f}% on {ev['num_questions']} questions ({per_type}); "
                     f"tokens per image {ev['tokens_per_image_mean']:.1f} ± {ev['tokens_per_image_std']:.1f}")
    base = metrics.get("majority_baseline") if ev else None
    if base:
        lines.append(f"majority baselines: overall '{base['overall']['answer']}' {100 * base['overall']['accuracy']:.1f}%, "
                     f"per question type {100 * base['per_type']['accuracy']:.1f}%")
    timings = metrics.get("timings", {})
    if timings:
        lines.append("timings: " + ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in timings.items()))
    return "\n".join(lines)
