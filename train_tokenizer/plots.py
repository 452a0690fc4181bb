"""PNG figures of a tokenizer evaluation: reconstructions with their token counts, the length histogram,
length against complexity, and PSNR against the number of tokens."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files only
import matplotlib.pyplot as plt
import numpy as np
import torch

from .evaluate import TokenizerEvaluation


def _to_image(t: torch.Tensor) -> np.ndarray:
    return ((t.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def plot_reconstructions(ev: TokenizerEvaluation, path: Path) -> None:
    images, recons, lengths = ev.examples["images"], ev.examples["adaptive"], ev.examples["lengths"]
    count = len(images)
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6))
    axes = np.asarray(axes).reshape(2, count)
    for i in range(count):
        axes[0, i].imshow(_to_image(images[i]), interpolation="nearest")
        axes[1, i].imshow(_to_image(recons[i]), interpolation="nearest")
        axes[1, i].set_title(f"{int(lengths[i])} tok", fontsize=9)
        for ax in axes[:, i]:
            ax.axis("off")
    axes[0, 0].set_title("input", fontsize=9, loc="left")
    fig.suptitle("DOVE reconstructions (bottom) with their adaptive token counts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_length_histogram(ev: TokenizerEvaluation, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.arange(0.5, ev.max_tokens + 1.5, 1)
    ax.hist(ev.lengths, bins=bins, color="#4477aa")
    ax.set_xlabel("tokens per image")
    ax.set_ylabel("images")
    ax.set_title(f"Token lengths (mean {ev.lengths.mean():.1f} of max {ev.max_tokens})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_length_vs_complexity(ev: TokenizerEvaluation, path: Path) -> None:
    """Length against the object count (when the data have objects) and against Laplacian variance."""
    summary = ev.summary()
    with_objects = ev.num_objects is not None
    fig, axes = plt.subplots(1, 2 if with_objects else 1, figsize=(9 if with_objects else 5, 3.4))
    axes = np.atleast_1d(axes)
    if with_objects:
        jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(ev.num_objects))
        axes[0].scatter(ev.num_objects + jitter, ev.lengths, s=10, alpha=0.6)
        axes[0].set_xlabel("objects in the scene")
        axes[0].set_title(f"Spearman ρ = {summary['spearman_length_vs_objects']:.2f}")
    axes[0].set_ylabel("tokens")
    colour = {"c": ev.num_objects, "cmap": "viridis"} if with_objects else {}
    sc = axes[-1].scatter(ev.laplacian, ev.lengths, s=10, alpha=0.7, **colour)
    axes[-1].set_xscale("symlog", linthresh=1e-3)
    axes[-1].set_xlabel("Laplacian variance (complexity)")
    axes[-1].set_title(f"Spearman ρ = {summary['spearman_length_vs_laplacian']:.2f}")
    if with_objects:
        fig.colorbar(sc, ax=axes[-1], label="objects")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_psnr_vs_tokens(ev: TokenizerEvaluation, path: Path) -> None:
    ks = sorted(ev.psnr_by_k)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(ks, [ev.psnr_by_k[k].mean() for k in ks], marker="o", label="forced k tokens")
    ax.scatter([ev.lengths.mean()], [ev.psnr_adaptive.mean()], color="red", zorder=3, label="adaptive (mean length)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("Reconstruction quality per token count")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(ev: TokenizerEvaluation, output_dir: str | Path) -> list[str]:
    output_dir = Path(output_dir)
    files = {
        "reconstructions.png": plot_reconstructions,
        "length_histogram.png": plot_length_histogram,
        "length_vs_complexity.png": plot_length_vs_complexity,
        "psnr_vs_tokens.png": plot_psnr_vs_tokens,
    }
    for name, fn in files.items():
        fn(ev, output_dir / name)
    return list(files)


def plot_training_curves(history: list[dict], path: Path) -> bool:
    """The logged training figures against the step (loss, L_rec and the EOS threshold; mean length) as one PNG;
    False (nothing written) when nothing was logged."""
    if not history:
        return False
    steps = [h["step"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label in (("loss", "loss"), ("rec", "L_rec"), ("threshold", "EOS threshold")):
        left.plot(steps, [h.get(key, float("nan")) for h in history], label=label)
    left.set_xlabel("step")
    left.legend()
    right.plot(steps, [h.get("mean_length", float("nan")) for h in history], label="mean length (adaptive rows)")
    if any("mean_length_queried" in h for h in history):
        right.plot(steps, [h.get("mean_length_queried", float("nan")) for h in history], label="queried rows")
    right.set_xlabel("step")
    right.set_ylabel("tokens")
    right.legend()
    fig.suptitle("Training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
