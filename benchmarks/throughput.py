"""Encode and decode throughput (images/s) and peak memory of DOVE against the VQGAN alone and against a
fixed-length tokenizer of the same size, measured side by side in one run (printed, never asserted in unit tests).

Rows (the trained tiny checkpoint, held-out scenes):
- VQGAN encoder, one batched call — what a fixed-length VQGAN tokenizer costs;
- VQGAN encoder, one image at a time — the path DOVE takes in eval mode on CPU by default
  (`config.batch_invariant=True`: an image's tokens are bit-identical in any batch; oneDNN picks its convolution
  algorithm by batch size, so a batched call differs in the last bits);
- DOVE at a fixed length k = max_tokens — the fixed-length baseline of the same size (same networks, no EOS);
- DOVE adaptive with early exit off and on; DOVE with early exit at the typical (median) length.
DOVE rows run with the default per-image VQGAN path and again with `batch_invariant=False` (batched VQGAN call);
each DOVE/VQGAN ratio is taken against the VQGAN row of the same path. All rows of a table are timed in
interleaved rounds (medians), so drifts in machine load hit every row alike.

Then how cost grows with the work, with random weights of the tiny shapes (time does not depend on the weights
at a forced length): number of images, image resolution (32/64/128 px: 64/256/1024 latent positions) and
max_tokens.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/throughput.py --model runs/demo/tokenizer [--batch-sizes 1 16 64]
        [--num-images 64] [--repeats 5] [--json out.json] [--plot docs/figures/throughput.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_inference import scenes_tensor
from memory import MIB, _status, _trim, rss

from dove_vlm import DoveModel, preset_config
from dove_vlm.data import SyntheticScenes


def interleaved(rows: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable in `rows`, timed in rounds (one call of every row per round)."""
    for fn in rows.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def peak_mib(fn) -> float:
    """Resident memory above the level before one call of `fn` (Linux: VmHWM after resetting it)."""
    fn()
    _trim()
    before = rss()
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_status("VmHWM") - before) / MIB


def over_batches(fn, x: torch.Tensor, batch: int):
    """A callable running `fn` over `x` in batches of `batch` images."""
    return lambda: [fn(x[i : i + batch]) for i in range(0, len(x), batch)]


def _over_starts(fn, count: int, batch: int) -> list:
    return [fn(i) for i in range(0, count, batch)]


def with_path(model: DoveModel, batch_invariant: bool, fn):
    def run(x):
        saved = model.config.batch_invariant
        model.config.batch_invariant = batch_invariant
        try:
            return fn(x)
        finally:
            model.config.batch_invariant = saved
    return run


def encode_rows(model: DoveModel, typical: int) -> dict:
    n = model.config.max_tokens
    rows = {
        "VQGAN encoder, batched call": lambda x: model.vqgan.encode(x).latents,
        "VQGAN encoder, per image": with_path(model, True, model.encode_latents),
    }
    for path, label in ((True, "per-image VQGAN"), (False, "batched VQGAN")):
        rows[f"DOVE fixed k={n} ({label})"] = with_path(model, path, lambda x: model.encode(x, num_tokens=n))
        rows[f"DOVE adaptive, early exit off ({label})"] = with_path(model, path, lambda x: model.encode(x))
        rows[f"DOVE adaptive, early exit on ({label})"] = with_path(model, path, lambda x: model.encode(x, early_exit=True))
        rows[f"DOVE early exit at typical k={typical} ({label})"] = with_path(
            model, path, lambda x: model.encode(x, num_tokens=typical, early_exit=True))
    return rows


def reference_of(name: str) -> str:
    return "VQGAN encoder, batched call" if "batched VQGAN" in name else "VQGAN encoder, per image"


@torch.no_grad()
def encode_table(model: DoveModel, x: torch.Tensor, batch_sizes: list[int], repeats: int, typical: int) -> dict:
    print(f"\n1. encode throughput, {len(x)} held-out scenes, trained tiny checkpoint (images/s; ratio = time over the "
          "VQGAN encoder row of the same path)")
    results = {}
    for batch in batch_sizes:
        rows = encode_rows(model, typical)
        times = interleaved({name: over_batches(fn, x, batch) for name, fn in rows.items()}, repeats)
        peaks = {name: peak_mib(partial(fn, x[:batch])) for name, fn in rows.items()}
        print(f"   batch {batch}:")
        print(f"   {'':58s} {'images/s':>9s} {'ratio':>7s} {'peak MiB':>9s}")
        results[batch] = {}
        for name, seconds in times.items():
            ratio = seconds / times[reference_of(name)] if name.startswith("DOVE") else 1.0
            results[batch][name] = {"images_per_s": len(x) / seconds, "seconds": seconds, "ratio_to_vqgan": ratio,
                                    "peak_mib": peaks[name]}
            print(f"   {name:58s} {len(x) / seconds:9.1f} {ratio:6.2f}× {peaks[name]:9.1f}")
    return results


@torch.no_grad()
def decode_table(model: DoveModel, x: torch.Tensor, batch_sizes: list[int], repeats: int) -> dict:
    n = model.config.max_tokens
    adaptive, full = model.encode(x), model.encode(x, num_tokens=n)
    latents = adaptive.latents
    print(f"\n2. decode throughput, same scenes (mean adaptive length {adaptive.lengths.float().mean():.1f}/{n})")
    results = {}
    for batch in batch_sizes:
        rows = {
            "VQGAN decoder alone (latents → pixels)": lambda i, b=batch: model.latents_to_pixels(latents[i : i + b]),
            "DOVE decode, adaptive lengths": lambda i, b=batch: model.decode(adaptive.tokens[i : i + b],
                                                                             adaptive.attention_mask[i : i + b]),
            f"DOVE decode, fixed k={n}": lambda i, b=batch: model.decode(full.tokens[i : i + b],
                                                                         full.attention_mask[i : i + b]),
        }
        times = interleaved({k: partial(_over_starts, fn, len(x), batch) for k, fn in rows.items()}, repeats)
        peaks = {k: peak_mib(partial(fn, 0)) for k, fn in rows.items()}
        base = times["VQGAN decoder alone (latents → pixels)"]
        print(f"   batch {batch}:")
        results[batch] = {}
        for name, seconds in times.items():
            results[batch][name] = {"images_per_s": len(x) / seconds, "ratio_to_vqgan": seconds / base,
                                    "peak_mib": peaks[name]}
            print(f"   {name:58s} {len(x) / seconds:9.1f} {seconds / base:6.2f}× {peaks[name]:9.1f}")
    return results


def random_model(**overrides) -> DoveModel:
    torch.manual_seed(0)
    config = preset_config("tiny", **overrides)
    if "image_size" in overrides:
        config.vqgan_config = {**config.vqgan_config, "sample_size": overrides["image_size"]}
    return DoveModel(config).eval()


def per_image_ms(times: dict[str, float], count: int) -> dict[str, float]:
    return {k: 1e3 * v / count for k, v in times.items()}


def _vqgan(model: DoveModel, x: torch.Tensor) -> torch.Tensor:
    return model.vqgan.encode(x).latents


def _dove(model: DoveModel, num_tokens: int, early_exit: bool, x: torch.Tensor):
    return model.encode(x, num_tokens=num_tokens, early_exit=early_exit)


@torch.no_grad()
def scaling(repeats: int, batch: int) -> dict:
    print(f"\n3. how cost grows (random weights, tiny shapes, batch {batch}; ms per image, batched VQGAN path)")
    out: dict = {"images": {}, "resolution": {}, "max_tokens": {}}
    model = random_model(batch_invariant=False)
    n = model.config.max_tokens
    for count in (16, 64, 256):
        x = torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(count)) * 2 - 1
        times = interleaved({"vqgan": over_batches(partial(_vqgan, model), x, batch),
                             "dove": over_batches(partial(_dove, model, n // 2, True), x, batch)}, repeats)
        out["images"][count] = times
        print(f"   {count:4d} images: VQGAN {times['vqgan']:.3f} s, DOVE (k={n // 2}, early exit) {times['dove']:.3f} s "
              f"→ {1e3 * times['dove'] / count:.2f} ms/image, ratio {times['dove'] / times['vqgan']:.2f}×")
    for size in (32, 64, 128):
        sized = random_model(batch_invariant=False, image_size=size)
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
        times = per_image_ms(interleaved({"vqgan": partial(_vqgan, sized, x),
                                          "dove": partial(_dove, sized, n // 2, True, x)}, repeats), batch)
        out["resolution"][size] = times
        print(f"   {size:4d} px ({sized.config.num_latent_positions:4d} latent positions): VQGAN {times['vqgan']:.2f} "
              f"ms/image, DOVE {times['dove']:.2f} ms/image, ratio {times['dove'] / times['vqgan']:.2f}×")
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for max_tokens in (16, 32, 64, 128, 256):
        sized = random_model(batch_invariant=False, max_tokens=max_tokens)
        times = per_image_ms(interleaved({
            "vqgan": partial(_vqgan, sized, x),
            "dove_full": partial(_dove, sized, max_tokens, False, x),
            "dove_quarter_early_exit": partial(_dove, sized, max(1, max_tokens // 4), True, x),
        }, repeats), batch)
        out["max_tokens"][max_tokens] = times
        print(f"   max_tokens {max_tokens:4d}: DOVE at full length {times['dove_full']:.2f} ms/image "
              f"({times['dove_full'] / times['vqgan']:.2f}× VQGAN), early exit at a quarter "
              f"{times['dove_quarter_early_exit']:.2f} ms/image ({times['dove_quarter_early_exit'] / times['vqgan']:.2f}×)")
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    enc = results["encode"]
    batches = sorted(enc)
    for name in enc[batches[0]]:
        style = "--" if "batched VQGAN" in name or name == "VQGAN encoder, batched call" else "-"
        axes[0].plot(batches, [enc[b][name]["images_per_s"] for b in batches], style, marker="o", label=name)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("batch size")
    axes[0].set_ylabel("images/s (encode)")
    axes[0].legend(fontsize=5.5)
    axes[0].set_title("dashed: batched VQGAN call; solid: per-image VQGAN path", fontsize=8)
    res = results["scaling"]["resolution"]
    sizes = sorted(res)
    for key, label in (("vqgan", "VQGAN encoder"), ("dove", "DOVE encoder (k=max/2, early exit)")):
        axes[1].plot(sizes, [res[s][key] for s in sizes], marker="o", label=label)
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("image size (px)")
    axes[1].set_ylabel("ms per image")
    axes[1].legend(fontsize=7)
    mt = results["scaling"]["max_tokens"]
    ns = sorted(mt)
    for key, label in (("vqgan", "VQGAN encoder"), ("dove_full", "DOVE, full length"),
                       ("dove_quarter_early_exit", "DOVE, early exit at max/4")):
        axes[2].plot(ns, [mt[n][key] for n in ns], marker="o", label=label)
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("max_tokens (32 px)")
    axes[2].set_ylabel("ms per image")
    axes[2].legend(fontsize=7)
    fig.suptitle("Encode throughput and cost growth (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a DOVE checkpoint (e.g. runs/demo/tokenizer)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scaling-repeats", type=int, default=9, help="rounds of the cost-growth timings")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    model = DoveModel.from_pretrained(args.model).eval()
    x = scenes_tensor(SyntheticScenes(args.num_images, image_size=model.config.image_size, seed=0, split="test"))
    with torch.no_grad():
        lengths = torch.cat([model.encode(x[i : i + 1]).lengths for i in range(len(x))]).float()
    typical = int(lengths.median())
    print(f"held-out scenes: mean length {lengths.mean():.1f}, median (typical) {typical} of {model.config.max_tokens}")
    results = {"model": args.model, "threads": torch.get_num_threads(), "typical_length": typical,
               "mean_length": float(lengths.mean()),
               "encode": encode_table(model, x, args.batch_sizes, args.repeats, typical),
               "decode": decode_table(model, x, args.batch_sizes, args.repeats)}
    if not args.no_scaling:
        results["scaling"] = scaling(args.scaling_repeats, batch=16)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    if args.plot and "scaling" in results:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
