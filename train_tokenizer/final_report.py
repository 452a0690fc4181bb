"""The end of `dove train`: the final model, its evaluation on held-out images, figures and `metrics.json`.

The evaluation runs on images never trained on: a held-out split of `--data` (the seeded share of a folder or
`datasets` folder, the first rows of an `hf:` stream, a share of the grounding images), or the embedded scenes'
own `test` split when `--data` is synthetic. It reports PSNR and LPIPS at every forced token count and at the
adaptive length, the length against complexity (Laplacian variance), and the VQGAN's own reconstruction of the
same images as the reference row (what DOVE decodes through: its ceiling)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dove_vlm import DoveModel
from dove_vlm.data import SyntheticScenes, laplacian_variance
from dove_vlm.image_processing_dove import DoveImageProcessor

from .data import TrainingData
from .evaluate import default_token_counts, evaluate_queries, psnr, scenes_to_pixels
from .plots import plot_training_curves, write_plots
from .report.images import ReportImages, batches, complexity
from .report.quality import build_lpips_metric, evaluate_quality


def held_out_images(data: TrainingData, image_size: int, count: int, seed: int) -> ReportImages:
    """The evaluation images: the held-out split of the user's data, or the synthetic `test` scenes."""
    if data.held_out is None:  # complexity of the scenes as rendered (PIL's grey levels), as the targets were set
        scenes = list(SyntheticScenes(count, image_size=image_size, seed=seed, split="test"))
        return ReportImages(scenes_to_pixels(scenes), np.asarray([laplacian_variance(s.image) for s in scenes]),
                            np.asarray([s.num_objects for s in scenes]), "synthetic")
    pixels = torch.stack([data.held_out[i]["pixel_values"] for i in range(min(count, len(data.held_out)))])
    return ReportImages(pixels, complexity(pixels), None, data.spec)


@torch.no_grad()
def vqgan_reference(model: DoveModel, images: ReportImages, lpips_metric, batch_size: int = 50) -> dict:
    """PSNR/LPIPS of the VQGAN's own reconstructions: through its codebook (`vqgan`: the VQGAN as a tokenizer of
    h×w codes) and from its continuous latents (`vqgan_continuous`: what DOVE's decoded latents go through)."""
    scores: dict[str, dict[str, list]] = {"vqgan": {"psnr": [], "lpips": []},
                                          "vqgan_continuous": {"psnr": [], "lpips": []}}
    device = next(model.parameters()).device
    for rows in batches(len(images.pixels), batch_size):
        x = images.pixels[rows].to(device)
        latents = model.encode_latents(x)
        outputs = {"vqgan": model.vqgan.decode(latents).sample, "vqgan_continuous": model.latents_to_pixels(latents)}
        for name, recon in outputs.items():
            recon = recon.float().clamp(-1, 1)
            scores[name]["psnr"].append(psnr(recon, x).cpu())
            if lpips_metric is not None:
                scores[name]["lpips"].append(lpips_metric.to(device)(recon, x).flatten().cpu())
    return {name: {k: (float(torch.cat(v).mean()) if v else None) for k, v in parts.items()}
            for name, parts in scores.items()}


def evaluate_held_out(model: DoveModel, data: TrainingData, args) -> tuple[dict, object]:
    """`(summary, TokenizerEvaluation)` of the final model on the held-out images (see the module docstring)."""
    images = held_out_images(data, model.config.image_size, args.eval_scenes, args.seed)
    notes: list[str] = []
    lpips_metric = build_lpips_metric(args.lpips_trunk, notes)
    quality = evaluate_quality(model, images, default_token_counts(model.config.max_tokens), lpips_metric=lpips_metric)
    quality.notes[:0] = notes
    summary = quality.summary()
    summary["data"] = "synthetic scenes (test split)" if data.synthetic else images.source
    summary["reference"] = vqgan_reference(model, images, lpips_metric)
    return summary, quality.evaluation


def finish_run(args, model: DoveModel, objective, data: TrainingData, history: list[dict], seconds: float,
               accelerator, output_dir: Path) -> dict:
    """Save the final model (main process), evaluate it, write the figures and `metrics.json`; every process
    returns the metrics."""
    n = model.config.max_tokens
    metrics: dict = {"preset": args.preset, "steps": args.max_steps, "train_seconds_this_run": seconds,
                     "final_threshold": objective.threshold.value(float("nan")), "history": history,
                     "args": args.to_dict(), "num_processes": accelerator.num_processes}
    if args.query:  # the inference limits of queried images (see TrainingArguments), saved with the model
        longest = min(args.query_max_tokens or max(1, n // 2), n)
        model.config.query_max_tokens = longest
        model.config.query_min_tokens = min(args.query_min_tokens, longest)
    if accelerator.is_main_process:
        model.save_pretrained(output_dir)
        DoveImageProcessor(size=model.config.image_size).save_pretrained(output_dir)
        metrics["plots"] = []
        if plot_training_curves(history, output_dir / "training_curves.png"):
            metrics["plots"].append("training_curves.png")
        if args.eval_scenes and data.held_out is None and not data.synthetic:
            metrics["eval_skipped"] = (f"--data {data.spec}: too few images to hold any out for the evaluation "
                                       "(a fifth of them, at most --eval-scenes).")
            accelerator.print(f"note: {metrics['eval_skipped']}")
        elif args.eval_scenes:
            metrics["eval"], evaluation = evaluate_held_out(model, data, args)
            metrics["plots"] += write_plots(evaluation, output_dir)
            if model.supports_queries and data.synthetic:  # the held-out single-object queries of the scenes
                reference = DoveModel.from_pretrained(args.init_from).to(accelerator.device) if args.init_from else None
                metrics["query_eval"] = evaluate_queries(model, args.eval_scenes, args.seed, reference=reference)
        with open(output_dir / "metrics.json", "w") as handle:
            json.dump(metrics, handle, indent=2, default=_jsonable)
    if accelerator.trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return metrics


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
