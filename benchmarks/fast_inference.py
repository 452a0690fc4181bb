"""Fast inference, measured side by side in one run (never asserted in unit tests; machines are noisy).

1. Early exit vs the full parallel pass, on held-out scenes whose adaptive length is ≤ 25% of max_tokens.
2. Prefix cache: 8 queries on one image (H_v encoded once) vs 8 independent encodes.

Usage:
    python benchmarks/fast_inference.py --model runs/demo/tokenizer [--query-model runs/demo/qdove]
Without --query-model, part 2 uses a Q-DOVE model with the same shapes and random weights (timing does not
depend on the weights there: every query runs all slots). `--geometry paper` adds the paper's shapes
(random weights, length forced to 25% of max_tokens) and `--geometry generator` the paper-size generator with
256 slots over the tiny VQGAN, to show where the savings appear.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from dove_vlm import DoveModel, preset_config
from dove_vlm.data import SyntheticScenes
from dove_vlm.query_tokenizer import default_query_tokenizer

QUERIES = ["the blue triangle", "what colour is the square?", "the red circle", "the green cross",
           "is there a yellow diamond?", "the white square", "what shape is the purple object?", "the circle"]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def side_by_side(a, b, repeats: int) -> tuple[float, float]:
    """Median times of `a` and `b`, measured alternately so drifts in machine load hit both."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, store in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            store.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def scenes_tensor(scenes) -> torch.Tensor:
    images = np.stack([np.array(s.image, dtype=np.uint8) for s in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def early_exit(model: DoveModel, x: torch.Tensor, repeats: int, chunk_size: int | None, label: str) -> None:
    full = model.encode(x)
    fast = model.encode(x, early_exit=True, chunk_size=chunk_size)
    diff = (full.tokens - fast.tokens).abs().max().item()
    same = torch.equal(full.lengths, fast.lengths)
    t_full, t_fast = side_by_side(lambda: model.encode(x), lambda: model.encode(x, early_exit=True, chunk_size=chunk_size),
                                  repeats)
    t_vqgan = timed(lambda: model.encode_latents(x), repeats)
    n = model.config.max_tokens
    print(f"  {label}: batch {len(x)}, mean length {full.lengths.float().mean():.1f}/{n}, slots computed "
          f"{fast.p_eos.shape[1]}/{n}; full {1e3 * t_full:.1f} ms, early exit {1e3 * t_fast:.1f} ms → "
          f"{t_full / t_fast:.2f}× faster (same lengths: {same}, max |Δtoken| {diff:.1e}); of which VQGAN encoder "
          f"{1e3 * t_vqgan:.1f} ms, so beyond the VQGAN {_beyond(t_full, t_fast, t_vqgan)}")


def _beyond(t_full: float, t_fast: float, t_vqgan: float) -> str:
    """Ratio of the times left after the VQGAN encoder (measured separately, so it can exceed a fast path's time
    on a noisy machine: then no ratio is printed)."""
    if t_fast - t_vqgan <= 0.05 * t_fast:
        return "n/a (the VQGAN encoder is nearly all of the time)"
    return f"{(t_full - t_vqgan) / (t_fast - t_vqgan):.2f}×"


@torch.no_grad()
def prefix_cache(model: DoveModel, image: torch.Tensor, repeats: int, label: str) -> None:
    queries = QUERIES

    def independent():
        return [model.encode(image, queries=[q]) for q in queries]

    def cached():
        return model.encode(prefix=model.encode_prefix(image), queries=queries)

    one_by_one = independent()
    together = cached()
    diff = max((a.p_eos[0] - together.p_eos[i]).abs().max().item() for i, a in enumerate(one_by_one))
    t_ind, t_cache = side_by_side(independent, cached, repeats)
    t_batched = timed(lambda: model.encode(image.expand(len(queries), -1, -1, -1), queries=queries), repeats)
    print(f"  {label}: {len(queries)} queries on one image: independent {1e3 * t_ind:.1f} ms, prefix cache "
          f"{1e3 * t_cache:.1f} ms → {t_ind / t_cache:.2f}× faster (one batched encode of 8 copies: "
          f"{1e3 * t_batched:.1f} ms, {t_batched / t_cache:.2f}×); max |Δp_eos| {diff:.1e}")


def query_model_like(config) -> DoveModel:
    tokenizer = default_query_tokenizer()
    torch.manual_seed(0)
    model = DoveModel(type(config)(**{**config.to_dict(), "query_vocab_size": len(tokenizer)}))
    model.set_query_tokenizer(tokenizer)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a DOVE checkpoint (e.g. runs/demo/tokenizer)")
    parser.add_argument("--query-model", default=None, help="a Q-DOVE checkpoint")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: auto (a quarter, then doubling)")
    parser.add_argument("--geometry", choices=["tiny", "paper", "generator"], nargs="*", default=["tiny"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    model = DoveModel.from_pretrained(args.model).eval()
    n = model.config.max_tokens
    scenes = SyntheticScenes(400, image_size=model.config.image_size, seed=0, split="test")
    x_all = scenes_tensor(scenes)
    with torch.no_grad():
        lengths = torch.cat([model.encode(x_all[i : i + 100]).lengths for i in range(0, len(x_all), 100)])
    short = x_all[lengths <= n // 4]
    print(f"1. early exit vs full pass ({args.model}): {len(short)}/{len(x_all)} held-out scenes need ≤ {n // 4} tokens")
    for batch in (1, 16):
        if len(short) >= batch:
            early_exit(model, short[:batch], args.repeats, args.chunk_size, f"trained tiny, batch {batch}")
    if "paper" in args.geometry:
        paper = DoveModel(preset_config("paper")).eval()
        with torch.no_grad():  # random weights; EOS forced at ~25% of max_tokens by the bias of one slot
            paper.eos_head.weight.zero_()
            paper.eos_head.bias.fill_(-5.0)
        x = torch.rand(1, 3, 256, 256) * 2 - 1
        with torch.no_grad():
            fixed = paper.encode(x, num_tokens=paper.config.max_tokens // 4)

        def full_pass():
            paper.encode(x, num_tokens=paper.config.max_tokens // 4)

        def early():
            paper.encode(x, num_tokens=paper.config.max_tokens // 4, early_exit=True, chunk_size=args.chunk_size)

        t_full, t_fast = side_by_side(full_pass, early, max(3, args.repeats // 5))
        with torch.no_grad():
            t_vqgan = timed(lambda: paper.encode_latents(x), max(3, args.repeats // 5))
        print(f"  paper geometry (random weights, length {int(fixed.lengths[0])}/{paper.config.max_tokens}): full "
              f"{1e3 * t_full:.0f} ms, early exit {1e3 * t_fast:.0f} ms → {t_full / t_fast:.2f}× faster; VQGAN encoder "
              f"{1e3 * t_vqgan:.0f} ms, so beyond the VQGAN {_beyond(t_full, t_fast, t_vqgan)}")

    if "generator" in args.geometry:
        # Where the generator dominates: the paper's generator and 256 slots over the tiny VQGAN's 8×8 latents.
        big = DoveModel(preset_config("tiny", hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                                      intermediate_size=2048, max_tokens=256)).eval()
        x = x_all[:1]
        length = big.config.max_tokens // 4

        def big_full():
            big.encode(x, num_tokens=length)

        def big_early():
            big.encode(x, num_tokens=length, early_exit=True, chunk_size=args.chunk_size)

        with torch.no_grad():
            t_full, t_fast = side_by_side(big_full, big_early, max(5, args.repeats // 2))
        print(f"  paper-size generator over tiny latents (random weights, length {length}/256): full "
              f"{1e3 * t_full:.0f} ms, early exit {1e3 * t_fast:.0f} ms → {t_full / t_fast:.2f}× faster")

    qmodel = DoveModel.from_pretrained(args.query_model).eval() if args.query_model else query_model_like(model.config)
    source = args.query_model or "random-weight Q-DOVE with the same shapes"
    print(f"2. prefix cache ({source})")
    prefix_cache(qmodel, x_all[:1], args.repeats, "tiny")


if __name__ == "__main__":
    main()
