"""The short text summary of a `dove train` run (its `metrics.json`), printed at the end of training."""

from __future__ import annotations

import os


def format_report(metrics: dict, output_dir: str) -> str:
    """A short human-readable report of a training run's `metrics.json`."""
    lines = [f"model written to {output_dir}"]
    ev = metrics.get("eval")
    if ev:
        ks = ", ".join(f"k={k}: {v:.2f}" for k, v in ev["psnr_by_k"].items())
        objects = ev.get("spearman_length_vs_objects")
        lines += [
            (f"held-out scenes: {ev['num_images']}" if ev.get("data", "synthetic").startswith("synthetic")
             else f"held-out images: {ev['num_images']} of {ev['data']}"),
            f"tokens per image: mean {ev['mean_length']:.2f} ± {ev['std_length']:.2f} "
            f"({100 * ev['mean_length_fraction_of_max']:.0f}% of max {ev['max_tokens']}), "
            f"{ev['distinct_lengths']} distinct lengths",
            (f"Spearman(length, objects) = {objects:.3f}; " if objects is not None else "")
            + f"Spearman(length, Laplacian variance) = {ev['spearman_length_vs_laplacian']:.3f}",
            f"PSNR by forced tokens: {ks}",
            f"PSNR adaptive: {ev['psnr_adaptive']:.2f} dB (max-length minus adaptive: "
            f"{ev['psnr_gap_max_minus_adaptive']:.2f} dB)",
        ]
        if ev.get("lpips_by_k"):
            lpips = ", ".join(f"k={k}: {v:.3f}" for k, v in ev["lpips_by_k"].items())
            lines.append(f"LPIPS by forced tokens: {lpips}; adaptive: {ev['lpips_adaptive']:.3f}")
        for name, row in (ev.get("reference") or {}).items():
            lpips = f", LPIPS {row['lpips']:.3f}" if row.get("lpips") is not None else ""
            lines.append(f"reference {name.replace('_', ' ')}: PSNR {row['psnr']:.2f} dB{lpips}")
    if metrics.get("eval_skipped"):
        lines.append(f"evaluation skipped: {metrics['eval_skipped']}")
    q = metrics.get("query_eval")
    if q:
        lines += [
            f"Q-DOVE on {q['num_images']} held-out scenes with single-object queries: "
            f"{q['mean_tokens_query']:.2f} tokens with the query vs {q['mean_tokens_null']:.2f} with the null query "
            f"({100 * q['query_over_null_tokens']:.0f}%)",
            f"in-box PSNR: query {q['in_box_psnr_query']:.2f} dB vs null {q['in_box_psnr_null']:.2f} dB "
            f"(difference {q['in_box_psnr_query_minus_null']:+.2f} dB)",
        ]
        if "null_over_plain_tokens" in q:
            lines.append(f"null query vs plain DOVE tokens: {q['mean_tokens_null']:.2f} vs {q['mean_tokens_plain_dove']:.2f} "
                         f"({100 * (q['null_over_plain_tokens'] - 1):+.1f}%)")
    for name in metrics.get("plots", []):
        lines.append(f"figure: {os.path.join(output_dir, name)}")
    return "\n".join(lines)
