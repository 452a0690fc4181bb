"""`dove train`: the tokenizer training loop, on accelerate so the same code runs in one process on a CPU or in
one process per device (`torchrun` / `accelerate launch`), in fp32 or bf16.

`train()` reads top to bottom: set up (model, data, VQGAN stage, optimisers), then per step: batch → forward →
loss (`objectives.py`) → backward → step → log → checkpoint; then the final model and its evaluation
(`final_report.py`). Across processes, each one trains on its slice of the same global batch (see
`distributed.py`); only the main process writes files."""

from __future__ import annotations

import copy
import errno
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from dove_vlm import DoveModel, preset_config
from dove_vlm.pretrained import load_generator, load_vqgan
from dove_vlm.query_tokenizer import load_query_tokenizer as query_tokenizer_from
from dove_vlm.run_folder import WRITE_PROBE_PREFIX

from .checkpointing import (
    latest_checkpoint,
    load_safetensors_state,
    load_torch_state,
    load_trainer_state,
    resume_point,
    save_checkpoint,
)
from .config import TrainingArguments
from .data import TrainingData, build_training_data, cached_latents
from .distributed import Ranks, average_gradients, check_process_count, exclude_from_ddp, make_accelerator
from .draws import draw_step, sample_full_length, sample_truncation, step_generator  # noqa: F401 (public here)
from .final_report import finish_run
from .losses import ReconstructionLoss
from .objectives import DoveObjective
from .query import build_grounding
from .recipe import build_reconstruction_loss, configure_training, seeded
from .vqgan_stage import load_trained_vqgan, stage_settings, train_vqgan

LATENT_STATISTICS_IMAGES = 1024


def check_output_dir(output_dir: str | os.PathLike, min_free_bytes: int = 50 * 2**20) -> Path:
    """Fail before training starts if the output folder cannot be written or the disk is (nearly) full."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f"{WRITE_PROBE_PREFIX}-{os.getpid()}"  # one per process: several may check the same folder
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
    """A Q-DOVE model holding every weight of the plain DOVE `model`, plus a new query embedding."""
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


def build_data(args: TrainingArguments, image_size: int):
    """`(grounding set or None, TrainingData)` for `--data` (grounding data with `--query`)."""
    if not args.query:
        return None, build_training_data(args.data, image_size, args.num_train_scenes, args.seed, args.eval_scenes,
                                         args.data_mix)
    grounding, held_out = build_grounding(args.data, image_size, args.num_train_scenes, args.seed, args.eval_scenes)
    return grounding, TrainingData(args.data, images=grounding.images, held_out=held_out)


def run_vqgan_stage(args: TrainingArguments, model: DoveModel, data: TrainingData, output_dir: Path,
                    accelerator, ranks: Ranks) -> None:
    """Stage 0 (no pretrained VQGAN): the main process trains the VQGAN into `output_dir/vqgan`; the others wait,
    then load it, and take the main process's random state (so every later random init matches a one-process run)."""
    if accelerator.is_main_process:
        batches = iter(data.loader(args.vqgan_batch_size, args.seed + 7, num_workers=args.dataloader_num_workers))
        settings = stage_settings(model.vqgan, vqgan_steps=args.vqgan_steps, vqgan_batch_size=args.vqgan_batch_size,
                                  vqgan_learning_rate=args.vqgan_learning_rate, seed=args.seed, data=args.data,
                                  num_train_scenes=args.num_train_scenes)
        train_vqgan(model.vqgan, batches, output_dir, args.vqgan_steps, args.vqgan_learning_rate, args.seed,
                    accelerator.device, settings=settings)
        del batches  # stops the loader's workers
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        load_trained_vqgan(model.vqgan, output_dir)
    torch.set_rng_state(ranks.broadcast(torch.get_rng_state()))


def set_latent_statistics(model: DoveModel, data: TrainingData, args: TrainingArguments, accelerator,
                          ranks: Ranks) -> None:
    """Per-channel statistics of the VQGAN latents, measured by the main process on its device (after `prepare`)
    and given to every process."""
    if accelerator.is_main_process:
        sample = data.sample(LATENT_STATISTICS_IMAGES, args.seed + 13, args.dataloader_num_workers)
        model.set_latent_statistics(sample.to(accelerator.device))
    model.config.latent_mean, model.config.latent_std = ranks.broadcast((model.config.latent_mean,
                                                                         model.config.latent_std))


@dataclass
class Trainer:
    """The prepared pieces of a run."""

    model: torch.nn.Module  # prepared (DDP across processes)
    raw_model: DoveModel
    trainable: list
    hand_synced: list  # parameters DDP skips: their gradients are averaged by `average_gradients`
    optimizer: object
    scheduler: object
    rec_loss: ReconstructionLoss
    discriminator: torch.nn.Module | None  # prepared
    disc_optimizer: object | None
    teacher: DoveModel | None


def prepare(args: TrainingArguments, model: DoveModel, resume_from: Path | None, accelerator, ranks: Ranks) -> Trainer:
    """Optimisers, LR schedule, GAN discriminator and Q-DOVE teacher; restores them on resume; `prepare`s every
    trained module (the model, and the discriminator on its own, so that its gradients are reduced too)."""
    rec_loss = build_reconstruction_loss(args, accelerator.print)
    if args.freeze_decoder:
        model.token_decoder.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    discriminator, disc_optimizer = rec_loss.discriminator, None
    if discriminator is not None:
        disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.learning_rate, betas=(0.5, 0.9))
    if resume_from is not None:
        optimizer.load_state_dict(load_torch_state(resume_from / "optimizer.pt"))
        scheduler.load_state_dict(load_torch_state(resume_from / "scheduler.pt"))
        if discriminator is not None:
            discriminator.load_state_dict(load_safetensors_state(resume_from / "discriminator.safetensors"))
            disc_optimizer.load_state_dict(load_torch_state(resume_from / "disc_optimizer.pt"))
    # Q-DOVE from a DOVE checkpoint: the starting model, frozen, is the teacher of the null query's lengths.
    teacher = None
    if args.query and args.init_from and (args.null_distill_weight > 0 or args.query_threshold == "teacher"):
        teacher = DoveModel.from_pretrained(args.init_from).to(accelerator.device).eval().requires_grad_(False)
    hand_synced = exclude_from_ddp(model) if ranks.world > 1 else []
    # The LR schedule is not handed to accelerate, which would step it once per process at every step.
    prepared, optimizer = accelerator.prepare(model, optimizer)
    rec_loss.to(accelerator.device)
    if discriminator is not None:
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    return Trainer(prepared, accelerator.unwrap_model(prepared), trainable, hand_synced, optimizer, scheduler,
                   rec_loss, discriminator, disc_optimizer, teacher)


def checkpoint(output_dir: Path, step: int, run: Trainer, state: dict, keep: int, accelerator) -> None:
    """`checkpoint-<step>`: the model, optimiser, LR schedule, the discriminator and its optimiser, and `state`."""
    extras, extra_states = {}, {}
    if run.discriminator is not None:
        extras["discriminator"] = accelerator.unwrap_model(run.discriminator)
        extra_states["disc_optimizer"] = run.disc_optimizer.state_dict()
    save_checkpoint(output_dir, step, run.raw_model, run.optimizer, run.scheduler, state, keep=keep,
                    extra_modules=extras, extra_states=extra_states)


def train(args: TrainingArguments, step_callback: Callable[[int], None] | None = None) -> dict:
    """Train a DOVE tokenizer as `args` says; returns the final metrics (also written to `metrics.json`).

    `step_callback(steps_done)`, when given, is called after every optimizer step (e.g. `dove demo` gives a worker
    more threads once its sibling process has finished)."""
    output_dir = check_output_dir(args.output_dir)
    accelerator = make_accelerator(args.mixed_precision, args.gradient_accumulation_steps, output_dir)
    ranks = Ranks(accelerator)
    set_seed(args.seed)
    resume_from, state = resume_point(output_dir, args.resume, accelerator.print)
    if resume_from is not None:
        check_process_count(state, ranks.world, resume_from)
    start_step = state.get("step", 0)

    model = build_model(args, resume_from)
    configure_training(model, args, accelerator.device)
    if accelerator.is_main_process:
        check_disk_space(output_dir, checkpoint_bytes(model, args.keep_checkpoints),
                         f" for {args.keep_checkpoints + 1} checkpoints and the final model")
    grounding, data = build_data(args, model.config.image_size)
    if resume_from is None and not args.vqgan and not args.init_from and args.vqgan_steps > 0:
        run_vqgan_stage(args, model, data, output_dir, accelerator, ranks)
    run = prepare(args, model, resume_from, accelerator, ranks)
    if resume_from is None and model.config.latent_mean is None:
        set_latent_statistics(run.raw_model, data, args, accelerator, ranks)
    objective = DoveObjective(args, run.rec_loss, run.raw_model, run.teacher, ranks)
    if state:
        objective.load_state_dict(state)
    elif args.init_from and (source := latest_checkpoint(args.init_from)) is not None:
        # Continuing a DOVE run (e.g. into Q-DOVE): plain samples keep the threshold it ended with.
        objective.threshold.load_state_dict(load_trainer_state(source).get("threshold", objective.threshold.state_dict()))
    history: list[dict] = state.get("history", [])
    # Frozen VQGAN: its latents of every training image once, instead of an encoder pass at every step.
    latents = cached_latents(run.raw_model, data.images, accelerator.device) if data.images is not None else None
    accumulation = args.gradient_accumulation_steps
    batches = iter(data.loader(args.batch_size, args.seed, start_step * accumulation, ranks.rank, ranks.world,
                               args.dataloader_num_workers, (state.get("stream") or [None] * ranks.world)[ranks.rank]))
    if accelerator.log_with:  # accelerate's tensorboard tracker, when tensorboard is installed
        accelerator.init_trackers("dove")

    run.model.train()
    progress = tqdm(range(start_step, args.max_steps), initial=start_step, total=args.max_steps,
                    desc="DOVE", dynamic_ncols=True, disable=not accelerator.is_local_main_process)
    started = time.time()
    for step in progress:
        for micro in range(accumulation):
            micro_step = step * accumulation + micro
            batch = draw_step(next(batches), micro_step, args.seed, run.raw_model.config.max_tokens,
                              args.truncation_prob, grounding, args.query_null_prob, args.query_full_prob,
                              ranks.rank, ranks.world, latents, accelerator.device, data.sources)
            with accelerator.accumulate(run.model), accelerator.autocast():
                out = run.model(batch.images, queries=batch.queries, num_tokens=batch.forced, latents=batch.latents)
                loss, logs = objective(out, batch, step)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    average_gradients(run.hand_synced, ranks)
                    accelerator.clip_grad_norm_(run.trainable, args.max_grad_norm)
                run.optimizer.step()
                if accelerator.sync_gradients:  # once per optimiser step, whatever the number of processes
                    run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            if run.discriminator is not None:
                d_loss = run.rec_loss.discriminator_loss(out.reconstruction.detach().float(), batch.images,
                                                         run.discriminator)
                accelerator.backward(d_loss)
                run.disc_optimizer.step()
                run.disc_optimizer.zero_grad(set_to_none=True)
            objective.update()
        total = ranks.sum(logs["loss"][0].double().reshape(1))
        if not math.isfinite(float(total)):
            raise FloatingPointError(f"loss became {float(total) / ranks.world} at step {step}; lower --learning-rate "
                                     "or use fp32.")

        if step % args.log_every == 0 or step == args.max_steps - 1:
            record = {"step": step, **ranks.logs(logs), "lr": run.scheduler.get_last_lr()[0]}
            history.append(record)
            accelerator.log(record, step=step)
            progress.set_postfix(loss=f"{record['loss']:.4f}", len=f"{record['mean_length']:.1f}",
                                 T=f"{record['threshold']:.4f}")
        done = step + 1
        if step_callback is not None:
            step_callback(done)
        if done % args.checkpoint_every == 0 or done == args.max_steps:
            stream = ranks.gather(batches.state_dict()) if data.stream is not None else None
            if accelerator.is_main_process:
                saved = {**objective.state_dict(), "history": history, "args": args.to_dict(),
                         "num_processes": ranks.world, "stream": stream}
                checkpoint(output_dir, done, run, saved, args.keep_checkpoints, accelerator)
    del batches  # stops the loader's workers
    return finish_run(args, run.raw_model, objective, data, history, time.time() - started, accelerator, output_dir)
