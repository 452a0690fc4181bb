"""The paper preset's cost, side by side in one run (printed, never asserted in unit tests; machines are noisy).

1. Training step at the paper geometry (256 px, aMUSEd-shaped VQGAN with f=16 → 16×16 latents, Pythia-70M-shaped
   generator and decoder, n=256, batch 32), the step `dove train` takes: cached VQGAN latents → generator → token
   decoder → frozen VQGAN decoder → MSE + LPIPS + patch-GAN (+ EOS loss with the dynamic threshold), AdamW step, then
   the discriminator's step; the paper preset's truncation share of samples decoded from a random prefix. Rows:
   fp32, bf16 autocast, and bf16 with gradient checkpointing of the VQGAN decoder (`--vqgan-gradient-checkpointing`).
   Each row: median step time, images/s and peak memory (CUDA: `max_memory_allocated`; CPU: peak resident memory
   above the level before the step), and its ratio to fp32. On CUDA, TF32 is on for the fp32 parts (as in
   `dove train`).
2. Encode throughput at the same geometry: the VQGAN encoder alone (what a fixed-length VQGAN tokenizer costs)
   against DOVE at k = n and at k = n/4 (early exit stops after the chunk holding k), fp32 and bf16, timed in
   interleaved rounds; ratios to the VQGAN row of the same precision. Weights are random (cost does not depend on
   them at a forced length).
3. The DataLoader's share of a step (workers on vs main-process decoding) belongs to the data pipeline
   (`train_tokenizer/data.py`): not measured here; `loader_rows` is the hook for it.

Usage:
    python benchmarks/paper_preset.py [--device cuda] [--batch-size 32] [--steps 10] [--json out.json]
    python benchmarks/paper_preset.py --micro      # the preset at micro widths (64 px, f=16), for the CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import MIB, _status, _trim, rss
from throughput import interleaved

from dove_vlm import DoveModel, preset_config, preset_training
from dove_vlm.presets import PAPER_MICRO_OVERRIDES
from dove_vlm.vqgan import set_decoder_checkpointing
from train_tokenizer.losses import DynamicThreshold, ReconstructionLoss, eos_loss
from train_tokenizer.recipe import configure_device

TRAIN_ROWS = {"fp32": ("no", False), "bf16": ("bf16", False), "bf16 + decoder checkpointing": ("bf16", True)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build(overrides: dict, device: torch.device, seed: int = 0) -> DoveModel:
    torch.manual_seed(seed)
    return DoveModel(preset_config("paper", **overrides)).to(device)


def training_step(model: DoveModel, batch: int, device: torch.device, precision: str, seed: int = 0):
    """A callable running one `dove train` step of the paper recipe on a fixed random batch (weights change)."""
    recipe = preset_training("paper")
    size, n = model.config.image_size, model.config.max_tokens
    rec_loss = ReconstructionLoss(lpips_weight=recipe["lpips_weight"], gan_weight=recipe["gan_weight"]).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe["learning_rate"], betas=(0.9, 0.99))
    disc_optimizer = torch.optim.AdamW(rec_loss.discriminator.parameters(), lr=recipe["learning_rate"], betas=(0.5, 0.9))
    threshold = DynamicThreshold(100)
    gen = torch.Generator().manual_seed(seed)
    images = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device)
    with torch.no_grad():
        latents = model.encode_latents(images)  # the loop caches the frozen VQGAN's latents once
    model.train()
    rec_loss.train()

    def step() -> float:
        forced = torch.randint(1, n + 1, (batch,), generator=gen)
        forced = torch.where(torch.rand(batch, generator=gen) < recipe["truncation_prob"], forced, 0).to(device)
        with _autocast(device, precision):
            out = model(images, num_tokens=forced, latents=latents)
            recon = out.reconstruction.float()
            rec = rec_loss(recon, images)
            adaptive = forced == 0
            current = threshold.value(rec.loss.item())
            l_eos = (eos_loss(out.p_eos.float(), out.lengths, rec.per_sample.detach(), current)[adaptive].mean()
                     if adaptive.any() else recon.new_zeros(()))
            loss = rec.loss + recipe["eos_weight_start"] * l_eos
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            d_loss = rec_loss.discriminator_loss(recon.detach(), images)
        d_loss.backward()
        disc_optimizer.step()
        disc_optimizer.zero_grad(set_to_none=True)
        threshold.update(rec.loss.item())
        return loss.item()

    return step


def _peak_mib(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) / MIB
    _trim()
    before = rss()
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_status("VmHWM") - before) / MIB


def train_rows(overrides: dict, batch: int, device: torch.device, steps: int, warmup: int = 2) -> dict[str, dict]:
    """Every `TRAIN_ROWS` row on a fresh model of the same seed: median step time, images/s, peak memory."""
    results = {}
    for name, (precision, checkpointing) in TRAIN_ROWS.items():
        model = build(overrides, device)
        set_decoder_checkpointing(model.vqgan, checkpointing)
        step = training_step(model, batch, device, precision)
        for _ in range(warmup):
            step()
        _sync(device)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            loss = step()
            _sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        results[name] = {"step_s": seconds, "images_per_s": batch / seconds, "peak_mib": _peak_mib(step, device),
                         "loss": loss}
        del model, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def encode_rows(model: DoveModel, images: torch.Tensor, batch: int) -> dict[str, callable]:
    """Callables over all `images` in batches: the VQGAN encoder alone and DOVE at k = n and n/4, fp32 and bf16."""
    n = model.config.max_tokens
    device = images.device

    def over(fn, precision):
        def run():
            with torch.no_grad(), _autocast(device, precision):
                outs = [fn(images[i : i + batch]) for i in range(0, len(images), batch)]
            _sync(device)
            return outs
        return run

    rows = {}
    for precision in ("fp32", "bf16"):
        p = "bf16" if precision == "bf16" else "no"
        rows[f"VQGAN encoder ({precision})"] = over(lambda x: model.vqgan.encode(x).latents, p)
        rows[f"DOVE k={n} ({precision})"] = over(lambda x: model.encode(x, num_tokens=n), p)
        rows[f"DOVE k={n // 4}, early exit ({precision})"] = over(
            lambda x: model.encode(x, num_tokens=n // 4, early_exit=True), p)
    return rows


def encode_table(overrides: dict, batch: int, num_images: int, device: torch.device, repeats: int) -> dict[str, dict]:
    model = build(overrides, device).eval()
    model.config.batch_invariant = False  # one batched VQGAN call, as on a GPU
    size = model.config.image_size
    images = (torch.rand(num_images, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    times = interleaved(encode_rows(model, images, batch), repeats)
    table = {}
    for name, seconds in times.items():
        reference = times[f"VQGAN encoder ({'bf16' if 'bf16' in name else 'fp32'})"]
        table[name] = {"images_per_s": num_images / seconds, "vs_vqgan": reference / seconds}
    return table


def loader_rows(args) -> dict[str, dict]:
    """Hook for the DataLoader on/off rows (the data pipeline's own benchmark); none here."""
    return {}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro", action="store_true", help="the preset at micro widths (64 px, f=16) for the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default 32; --micro 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per row (default 10; --micro 4)")
    parser.add_argument("--encode-images", type=int, default=None, help="default 128; --micro 16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="LPIPS uses a random")  # said in the table's title
    device = torch.device(args.device)
    configure_device(device)
    overrides = copy.deepcopy(PAPER_MICRO_OVERRIDES) if args.micro else {}
    batch = args.batch_size or (4 if args.micro else preset_training("paper")["batch_size"])
    steps = args.steps or (4 if args.micro else 10)
    config = preset_config("paper", **overrides)
    geometry = (f"{config.image_size} px, f={config.downsample_factor} ({config.latent_size}x{config.latent_size} "
                f"latents, lookup_from_codebook={config.vqgan_config['lookup_from_codebook']}), n={config.max_tokens}, "
                f"generator {config.hidden_size}x{config.num_hidden_layers}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"paper preset{' (micro widths)' if args.micro else ''}: {geometry}; {name}")

    train = train_rows(overrides, batch, device, steps)
    base = train["fp32"]
    print(f"\ntraining step, batch {batch} (median of {steps}; LPIPS random trunk, GAN on, truncation "
          f"{preset_training('paper')['truncation_prob']}):")
    print(f"{'row':<32}{'step s':>9}{'img/s':>9}{'peak MiB':>10}{'speed vs fp32':>15}{'memory vs fp32':>16}")
    for row, r in train.items():
        print(f"{row:<32}{r['step_s']:>9.3f}{r['images_per_s']:>9.1f}{r['peak_mib']:>10.0f}"
              f"{base['step_s'] / r['step_s']:>14.2f}x{r['peak_mib'] / max(base['peak_mib'], 1e-9):>15.2f}x")

    encode = encode_table(overrides, batch, args.encode_images or (16 if args.micro else 128), device, args.repeats)
    print(f"\nencode throughput, batch {batch} (interleaved medians of {args.repeats}):")
    print(f"{'row':<36}{'img/s':>10}{'vs VQGAN':>10}")
    for row, r in encode.items():
        print(f"{row:<36}{r['images_per_s']:>10.1f}{r['vs_vqgan']:>9.2f}x")
    loader = loader_rows(args)
    if not loader:
        print("\nDataLoader on/off: not measured here (the data pipeline's benchmark; hook: loader_rows).")
    results = {"device": name, "micro": args.micro, "geometry": geometry, "batch_size": batch, "train": train,
               "encode": encode, "loader": loader}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
