"""Held-out evaluation of a tokenizer: length statistics, length against complexity, and reconstruction
quality per forced token count (truncation) and at the adaptive length (the loop over images is
`report.quality.evaluate_quality`), and Q-DOVE's held-out single-object queries."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from dove_vlm import DoveModel
from dove_vlm.data import SyntheticScenes


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (computed on the [0, 1] scale)."""
    mse = ((reconstruction.clamp(-1, 1) - target) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def default_token_counts(max_tokens: int) -> list[int]:
    """k = 4, 8, 16, 32, ... up to max_tokens (always ending at max_tokens)."""
    ks, k = [], 4
    while k < max_tokens:
        ks.append(k)
        k *= 2
    return ks + [max_tokens]


def scenes_to_pixels(scenes) -> torch.Tensor:
    """Synthetic scenes (or anything with a PIL `.image`) → pixel values `(B, 3, H, W)` in [-1, 1]."""
    images = np.stack([np.asarray(s.image, dtype=np.uint8) for s in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def reconstruct(model: DoveModel, x: torch.Tensor, token_counts: list[int]):
    """The adaptive encoding of `x`, its reconstruction, and the reconstruction from the first k tokens for each
    k in `token_counts`. Causality: the first k tokens of the full-length pass are exactly the k-token encoding,
    so one full-length pass serves every k."""
    enc = model.encode(x)
    recon = model.decode(enc.tokens, enc.attention_mask).pixel_values
    full = model.encode(x, num_tokens=model.config.max_tokens)
    by_k = {}
    for k in token_counts:
        mask = full.attention_mask.clone()
        mask[:, k:] = 0
        by_k[k] = model.decode(full.tokens, mask).pixel_values
    return enc, recon, by_k


@dataclass
class TokenizerEvaluation:
    lengths: np.ndarray
    num_objects: np.ndarray | None  # None for data without object annotations
    laplacian: np.ndarray
    psnr_adaptive: np.ndarray
    psnr_by_k: dict[int, np.ndarray]
    max_tokens: int
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict:
        lengths = self.lengths.astype(float)
        psnr_by_k = {int(k): float(v.mean()) for k, v in self.psnr_by_k.items()}
        return {
            "num_images": len(lengths),
            "max_tokens": self.max_tokens,
            "mean_length": float(lengths.mean()),
            "std_length": float(lengths.std()),
            "std_over_mean": float(lengths.std() / max(lengths.mean(), 1e-9)),
            "mean_length_fraction_of_max": float(lengths.mean() / self.max_tokens),
            "min_length": int(lengths.min()),
            "max_length": int(lengths.max()),
            "distinct_lengths": len(np.unique(lengths)),
            "spearman_length_vs_objects": None if self.num_objects is None else _spearman(lengths, self.num_objects),
            "spearman_length_vs_laplacian": _spearman(lengths, self.laplacian),
            "psnr_adaptive": float(self.psnr_adaptive.mean()),
            "psnr_by_k": psnr_by_k,
            # with forced lengths that leave out max_tokens (`dove report --token-counts 4,8`) there is no gap
            "psnr_gap_max_minus_adaptive": float(psnr_by_k[self.max_tokens] - self.psnr_adaptive.mean())
            if self.max_tokens in psnr_by_k else None,
            "psnr_rises_with_k": bool(all(a < b for a, b in zip(list(psnr_by_k.values()), list(psnr_by_k.values())[1:]))),
        }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant column has no rank correlation (scipy would return NaN)
    return float(spearmanr(a, b).statistic)


def single_object_query(scene, index: int) -> tuple[str, list] | None:
    """A query naming one object of the scene, alternating between a phrase ("the blue triangle") and a
    question ("what colour is the square?"); None for an empty scene."""
    phrases = [p for p in scene.phrases if len(p["boxes"]) == 1 and len(p["text"].split()) == 3]
    questions = [q for q in scene.vqa if q["type"] == "colour"]
    pool = questions if (index % 2 and questions) else phrases
    if not pool:
        return None
    pick = pool[index % len(pool)]
    return pick.get("text", pick.get("question")), pick["boxes"]


def in_box_psnr(reconstruction: torch.Tensor, target: torch.Tensor, boxes: list) -> torch.Tensor:
    """Per-image PSNR over the pixels inside that image's boxes (`boxes[i]`: list of pixel xyxy)."""
    mask = torch.zeros(target.shape[0], 1, *target.shape[-2:], device=target.device)
    for i, sample_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in sample_boxes:
            mask[i, :, int(y0):int(y1), int(x0):int(x1)] = 1
    error = (((reconstruction.clamp(-1, 1) - target) / 2).pow(2) * mask).flatten(1).sum(1)
    mse = error / (mask.flatten(1).sum(1) * target.shape[1]).clamp(min=1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def held_out_queries(num_scenes: int, image_size: int, seed: int = 0) -> list[tuple]:
    """`(scene, (query text, boxes))` for every held-out test scene that has a single-object query."""
    scenes = SyntheticScenes(num_scenes, image_size=image_size, seed=seed, split="test")
    return [(scene, q) for i, scene in enumerate(scenes) if (q := single_object_query(scene, i)) is not None]


@torch.no_grad()
def query_rows(model: DoveModel, num_scenes: int = 200, seed: int = 0, batch_size: int = 50,
               reference: DoveModel | None = None) -> dict:
    """Q-DOVE on held-out scenes with single-object queries, per query: the query text, and the token count and
    in-box PSNR with the query and with the null query on the same image (and, given the plain DOVE
    `reference`, its token count). Returns `{"text": [...], "query_len": tensor, ...}`."""
    model.eval()
    device = next(model.parameters()).device
    picked = held_out_queries(num_scenes, model.config.image_size, seed)
    rows: dict[str, list] = {"query_len": [], "null_len": [], "plain_len": [], "query_psnr": [], "null_psnr": []}
    for start in tqdm(range(0, len(picked), batch_size), desc="evaluating queries", leave=False):
        batch = picked[start : start + batch_size]
        x = scenes_to_pixels([s for s, _ in batch]).to(device)
        texts, boxes = [q[0] for _, q in batch], [q[1] for _, q in batch]
        latents = model.encode_latents(x)  # one VQGAN pass for both queries
        for key, queries in (("query", texts), ("null", None)):
            enc = model.encode(x, latents=latents, queries=queries)
            recon = model.decode(enc.tokens, enc.attention_mask).pixel_values
            rows[f"{key}_len"].append(enc.lengths.cpu())
            rows[f"{key}_psnr"].append(in_box_psnr(recon, x, boxes).cpu())
        if reference is not None:
            rows["plain_len"].append(reference.encode(x).lengths.cpu())
    stats = {k: torch.cat(v).float() for k, v in rows.items() if v}
    return {"text": [q[0] for _, q in picked], **stats}


def evaluate_queries(model: DoveModel, num_scenes: int = 200, seed: int = 0, batch_size: int = 50,
                     reference: DoveModel | None = None) -> dict:
    """Summary of `query_rows`: tokens and in-box PSNR with the query against the null query on the same images,
    and (given the plain DOVE `reference`) null-query lengths against it."""
    return summarize_query_rows(query_rows(model, num_scenes, seed, batch_size, reference))


def summarize_query_rows(stats: dict) -> dict:
    summary = {
        "num_images": len(stats["text"]),
        "mean_tokens_query": float(stats["query_len"].mean()),
        "mean_tokens_null": float(stats["null_len"].mean()),
        "query_over_null_tokens": float(stats["query_len"].mean() / stats["null_len"].mean()),
        "in_box_psnr_query": float(stats["query_psnr"].mean()),
        "in_box_psnr_null": float(stats["null_psnr"].mean()),
        "in_box_psnr_query_minus_null": float(stats["query_psnr"].mean() - stats["null_psnr"].mean()),
    }
    if "plain_len" in stats:
        summary["mean_tokens_plain_dove"] = float(stats["plain_len"].mean())
        summary["null_over_plain_tokens"] = float(stats["null_len"].mean() / stats["plain_len"].mean())
    return summary
