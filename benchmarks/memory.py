"""Memory of `DoveModel.encode` on CPU (printed, never asserted in unit tests; machines are noisy).

1. Steady state: resident memory (VmRSS) over `--calls` consecutive `encode` calls (default 1,000) after a
   warm-up; prints the growth, the largest excursion and the fitted slope (bytes per call). A leak shows as a
   slope well above zero; allocator noise stays within a few MiB.
2. Peak vs batch size: for each batch size, a fresh process loads the model, warms up on one image, resets the
   kernel's peak-RSS counter (`/proc/self/clear_refs`) and encodes one batch; the peak above the resident memory
   before the call is that batch's working memory. Prints the ratios to batch 1 and a least-squares line
   (intercept, MiB per image, R²): linear growth means no per-batch quadratic term (e.g. attention across images).

Usage:
    python benchmarks/memory.py [--preset tiny] [--micro] [--calls 1000] [--batch-sizes 1 2 4 8 16 32 64]
`--micro` uses the unit tests' micro shapes (fast); default is the tiny preset (random weights: memory does not
depend on the weights).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from dove_vlm import DoveModel, preset_config

MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32,
             decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64, max_tokens=16,
             token_dim=4)
MIB = 2**20


def _status(field: str) -> int:
    """A `/proc/self/status` field in bytes (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only).")


def rss() -> int:
    return _status("VmRSS")


def _trim() -> None:
    """Give freed heap pages back to the kernel (glibc), so RSS reflects live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build_model(preset: str, micro: bool, seed: int = 0) -> DoveModel:
    torch.manual_seed(seed)
    return DoveModel(preset_config(preset, **(MICRO if micro else {}))).eval()


def images(model: DoveModel, batch: int, seed: int = 0) -> torch.Tensor:
    size = model.config.image_size
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def steady_state(model: DoveModel, calls: int = 1000, batch: int = 4, warmup: int = 50, every: int = 50) -> dict:
    """RSS over `calls` encode calls (new random images each call, like a serving loop)."""
    pool = [images(model, batch, seed) for seed in range(8)]
    with torch.no_grad():
        for i in range(warmup):
            model.encode(pool[i % len(pool)])
        _trim()
        start = rss()
        samples = [(0, start)]
        began = time.perf_counter()
        for i in range(1, calls + 1):
            model.encode(pool[i % len(pool)])
            if i % every == 0:
                samples.append((i, rss()))
        seconds = time.perf_counter() - began
    _trim()
    end = rss()
    xs = [float(x) for x, _ in samples]
    ys = [float(y) for _, y in samples]
    slope, _, _ = linear_fit(xs, ys)
    return {"calls": calls, "batch": batch, "rss_start_mib": start / MIB, "rss_end_mib": end / MIB,
            "growth_mib": (end - start) / MIB, "max_excursion_mib": (max(ys) - start) / MIB,
            "slope_bytes_per_call": slope, "seconds": seconds}


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = intercept + slope·x; returns (slope, intercept, R²)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return slope, intercept, 1.0 - ss_res / ss_tot if ss_tot else 1.0


def peak_of_one_batch(preset: str, micro: bool, batch: int) -> int:
    """Bytes above the resident memory before one `encode` of `batch` images (call in a fresh process)."""
    model = build_model(preset, micro)
    with torch.no_grad():
        model.encode(images(model, 1))
        x = images(model, batch, seed=1)
        _trim()
        before = rss()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        model.encode(x)
        return _status("VmHWM") - before


def peak_by_batch(preset: str, micro: bool, batch_sizes: list[int]) -> dict[int, int]:
    peaks = {}
    for batch in batch_sizes:
        command = [sys.executable, __file__, "--preset", preset, "--peak-of", str(batch)] + (["--micro"] if micro else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ))
        peaks[batch] = int(out.stdout.strip().splitlines()[-1])
    return peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--micro", action="store_true", help="the unit tests' micro shapes")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=4, help="images per call in the steady-state loop")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--peak-of", type=int, help=argparse.SUPPRESS)  # child process of part 2
    args = parser.parse_args(argv)
    if args.peak_of is not None:
        print(peak_of_one_batch(args.preset, args.micro, args.peak_of))
        return 0

    name = f"{args.preset}{' (micro shapes)' if args.micro else ''}"
    print(f"model: {name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    steady = steady_state(build_model(args.preset, args.micro), calls=args.calls, batch=args.batch)
    print(f"\n1. {steady['calls']} consecutive encode calls of {steady['batch']} images ({steady['seconds']:.1f} s):")
    print(f"   RSS {steady['rss_start_mib']:.1f} MiB -> {steady['rss_end_mib']:.1f} MiB "
          f"(growth {steady['growth_mib']:+.2f} MiB, largest excursion {steady['max_excursion_mib']:+.2f} MiB, "
          f"fitted slope {steady['slope_bytes_per_call']:+.0f} B/call)")

    peaks = peak_by_batch(args.preset, args.micro, args.batch_sizes)
    slope, intercept, r2 = linear_fit([float(b) for b in peaks], [float(p) for p in peaks.values()])
    print("\n2. peak working memory of one encode call by batch size:")
    print("   batch   peak MiB   ratio to batch 1   MiB per image")
    first = peaks[min(peaks)]
    for batch, peak in peaks.items():
        print(f"   {batch:5d}   {peak / MIB:8.2f}   {peak / first:16.2f}   {peak / MIB / batch:13.3f}")
    print(f"   linear fit: peak = {intercept / MIB:.2f} MiB + {slope / MIB:.3f} MiB x batch (R^2 = {r2:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": name, "steady_state": steady, "peak_bytes": peaks,
                                               "fit": {"mib_per_image": slope / MIB, "intercept_mib": intercept / MIB,
                                                       "r2": r2}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
