"""Reconstruction quality per forced token count and at the adaptive length (the paper's quality-per-token
curve): PSNR, LPIPS (the `lpips` package) and rFID (Inception weights from a local file, else skipped)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from dove_vlm import DoveModel
from train_tokenizer.evaluate import TokenizerEvaluation, psnr, reconstruct
from train_tokenizer.losses import build_lpips

from .fid import InceptionUnavailable, frechet_distance, inception_features, load_inception
from .images import ReportImages, batches


@dataclass
class QualityResult:
    evaluation: TokenizerEvaluation  # lengths, PSNR per k and adaptive, complexity (the training report's type)
    lpips_by_k: dict[int, np.ndarray] = field(default_factory=dict)
    lpips_adaptive: np.ndarray | None = None
    rfid_by_k: dict[int, float] = field(default_factory=dict)
    rfid_adaptive: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        out = self.evaluation.summary()
        if self.lpips_adaptive is not None:
            out["lpips_adaptive"] = float(self.lpips_adaptive.mean())
            out["lpips_by_k"] = {int(k): float(v.mean()) for k, v in self.lpips_by_k.items()}
        out["rfid_adaptive"] = self.rfid_adaptive
        out["rfid_by_k"] = {int(k): v for k, v in self.rfid_by_k.items()} or None
        out["notes"] = self.notes
        return out


def build_lpips_metric(trunk_weights: str | None, notes: list[str]):
    """LPIPS (alex) with local trunk weights, or a random trunk with the package's calibrated heads (noted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            metric = build_lpips("alex", trunk_weights)
        except ImportError as err:
            notes.append(f"LPIPS skipped: {err}")
            return None
    if caught:
        notes.append("LPIPS: " + str(caught[0].message))
    return metric


@torch.no_grad()
def evaluate_quality(model: DoveModel, images: ReportImages, token_counts: list[int], batch_size: int = 50,
                     lpips_trunk_weights: str | None = None, inception_weights: str | None = None,
                     fid_images: int = 500, num_examples: int = 8, use_lpips: bool = True,
                     lpips_metric=None) -> QualityResult:
    """PSNR and LPIPS of every image at each forced k and at its adaptive length; rFID over the first
    `fid_images` images when `inception_weights` is a readable local file (else a note says why it is skipped).
    `lpips_metric`: an LPIPS module to use (built from `lpips_trunk_weights` otherwise). Runs on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    notes: list[str] = []
    if lpips_metric is None and use_lpips:
        lpips_metric = build_lpips_metric(lpips_trunk_weights, notes)
    lpips_metric = lpips_metric.to(device) if lpips_metric is not None else None
    try:
        inception = load_inception(inception_weights)
    except InceptionUnavailable as err:
        inception = None
        notes.append(f"rFID skipped: {err}")
    x_all = images.pixels
    keys = [*token_counts, "adaptive"]
    lengths, psnrs, lpipss = [], {k: [] for k in keys}, {k: [] for k in keys}
    fid_count = min(fid_images, len(x_all)) if inception is not None else 0
    features = {k: [] for k in ["real", *keys]}
    examples: dict[str, list] = {"images": [], "adaptive": [], "lengths": []}
    for rows in tqdm(batches(len(x_all), batch_size), desc="quality per token count", leave=False):
        x = x_all[rows].to(device)
        enc, recon, by_k = reconstruct(model, x, token_counts)
        by_k["adaptive"] = recon
        lengths.append(enc.lengths.cpu())
        fid_rows = max(0, min(fid_count - rows.start, len(x)))
        if fid_rows:
            features["real"].append(inception_features(inception, x[:fid_rows].cpu()))
        for k in keys:
            psnrs[k].append(psnr(by_k[k], x).cpu())
            if lpips_metric is not None:
                lpipss[k].append(lpips_metric(by_k[k].clamp(-1, 1), x).flatten().cpu())
            if fid_rows:
                features[k].append(inception_features(inception, by_k[k][:fid_rows].cpu()))
        if sum(len(e) for e in examples["images"]) < num_examples:
            examples["images"].append(x.cpu())
            examples["adaptive"].append(recon.cpu())
            examples["lengths"].append(enc.lengths.cpu())
    cat = {k: torch.cat(v).numpy() for k, v in psnrs.items()}
    evaluation = TokenizerEvaluation(
        lengths=torch.cat(lengths).numpy(), num_objects=images.num_objects, laplacian=images.laplacian,
        psnr_adaptive=cat["adaptive"], psnr_by_k={k: cat[k] for k in token_counts}, max_tokens=model.config.max_tokens,
        examples={k: torch.cat(v)[:num_examples] for k, v in examples.items()})
    result = QualityResult(evaluation, notes=notes)
    if lpips_metric is not None:
        lp = {k: torch.cat(v).numpy() for k, v in lpipss.items()}
        result.lpips_by_k, result.lpips_adaptive = {k: lp[k] for k in token_counts}, lp["adaptive"]
    if fid_count:
        if fid_count < 2:
            notes.append("rFID skipped: it needs at least 2 images.")
        else:
            real = np.concatenate(features["real"])
            fids = {k: frechet_distance(real, np.concatenate(features[k])) for k in keys}
            result.rfid_by_k, result.rfid_adaptive = {k: fids[k] for k in token_counts}, fids["adaptive"]
            notes.append(f"rFID over {fid_count} images (fewer than the usual 50,000: compare runs of the same size only).")
    return result
