"""Training-data loading: a DataLoader with worker processes against loading in the main process, in one run.

Writes a folder of JPEGs (by default 3000 images of 256×256 px: smooth random fields with fine noise, about the
size of a photo's JPEG), then reads the same batches in `dove train`'s order both ways and prints images/s side
by side (the ways alternated in rounds, median rate: the machine may be shared) and their ratio:
- main process: what `dove train` did before the DataLoader, `get_batch` (decode + resize in the training
  process, one image after the other);
- DataLoader: `train_tokenizer.data.batch_loader` (`--dataloader-num-workers N`), the same step sampler, images
  decoded in N worker processes (and handed over as uint8; the training process, here at one torch thread like
  the main-process row it is compared with, turns them into float pixels).

    python benchmarks/data_loading.py                   # 3000 JPEGs under /tmp/dove_jpegs, 2 workers
    python benchmarks/data_loading.py --images 500 --workers 4 --size 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dove_vlm.data import ImageFolderDataset  # noqa: E402
from dove_vlm.image_processing_dove import DoveImageProcessor  # noqa: E402
from train_tokenizer.data import batch_indices, batch_loader, get_batch, to_pixel_values  # noqa: E402


def write_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs of `size`² px in `folder` (kept when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    return paths


def main_process_rate(dataset, batch_size: int, steps: range, seed: int) -> float:
    started = time.perf_counter()
    for step in steps:
        get_batch(dataset, batch_indices(len(dataset), batch_size, step, seed))
    return len(steps) * batch_size / (time.perf_counter() - started)


def loader_rate(dataset, batch_size: int, steps: range, seed: int, workers: int) -> float:
    loader = batch_loader(dataset, batch_size, seed, steps.start, steps.stop, num_workers=workers)
    started = time.perf_counter()  # a new loader each round: its workers' start-up is counted
    for batch in loader:
        to_pixel_values(batch["pixels"])  # what the training step does with it
    return len(steps) * batch_size / (time.perf_counter() - started)


def single_threaded(fn, *args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/dove_jpegs")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256, help="JPEG side and the model's image size (paper: 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-batches", type=int, default=15, help="batches per way in each round")
    args = parser.parse_args(argv)
    paths = write_jpegs(Path(args.folder), args.images, args.size)
    for path in paths:  # both ways read from the page cache: the comparison is decoding, not the disk
        path.read_bytes()
    dataset = ImageFolderDataset(args.folder, DoveImageProcessor(size=args.size))
    total = len(dataset) // args.batch_size
    rounds = [range(start, min(total, start + args.round_batches)) for start in range(0, total, args.round_batches)]
    threads = torch.get_num_threads()
    print(f"{len(dataset)} JPEGs of {args.size}x{args.size} px in {args.folder}; {total} batches of {args.batch_size} "
          f"in {len(rounds)} rounds, the ways alternated within each round (median rate over the rounds); "
          f"{os.cpu_count()} CPU cores")
    ways = {f"main process ({threads} torch threads)": lambda steps: main_process_rate(
                dataset, args.batch_size, steps, args.seed),
            "main process (1 torch thread)": lambda steps: single_threaded(
                main_process_rate, dataset, args.batch_size, steps, args.seed),
            f"DataLoader, {args.workers} workers": lambda steps: single_threaded(
                loader_rate, dataset, args.batch_size, steps, args.seed, args.workers)}
    rates: dict[str, list[float]] = {label: [] for label in ways}
    for steps in rounds:  # every way reads the same batches; alternated, so a load change on the machine hits all
        for label, run in ways.items():
            rates[label].append(run(steps))
    median = {label: float(np.median(values)) for label, values in rates.items()}
    print(f"{'loading':<38}{'images/s':>10}")
    for label, rate in median.items():
        print(f"{label:<38}{rate:>10.1f}")
    loader = median[f"DataLoader, {args.workers} workers"]
    print(f"ratio DataLoader / main process (1 thread): {loader / median['main process (1 torch thread)']:.2f}x; "
          f"/ main process ({threads} threads, torch's default): {loader / median[next(iter(ways))]:.2f}x")

if __name__ == "__main__":
    main()
