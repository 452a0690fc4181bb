"""The report's own PNG figures (the training report's length histogram, length-vs-complexity and
reconstruction figures are reused from `train_tokenizer.plots`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files only
import matplotlib.pyplot as plt
import numpy as np

from train_tokenizer.plots import _to_image


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality_curve(quality: dict, path: Path) -> None:
    """PSNR, LPIPS and rFID (the ones measured) against the number of tokens, with the adaptive point."""
    panels = [("psnr", "PSNR (dB) ↑"), ("lpips", "LPIPS ↓"), ("rfid", "rFID ↓")]
    panels = [(key, label) for key, label in panels if quality.get(f"{key}_by_k")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (key, label) in zip(np.atleast_1d(axes), panels):
        ks = sorted(int(k) for k in quality[f"{key}_by_k"])
        ax.plot(ks, [quality[f"{key}_by_k"][k] for k in ks], marker="o", label="forced k tokens")
        ax.scatter([quality["mean_length"]], [quality[f"{key}_adaptive"]], color="red", zorder=3,
                   label="adaptive (at mean length)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("Reconstruction quality per token count")
    _save(fig, path)


def plot_probe(probes: list[dict], path: Path) -> None:
    names = ["dove_tokens", "dove_hidden", "dove_hidden_pca", "vqgan_latents"]
    labels = ["DOVE tokens", "DOVE hidden states", "DOVE hidden, PCA to VQGAN width", "VQGAN latents"]
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(probes), 3.2))
    width = 0.8 / len(names)
    for j, (name, label) in enumerate(zip(names, labels)):
        values = [p["features"][name]["accuracy"] for p in probes]
        ax.bar(np.arange(len(probes)) + (j - (len(names) - 1) / 2) * width, values, width, label=label)
    for i, p in enumerate(probes):
        ax.hlines(p["chance_majority"], i - 0.45, i + 0.45, colors="k", linestyles="dotted")
    ax.set_xticks(np.arange(len(probes)), [Path(p["data"]).name for p in probes])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Linear probe on mean-pooled features (dotted: majority class)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_photos(photos: dict, pixels, path: Path) -> None:
    rows = photos["photos"]  # flat to busy, in the order of `pixels`
    fig = plt.figure(figsize=(10, 5.4))
    grid = fig.add_gridspec(2, len(rows), height_ratios=[1, 2.4])
    for i, row in enumerate(rows):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(_to_image(pixels[i]), interpolation="nearest")
        ax.set_title(f"{row['tokens']}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    lap = [r["laplacian_model_input"] for r in rows]
    tokens = [r["tokens"] for r in rows]
    ax.scatter(lap, tokens)
    for r in rows:
        ax.annotate(r["photo"], (r["laplacian_model_input"], r["tokens"]), fontsize=7, xytext=(3, 2),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"Laplacian variance of the {photos['image_size']} px model input")
    ax.set_ylabel("tokens")
    ax.set_title(f"scikit-image photos (top: model input, by complexity, with its tokens): Spearman ρ = "
                 f"{photos['spearman_tokens_vs_laplacian_model_input']:.2f}", fontsize=9)
    _save(fig, path)


def plot_generalization_source(name: str, source: dict, path: Path) -> None:
    """One held-out source: tokens against Laplacian variance (and against object count where known)."""
    panels = [("laplacian", "Laplacian variance of the model input", "spearman_tokens_vs_laplacian")]
    if source.get("objects") is not None:
        panels.append(("objects", "objects", "spearman_tokens_vs_objects"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4))
    for ax, (key, label, rho) in zip(np.atleast_1d(axes), panels):
        ax.scatter(source[key], source["lengths"], s=12, alpha=0.6)
        if key == "laplacian":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("tokens")
        ax.set_title(f"{name}: Spearman ρ = {source[rho]:.2f}", fontsize=9)
    _save(fig, path)


def plot_generalization_lengths(section: dict, path: Path) -> None:
    """The distribution of lengths on each held-out source."""
    names = list(section["sources"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.0), squeeze=False)
    bins = np.arange(0.5, section["max_tokens"] + 1.5)
    for ax, name in zip(axes[0], names):
        source = section["sources"][name]
        ax.hist(source["lengths"], bins=bins)
        ax.set_xlabel("tokens")
        ax.set_title(f"{name}: mean {source['mean_length']:.1f}, {source['distinct_lengths']} lengths", fontsize=9)
    axes[0][0].set_ylabel("images")
    _save(fig, path)


def plot_pca(pictures: dict, path: Path, count: int = 6) -> None:
    count = min(count, len(pictures["images"]))
    columns = [("input", None), ("VQGAN latents", "latents_rgb"), ("decoded from tokens", "decoded_rgb")]
    fig, axes = plt.subplots(count, 4, figsize=(7.5, 1.6 * count), gridspec_kw={"width_ratios": [1, 1, 1, 2.2]})
    axes = np.asarray(axes).reshape(count, 4)
    for i in range(count):
        for j, (title, key) in enumerate(columns):
            picture = _to_image(pictures["images"][i]) if key is None else pictures[key][i]
            axes[i, j].imshow(picture, interpolation="nearest")
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title, fontsize=8)
        axes[i, 3].imshow(pictures["tokens_rgb"][i][None], aspect="auto", interpolation="nearest")
        axes[i, 3].set_yticks([])
        axes[i, 3].set_title(f"{int(pictures['lengths'][i])} tokens" + (" (PCA, in order)" if i == 0 else ""),
                             fontsize=8)
    fig.suptitle("PCA (3 components → RGB) of features over each image", fontsize=9)
    _save(fig, path)


def plot_queries(queries: dict, path: Path) -> None:
    groups = queries["by_query"] or queries["by_kind"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, g in groups.items():
        ratio = g["tokens_query"] / max(g["tokens_null"], 1e-9)
        ax.scatter(ratio, g["in_box_psnr_gain"], s=10 + 4 * g["count"], alpha=0.7)
        ax.annotate(name, (ratio, g["in_box_psnr_gain"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(1, color="k", lw=0.5)
    ax.set_xlabel("tokens with the query / with the null query")
    ax.set_ylabel("in-box PSNR gain over null (dB)")
    ax.set_title("Q-DOVE per query (marker size: images)", fontsize=9)
    _save(fig, path)
