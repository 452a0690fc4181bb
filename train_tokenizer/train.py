"""`dove train`: the tokenizer training loop (reads top to bottom: batch → forward → losses → step → log →
checkpoint), on accelerate so the same code runs on one CPU or many GPUs, in fp32 or bf16."""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from dove_vlm import DoveModel, preset_config
from dove_vlm.data.grounding import load_visual_genome
from dove_vlm.image_processing_dove import DoveImageProcessor
from dove_vlm.pretrained import load_generator, load_vqgan
from dove_vlm.query_tokenizer import load_query_tokenizer as query_tokenizer_from

from .checkpointing import (
    latest_checkpoint,
    load_safetensors_state,
    load_torch_state,
    load_trainer_state,
    resume_point,
    save_checkpoint,
)
from .config import TrainingArguments
from .data import batch_indices, build_training_dataset, cached_latents, get_batch
from .evaluate import evaluate_queries, evaluate_tokenizer
from .losses import DynamicThreshold, EosWeightSchedule, eos_loss
from .plots import write_plots
from .query import GroundingTrainingSet, box_mask, query_loss
from .recipe import build_reconstruction_loss, configure_training, seeded
from .vqgan_stage import train_vqgan


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return values[mask].mean().item() if mask.any() else float("nan")


def check_output_dir(output_dir: str | os.PathLike, min_free_bytes: int = 50 * 2**20) -> Path:
    """Fail before training starts if the output folder cannot be written or the disk is (nearly) full."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"cannot write to the output directory {root} ({err}); choose another --output-dir.") from err
    check_disk_space(root, min_free_bytes)
    return root


def check_disk_space(output_dir: Path, required_bytes: int, what: str = "") -> None:
    """Raise a clear OSError (ENOSPC) when `output_dir`'s file system has less than `required_bytes` free."""
    free = shutil.disk_usage(output_dir).free
    if free < required_bytes:
        raise OSError(errno.ENOSPC, f"only {free / 2**20:.0f} MiB free under {output_dir} but {required_bytes / 2**20:.0f} "
                      f"MiB are needed{what}; free some space or choose another --output-dir.")


def checkpoint_bytes(model: torch.nn.Module, keep_checkpoints: int) -> int:
    """Disk space a run needs: each checkpoint holds the weights and AdamW's two moments (≈ 3× the trainable
    weights plus the frozen ones); `keep_checkpoints` of them and one being written, plus the final model."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    per_checkpoint = weights + 2 * trainable
    return (keep_checkpoints + 1) * per_checkpoint + weights


def sample_truncation(batch: int, max_tokens: int, prob: float, seed: int, step: int) -> torch.Tensor:
    """Per-sample forced lengths: a random k in [1, n] with probability `prob`, else 0 (= adaptive length).
    Seeded by (seed, step) so a resumed run draws the same lengths."""
    gen = step_generator(seed, step)
    forced = torch.randint(1, max_tokens + 1, (batch,), generator=gen)
    return torch.where(torch.rand(batch, generator=gen) < prob, forced, torch.zeros_like(forced))


def sample_full_length(queried: torch.Tensor, prob: float, seed: int, step: int) -> torch.Tensor:
    """`(B,)` bool: the queried samples decoded from every slot toward the whole image (`query_full_prob`),
    seeded by (seed, step) so a resumed run draws the same rows."""
    if prob <= 0:
        return torch.zeros_like(queried)
    gen = step_generator(seed, step, stream=7_919)
    return queried & (torch.rand(queried.shape[0], generator=gen) < prob).to(queried.device)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of one training step's random draws (`stream` keeps independent draws apart): a pure
    function of (seed, step), so a resumed run draws what the uninterrupted one did."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + stream)


def load_query_tokenizer(args: TrainingArguments):
    """`--query-tokenizer`: a hub id, folder or .gguf file (subword queries); default the embedded word tokenizer."""
    return query_tokenizer_from(args.query_tokenizer)


def build_model(args: TrainingArguments, resume_from: Path | None) -> DoveModel:
    if resume_from is not None:
        return DoveModel.from_pretrained(resume_from / "model")
    if args.init_from:
        model = DoveModel.from_pretrained(args.init_from)
        if args.query and not model.supports_queries:
            model = add_query_embedding(model, load_query_tokenizer(args), args.seed)
        return model
    overrides = dict(args.model_overrides)
    tokenizer = load_query_tokenizer(args) if args.query else None
    if tokenizer is not None:
        overrides["query_vocab_size"] = len(tokenizer)
    model = DoveModel(preset_config(args.preset, **overrides))
    if tokenizer is not None:
        model.set_query_tokenizer(tokenizer)
    if args.vqgan:
        load_vqgan(model, args.vqgan)
    if args.generator_init:
        load_generator(model, args.generator_init)
    return model


def add_query_embedding(model: DoveModel, tokenizer, seed: int = 0) -> DoveModel:
    """A Q-DOVE model holding every weight of the plain DOVE `model`, plus a new query embedding (seeded by `seed`)."""
    config = copy.deepcopy(model.config)
    config.query_vocab_size = len(tokenizer)
    with seeded(seed, "query_embedding"):
        queried = DoveModel(config)
    result = queried.load_state_dict(model.state_dict(), strict=False)
    unexpected = [k for k in result.missing_keys if not k.startswith("query_embed.")] + list(result.unexpected_keys)
    if unexpected:
        raise ValueError(f"cannot extend the DOVE checkpoint with queries: mismatched weights {unexpected[:3]}.")
    queried.set_query_tokenizer(tokenizer)
    return queried


def build_grounding(args: TrainingArguments, image_size: int) -> GroundingTrainingSet:
    if args.data == "synthetic" or args.data.startswith("synthetic:"):
        count = int(args.data.split(":", 1)[1]) if ":" in args.data else args.num_train_scenes
        return GroundingTrainingSet.synthetic(count, image_size, args.seed)
    if args.data.startswith("vg:"):
        parts = args.data[3:].split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--data {args.data!r}: expected vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON].")
        samples = load_visual_genome(parts[1] or None, parts[0], parts[2] if len(parts) == 3 else None)
        return GroundingTrainingSet.from_samples(samples, DoveImageProcessor(size=image_size))
    raise ValueError(f"--query training reads grounding data: 'synthetic[:N]' or 'vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON]', "
                     f"not {args.data!r}.")


def train(args: TrainingArguments, step_callback: Callable[[int], None] | None = None) -> dict:
    """Train a DOVE tokenizer as `args` says; returns the final metrics (also written to `metrics.json`).

    `step_callback(steps_done)`, when given, is called after every optimizer step (e.g. `dove demo` gives a worker
    more threads once its sibling process has finished)."""
    output_dir = check_output_dir(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps
    )
    set_seed(args.seed)
    resume_from, state = resume_point(output_dir, args.resume, accelerator.print)
    start_step = state.get("step", 0)

    model = build_model(args, resume_from)
    configure_training(model, args, accelerator.device)
    if accelerator.is_main_process:
        check_disk_space(output_dir, checkpoint_bytes(model, args.keep_checkpoints),
                         f" for {args.keep_checkpoints + 1} checkpoints and the final model")
    config = model.config
    grounding = build_grounding(args, config.image_size) if args.query else None
    dataset = grounding.images if grounding else build_training_dataset(args.data, config.image_size,
                                                                         args.num_train_scenes, args.seed)
    if resume_from is None and not args.vqgan and not args.init_from and args.vqgan_steps > 0:
        train_vqgan(model.vqgan, dataset, output_dir, args.vqgan_steps, args.vqgan_batch_size,
                    args.vqgan_learning_rate, args.seed, accelerator.device)
    if resume_from is None and config.latent_mean is None:
        sample = batch_indices(len(dataset), min(len(dataset), 1024), 0, args.seed + 13)
        model.set_latent_statistics(get_batch(dataset, sample))

    rec_loss = build_reconstruction_loss(args, accelerator.print)
    if args.freeze_decoder:
        model.token_decoder.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    disc_optimizer = None
    if rec_loss.discriminator is not None:
        disc_optimizer = torch.optim.AdamW(rec_loss.discriminator.parameters(), lr=args.learning_rate, betas=(0.5, 0.9))
    if resume_from is not None:
        optimizer.load_state_dict(load_torch_state(resume_from / "optimizer.pt"))
        scheduler.load_state_dict(load_torch_state(resume_from / "scheduler.pt"))
        if disc_optimizer is not None:
            rec_loss.discriminator.load_state_dict(load_safetensors_state(resume_from / "discriminator.safetensors"))
            disc_optimizer.load_state_dict(load_torch_state(resume_from / "disc_optimizer.pt"))
    # Q-DOVE from a DOVE checkpoint: the starting model, frozen, is the teacher of the null query's lengths.
    teacher = None
    if args.query and args.init_from and (args.null_distill_weight > 0 or args.query_threshold == "teacher"):
        teacher = DoveModel.from_pretrained(args.init_from).to(accelerator.device).eval().requires_grad_(False)
    model, rec_loss, optimizer, scheduler = accelerator.prepare(model, rec_loss, optimizer, scheduler)
    if disc_optimizer is not None:
        disc_optimizer = accelerator.prepare(disc_optimizer)

    threshold = DynamicThreshold(window=args.threshold_window)  # plain (null-query) samples: full-image L_rec
    query_threshold = DynamicThreshold(window=args.threshold_window)  # queried samples: in-box L_rec only
    if "threshold" in state:
        threshold.load_state_dict(state["threshold"])
    elif args.init_from and (source := latest_checkpoint(args.init_from)) is not None:
        # Continuing a DOVE run (e.g. into Q-DOVE): plain samples keep the threshold it ended with.
        threshold.load_state_dict(load_trainer_state(source).get("threshold", threshold.state_dict()))
    if "query_threshold" in state:
        query_threshold.load_state_dict(state["query_threshold"])
    crop_size = max(32, config.image_size // 4)
    schedule = EosWeightSchedule(
        start=args.eos_weight_start, end=args.eos_weight_end,
        warmup_steps=args.eos_warmup_steps, ramp_steps=args.eos_ramp_steps,
    )
    history: list[dict] = state.get("history", [])
    current_query_threshold = float("nan")
    raw_model = accelerator.unwrap_model(model)
    n = config.max_tokens
    # Frozen VQGAN: its latents of every training image once, instead of an encoder pass at every step.
    dataset_latents = cached_latents(raw_model, dataset, accelerator.device)

    model.train()
    progress = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps,
                    desc="DOVE", dynamic_ncols=True, disable=not accelerator.is_local_main_process)
    started = time.time()
    for step in progress:
        for micro in range(args.gradient_accumulation_steps):
            micro_step = step * args.gradient_accumulation_steps + micro
            indices = batch_indices(len(dataset), args.batch_size, micro_step, args.seed,
                                    accelerator.process_index, accelerator.num_processes)
            images = get_batch(dataset, indices).to(accelerator.device)
            forced = sample_truncation(len(indices), n, args.truncation_prob, args.seed, micro_step).to(images.device)
            queries, boxes = (grounding.sample_queries(indices, args.query_null_prob, args.seed, micro_step)
                              if grounding else (None, [None] * len(indices)))
            queried = torch.tensor([b is not None for b in boxes], device=images.device)
            # Some queried samples use every slot with the whole image as the target: the query code then holds
            # the box first and the rest of the image after it (their in-box rows and EOS are skipped).
            full = sample_full_length(queried, args.query_full_prob, args.seed, micro_step)
            forced = torch.where(full, torch.full_like(forced, n), forced)
            whole = ~queried | full
            in_box_rows = queried & ~full
            loss_boxes = [None if f else b for f, b in zip(full.tolist(), boxes)]
            with accelerator.accumulate(model), accelerator.autocast():
                latents = None if dataset_latents is None else dataset_latents[indices].to(images.device)
                out = model(images, queries=queries, num_tokens=forced, latents=latents)
                recon = out.reconstruction.float()
                # Full-image L_rec for the plain rows (the null query, or a query that names nothing in the image)
                # and the queried rows decoded at full length, L_qry for the other queried ones: each row's loss is
                # computed once (LPIPS is the costly part).
                plain = ~queried
                per_sample = recon.new_zeros(len(indices))
                rec = None
                if whole.any():
                    rec = rec_loss(recon[whole], images[whole])
                    per_sample = per_sample.masked_scatter(whole, rec.per_sample)
                if in_box_rows.any():
                    in_box = query_loss(rec_loss, recon, images, loss_boxes, args.outside_weight, crop_size)
                    per_sample = torch.where(in_box_rows, in_box, per_sample)
                # The EOS loss and the thresholds only see samples decoded at their own (adaptive) length;
                # queried samples are compared with the running mean of in-box losses.
                adaptive = forced == 0
                detached = per_sample.detach()
                batch_rec = _masked_mean(detached, adaptive & ~queried)
                batch_query_rec = _masked_mean(detached, adaptive & queried)
                current_threshold = threshold.value(batch_rec)
                current_query_threshold = query_threshold.value(batch_query_rec)
                thresholds = torch.where(queried, current_query_threshold, current_threshold)
                teacher_p = None
                if teacher is not None:
                    with torch.no_grad():
                        # Same frozen VQGAN as the student: reuse its latents (batched) instead of re-encoding.
                        teacher_enc = teacher.encode(latents=out.latents.detach())
                        teacher_p = teacher_enc.p_eos
                        anchored = adaptive & queried
                        if args.query_threshold == "teacher" and anchored.any():
                            # Each queried sample is held to the in-box loss the starting DOVE reaches on the
                            # same box at its own full-image length: as few tokens as possible for that quality.
                            rows = anchored.nonzero().squeeze(1)
                            teacher_rec = teacher.latents_to_pixels(teacher.decode_latents(
                                teacher_enc.tokens[rows], teacher_enc.attention_mask[rows])).float()
                            teacher_in_box = query_loss(rec_loss, teacher_rec, images[rows],
                                                        [boxes[i] for i in rows.tolist()], args.outside_weight,
                                                        crop_size)
                            target = thresholds.clone()
                            target[rows] = teacher_in_box * args.query_threshold_scale
                            thresholds = target
                            current_query_threshold = float(target[rows].mean())
                l_eos = eos_loss(out.p_eos, out.lengths, detached, thresholds)
                # With a teacher, the null query's lengths come from it (distillation below), not from the EOS loss.
                eos_rows = adaptive & queried if teacher is not None and args.null_distill_weight > 0 else adaptive
                l_eos = (l_eos * eos_rows).sum() / eos_rows.sum().clamp(min=1)
                lambda_eos = schedule(step)
                loss = args.rec_weight * per_sample.mean() + lambda_eos * l_eos
                if teacher is not None and args.null_distill_weight > 0 and plain.any():
                    target_p = teacher_p[plain]
                    # Summed over the slots (averaged over images) so it weighs like the per-image EOS loss.
                    distill = torch.nn.functional.binary_cross_entropy(
                        out.p_eos[plain].float().clamp(1e-6, 1 - 1e-6), target_p, reduction="none").sum(1).mean()
                    loss = loss + args.null_distill_weight * distill
                if args.latent_weight:
                    mask = box_mask(loss_boxes, config.image_size, config.latent_size) if in_box_rows.any() else None
                    loss = loss + args.latent_weight * raw_model.latent_loss(out.predicted_latents, out.latents, mask)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if disc_optimizer is not None:
                d_loss = accelerator.unwrap_model(rec_loss).discriminator_loss(out.reconstruction.detach().float(), images)
                accelerator.backward(d_loss)
                disc_optimizer.step()
                disc_optimizer.zero_grad(set_to_none=True)
            threshold.update(batch_rec)
            query_threshold.update(batch_query_rec)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --learning-rate or use fp32.")

        mean_len = out.lengths[adaptive].float().mean().item() if adaptive.any() else float("nan")
        if step % args.log_every == 0 or step == args.max_steps - 1:
            record = {"step": step, "loss": loss.item(), "rec": per_sample.mean().item(),
                      "mse": float(rec.mse) if rec is not None else float("nan"),
                      "eos": l_eos.item(), "lambda_eos": lambda_eos, "threshold": current_threshold,
                      "mean_length": mean_len, "lr": scheduler.get_last_lr()[0]}
            if grounding is not None:
                record["query_threshold"] = current_query_threshold
                record["mean_length_queried"] = _masked_mean(out.lengths.float(), adaptive & queried)
            history.append(record)
            progress.set_postfix(loss=f"{record['loss']:.4f}", len=f"{mean_len:.1f}", T=f"{current_threshold:.4f}")
        done = step + 1
        if step_callback is not None:
            step_callback(done)
        if accelerator.is_main_process and (done % args.checkpoint_every == 0 or done == args.max_steps):
            extras, extra_states = {}, {}
            if disc_optimizer is not None:
                extras["discriminator"] = accelerator.unwrap_model(rec_loss).discriminator
                extra_states["disc_optimizer"] = disc_optimizer.state_dict()
            save_checkpoint(
                output_dir, done, raw_model, optimizer, scheduler,
                {"threshold": threshold.state_dict(), "query_threshold": query_threshold.state_dict(),
                 "history": history, "args": args.to_dict()},
                keep=args.keep_checkpoints, extra_modules=extras, extra_states=extra_states,
            )
    train_seconds = time.time() - started

    metrics: dict = {"preset": args.preset, "steps": args.max_steps, "train_seconds_this_run": train_seconds,
                     "final_threshold": threshold.value(float("nan")), "history": history, "args": args.to_dict()}
    if args.query:  # the inference limits of queried images (see TrainingArguments), saved with the model
        longest = min(args.query_max_tokens or max(1, n // 2), n)
        raw_model.config.query_max_tokens = longest
        raw_model.config.query_min_tokens = min(args.query_min_tokens, longest)
    if accelerator.is_main_process:
        raw_model.save_pretrained(output_dir)
        DoveImageProcessor(size=config.image_size).save_pretrained(output_dir)
        if args.eval_scenes:
            evaluation = evaluate_tokenizer(raw_model, num_scenes=args.eval_scenes, seed=args.seed)
            metrics["eval"] = evaluation.summary()
            metrics["plots"] = write_plots(evaluation, output_dir)
            if raw_model.supports_queries:
                reference = DoveModel.from_pretrained(args.init_from).to(accelerator.device) if args.init_from else None
                metrics["query_eval"] = evaluate_queries(raw_model, args.eval_scenes, args.seed, reference=reference)
        with open(output_dir / "metrics.json", "w") as handle:
            json.dump(metrics, handle, indent=2)
    accelerator.wait_for_everyone()
    return metrics
