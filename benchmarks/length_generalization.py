"""Do a tokenizer's lengths follow content beyond its training data? Trains nothing: loads a tokenizer folder and
prints, per held-out source (`dove report`'s generalization section: scenes of the held-out renderer, crops of the
held-out photos, foolbox's CIFAR / ImageNet samples), Spearman(tokens, Laplacian variance), Spearman(tokens,
objects) where known, the distinct lengths, the mean length as a share of max_tokens and the share at the maximum;
then the in-distribution figures on the embedded scenes' test split (Spearman against objects and Laplacian
variance, PSNR at k = 4 ... max_tokens, adaptive against max-length PSNR). Each figure is checked against its
target (renderer Spearman(objects) >= 0.6; photos and foolbox Spearman(Laplacian) >= 0.5; every source >= 8
distinct lengths, mean <= 70% of max_tokens, at most half the images at the maximum; in distribution Spearman
>= 0.6 objects and >= 0.5 Laplacian, PSNR rising with k, adaptive within 1 dB of max).

Usage:
    python benchmarks/length_generalization.py runs/tiny [more tokenizer folders] [--images 96] [--scenes 200]
        [--seed 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dove_vlm import DoveImageProcessor, DoveModel  # noqa: E402
from train_tokenizer.evaluate import default_token_counts  # noqa: E402
from train_tokenizer.report.generalization import TARGETS, generalization  # noqa: E402
from train_tokenizer.report.images import load_report_images  # noqa: E402
from train_tokenizer.report.quality import evaluate_quality  # noqa: E402


def _mark(hit: bool) -> str:
    return "hit" if hit else "MISS"


@torch.no_grad()
def measure(folder: str, images: int, scenes: int, seed: int) -> dict:
    model = DoveModel.from_pretrained(folder).eval()
    processor = DoveImageProcessor(size=model.config.image_size)
    section = generalization(model, processor, images, seed)
    for source in section["sources"].values():
        for key in ("lengths", "laplacian", "objects"):
            source.pop(key)
    test = load_report_images("synthetic", processor, scenes, seed)
    ev = evaluate_quality(model, test, default_token_counts(model.config.max_tokens), use_lpips=False).summary()
    gap = ev["psnr_gap_max_minus_adaptive"]
    section["in_distribution"] = {
        "num_images": ev["num_images"], "mean_length": ev["mean_length"], "distinct_lengths": ev["distinct_lengths"],
        "spearman_tokens_vs_objects": ev["spearman_length_vs_objects"],
        "spearman_tokens_vs_laplacian": ev["spearman_length_vs_laplacian"], "psnr_by_k": ev["psnr_by_k"],
        "psnr_adaptive": ev["psnr_adaptive"], "psnr_gap_max_minus_adaptive": gap,
        "targets_hit": {"spearman_tokens_vs_objects": ev["spearman_length_vs_objects"] >= 0.6,
                        "spearman_tokens_vs_laplacian": ev["spearman_length_vs_laplacian"] >= 0.5,
                        "psnr_rises_with_k": ev["psnr_rises_with_k"], "adaptive_within_1db": gap is not None and gap <= 1.0}}
    return section


def format_section(folder: str, section: dict) -> str:
    lines = [f"{folder} (max_tokens {section['max_tokens']}; targets {TARGETS})"]
    for name, s in section["sources"].items():
        hits = s["targets_hit"]
        objects = "" if s["spearman_tokens_vs_objects"] is None else \
            f"  rho(objects) {s['spearman_tokens_vs_objects']:+.3f} [{_mark(hits['spearman_tokens_vs_objects'])}]"
        laplacian = f"  rho(Laplacian) {s['spearman_tokens_vs_laplacian']:+.3f}"
        if "spearman_tokens_vs_laplacian" in hits:
            laplacian += f" [{_mark(hits['spearman_tokens_vs_laplacian'])}]"
        lines.append(f"  {name:9s} n={s['num_images']:3d}{objects}{laplacian}  distinct {s['distinct_lengths']} "
                     f"[{_mark(hits['distinct_lengths'])}]  mean {s['mean_length']:.1f} = "
                     f"{s['mean_fraction_of_max']:.0%} of max [{_mark(hits['mean_fraction_of_max'])}]  at max "
                     f"{s['share_at_max']:.0%} [{_mark(hits['share_at_max'])}]")
    d = section["in_distribution"]
    hits = d["targets_hit"]
    ks = ", ".join(f"k={k}: {v:.2f}" for k, v in d["psnr_by_k"].items())
    lines.append(f"  in-distribution scenes n={d['num_images']}: rho(objects) {d['spearman_tokens_vs_objects']:+.3f} "
                 f"[{_mark(hits['spearman_tokens_vs_objects'])}]  rho(Laplacian) {d['spearman_tokens_vs_laplacian']:+.3f} "
                 f"[{_mark(hits['spearman_tokens_vs_laplacian'])}]  mean length {d['mean_length']:.1f}, "
                 f"{d['distinct_lengths']} distinct")
    lines.append(f"    PSNR {ks} [{_mark(hits['psnr_rises_with_k'])}: rising]; adaptive {d['psnr_adaptive']:.2f} dB, "
                 f"max minus adaptive {d['psnr_gap_max_minus_adaptive']:.2f} dB [{_mark(hits['adaptive_within_1db'])}]")
    lines += [f"  note: {n}" for n in section["notes"]]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="tokenizer folders (`dove train --output-dir`)")
    parser.add_argument("--images", type=int, default=96, help="renderer scenes and held-out photo crops per source")
    parser.add_argument("--scenes", type=int, default=200, help="in-distribution test scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    results = {}
    for folder in args.folders:
        results[folder] = measure(folder, args.images, args.scenes, args.seed)
        print(format_section(folder, results[folder]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
