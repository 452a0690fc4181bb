"""Q-DOVE lengths against in-box quality, per checkpoint (the figures behind the query length limits).

For the held-out single-object queries that `dove train --query` scores (`train_tokenizer.evaluate.query_rows`),
prints, for each model:
1. tokens (query over null query, same images) and in-box PSNR (query minus null) under query length limits
   [min, max], from one decode of every query at every forced length (the adaptive lengths clamped);
2. a fixed-length query code for comparison;
3. by query length: how the query code compares with the null-query code decoded at the same length.

Usage:
    python benchmarks/qdove_lengths.py runs/demo/qdove [more Q-DOVE folders] [--limits 1:32 2:16 2:12] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from dove_vlm import DoveModel
from train_tokenizer.evaluate import held_out_queries, in_box_psnr, scenes_to_pixels

BUCKETS = ((1, 2), (3, 4), (5, 8), (9, 16), (17, 31), (32, 256))


@torch.no_grad()
def analyse(model: DoveModel, limits: list[tuple[int, int]], num_scenes: int, seed: int, fixed: int) -> str:
    picked = held_out_queries(num_scenes, model.config.image_size, seed)
    x = scenes_to_pixels([s for s, _ in picked])
    latents = model.encode_latents(x)  # once: every encode below reuses the VQGAN latents
    texts, boxes = [q[0] for _, q in picked], [q[1] for _, q in picked]
    n = model.config.max_tokens

    def in_box(enc):
        return in_box_psnr(model.decode(enc.tokens, enc.attention_mask).pixel_values, x, boxes)

    null = model.encode(x, latents=latents)
    null_psnr = in_box(null)
    free = model.encode(x, latents=latents, queries=texts, query_min_tokens=1, query_max_tokens=n)  # the EOS head's own lengths
    by_k = torch.stack([in_box(model.encode(x, latents=latents, queries=texts, num_tokens=k)) for k in range(1, n + 1)], 1)
    rows = torch.arange(len(picked))
    null_tokens = null.lengths.float().mean()
    lines = [f"{len(picked)} queries; null query {null_tokens:.2f} tokens, in-box {null_psnr.mean():.2f} dB"]
    for low, high in limits:
        lengths = free.lengths.clamp(low, high)
        lines.append(f"  limits [{low}, {high}]: tokens {lengths.float().mean() / null_tokens:.0%} of the null query's, "
                     f"in-box {(by_k[rows, lengths - 1] - null_psnr).mean():+.2f} dB")
    lines.append(f"  fixed {fixed} tokens: {fixed / null_tokens:.0%}, in-box {(by_k[:, fixed - 1] - null_psnr).mean():+.2f} dB")
    same = model.encode(x, latents=latents, num_tokens=free.lengths)  # the null-query code at each query's length
    gap = by_k[rows, free.lengths - 1] - in_box(same)
    for low, high in BUCKETS:
        m = (free.lengths >= low) & (free.lengths <= min(high, n))
        if m.any():
            lines.append(f"  query length {low}-{min(high, n)}: {int(m.sum())} queries, null length "
                         f"{null.lengths[m].float().mean():.1f}; query vs null code at the same length {gap[m].mean():+.2f} dB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="Q-DOVE folders written by `dove train --query`")
    parser.add_argument("--limits", nargs="+", default=["1:32", "2:16", "2:12"], help="MIN:MAX query length limits")
    parser.add_argument("--fixed", type=int, default=8, help="the fixed query length to compare with")
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    limits = [tuple(int(v) for v in item.split(":")) for item in args.limits]
    for path in args.models:
        model = DoveModel.from_pretrained(path).eval()
        if not model.supports_queries:
            raise SystemExit(f"{path} is a plain DOVE model; give Q-DOVE folders (written by `dove train --query`).")
        print(f"{path}: {analyse(model, limits, args.num_scenes, args.seed, args.fixed)}", flush=True)


if __name__ == "__main__":
    main()
