"""The report: configuration, the run over every section, and the files it writes (`report.json` + PNGs)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dove_vlm import DoveImageProcessor, DoveModel
from train_tokenizer.evaluate import default_token_counts
from train_tokenizer.plots import plot_length_histogram, plot_length_vs_complexity, plot_reconstructions

from . import figures
from .config import ReportConfig
from .generalization import generalization
from .images import load_report_images
from .pca import pca_pictures
from .photos import photo_lengths
from .probe import digits_probe_data, hf_probe_data, linear_probe, shapes_probe_data
from .quality import evaluate_quality
from .queries import evaluate_query_model


def _load(path: str) -> tuple[DoveModel, DoveImageProcessor]:
    model = DoveModel.from_pretrained(path).eval()
    processor = DoveImageProcessor.from_pretrained(path) if (Path(path) / "preprocessor_config.json").is_file() \
        else DoveImageProcessor(size=model.config.image_size)
    return model, processor


def _jsonable(value):
    """Plain JSON values: numpy scalars become Python numbers, NaN/Inf become null (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@torch.no_grad()
def run_report(config: ReportConfig) -> dict:
    """Run the selected sections on `config.model`; write `report.json` and the PNGs into `config.output_dir`."""
    started = time.perf_counter()
    out_dir = Path(config.output_dir)
    model, processor = _load(config.model)
    query_model = _load(config.query_model)[0] if config.query_model and "queries" in config.sections else None
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": config.model, "config": asdict(config), "max_tokens": model.config.max_tokens,
                    "image_size": model.config.image_size, "torch_threads": torch.get_num_threads(), "seconds": {},
                    "figures": [], "notes": []}
    timer = time.perf_counter

    def figure(name: str, draw, *args) -> None:
        draw(*args, out_dir / name)
        report["figures"].append(name)

    needs_images = {"quality", "lengths", "pca"} & set(config.sections)
    images = load_report_images(config.data, processor, config.num_images, config.seed, config.split) \
        if needs_images else None
    if images is not None:
        report["data"] = {"spec": images.source, "num_images": len(images.pixels)}
    if {"quality", "lengths"} & set(config.sections):
        t = timer()
        ks = config.token_counts or default_token_counts(model.config.max_tokens)
        if any(not 1 <= k <= model.config.max_tokens for k in ks):
            raise ValueError(f"token counts must be in [1, {model.config.max_tokens}], got {ks}.")
        quality = evaluate_quality(model, images, sorted(set(ks)), config.batch_size, config.lpips_trunk_weights,
                                   config.inception_weights, config.fid_images,
                                   use_lpips=not config.no_lpips and "quality" in config.sections)
        summary = quality.summary()
        report["notes"] += summary.pop("notes")
        ev = quality.evaluation
        if "quality" in config.sections:
            report["quality"] = {k: summary[k] for k in summary if k.startswith(("psnr", "lpips", "rfid"))}
            report["quality"]["mean_length"] = summary["mean_length"]
            figure("quality_vs_tokens.png", figures.plot_quality_curve, report["quality"])
            figure("reconstructions.png", plot_reconstructions, ev)
        if "lengths" in config.sections:
            report["lengths"] = {k: v for k, v in summary.items() if not k.startswith(("psnr", "lpips", "rfid"))}
            report["lengths"]["histogram"] = {int(n): int(c) for n, c in zip(*np.unique(ev.lengths, return_counts=True))}
            figure("length_histogram.png", plot_length_histogram, ev)
            figure("length_vs_complexity.png", plot_length_vs_complexity, ev)
        report["seconds"]["quality_and_lengths"] = timer() - t
    if "probe" in config.sections:
        t = timer()
        report["probe"] = []
        for spec in config.probe_data:
            if spec == "shapes":
                data = shapes_probe_data(model.config.image_size, config.probe_images, config.seed)
            elif spec == "digits":
                data = digits_probe_data(processor, config.probe_images)
            else:
                data = hf_probe_data(spec, processor, config.probe_label_column, config.probe_images, config.split)
            report["probe"].append(linear_probe(model, data, seed=config.seed))
        if report["probe"]:
            figure("linear_probe.png", figures.plot_probe, report["probe"])
        report["seconds"]["probe"] = timer() - t
    if "pca" in config.sections:
        t = timer()
        figure("pca_features.png", figures.plot_pca, pca_pictures(model, images.pixels[: config.pca_images]),
               )
        report["seconds"]["pca"] = timer() - t
    if "photos" in config.sections:
        t = timer()
        photos = photo_lengths(model, processor)
        pixels = photos.pop("pixels")
        report["photos"] = photos
        figure("photos_length_vs_complexity.png", figures.plot_photos, photos, pixels)
        report["seconds"]["photos"] = timer() - t
    if "generalization" in config.sections:
        t = timer()
        section = generalization(model, processor, config.heldout_images, config.seed, config.batch_size)
        report["notes"] += section.pop("notes")
        report["generalization"] = section
        for name, source in section["sources"].items():
            figure(f"generalization_{name}.png", figures.plot_generalization_source, name, source)
        figure("generalization_lengths.png", figures.plot_generalization_lengths, section)
        report["seconds"]["generalization"] = timer() - t
    if "queries" in config.sections:
        if query_model is None:
            report["notes"].append("Q-DOVE section skipped: no --query-model given.")
        else:
            t = timer()
            same = query_model.config.image_size == model.config.image_size
            report["queries"] = evaluate_query_model(query_model, config.query_scenes, config.seed,
                                                     config.batch_size, reference=model if same else None)
            report["queries"]["model"] = config.query_model
            figure("queries.png", figures.plot_queries, report["queries"])
            report["seconds"]["queries"] = timer() - t
    report["seconds"]["total"] = time.perf_counter() - started
    report = _jsonable(report)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report


def format_report_summary(report: dict, output_dir: str) -> str:
    """A short human-readable summary of `report.json`."""
    lines = [f"report written to {Path(output_dir) / 'report.json'} ({report['seconds']['total']:.0f} s)"]
    if "quality" in report:
        q = report["quality"]
        ks = ", ".join(f"k={k}: {v:.2f}" for k, v in q["psnr_by_k"].items())
        lines.append(f"PSNR by forced tokens: {ks}; adaptive {q['psnr_adaptive']:.2f} dB at {q['mean_length']:.1f} tokens")
        if "lpips_by_k" in q:
            ks = ", ".join(f"k={k}: {v:.3f}" for k, v in q["lpips_by_k"].items())
            lines.append(f"LPIPS by forced tokens: {ks}; adaptive {q['lpips_adaptive']:.3f}")
        if q.get("rfid_by_k"):
            ks = ", ".join(f"k={k}: {v:.1f}" for k, v in q["rfid_by_k"].items())
            lines.append(f"rFID by forced tokens: {ks}; adaptive {q['rfid_adaptive']:.1f}")
    if "lengths" in report:
        s = report["lengths"]
        lines.append(f"tokens per image: mean {s['mean_length']:.2f} ± {s['std_length']:.2f} of max {s['max_tokens']}; "
                     f"Spearman(length, Laplacian variance) = {s['spearman_length_vs_laplacian']:.3f}")
    for p in report.get("probe", []):
        f = p["features"]
        lines.append(f"linear probe on {p['data']} ({p['num_classes']} classes, {p['num_test']} test images): DOVE tokens "
                     f"{f['dove_tokens']['accuracy']:.3f}, DOVE hidden states {f['dove_hidden']['accuracy']:.3f} (PCA to "
                     f"{f['dove_hidden_pca']['dim']} dims: {f['dove_hidden_pca']['accuracy']:.3f}), VQGAN latents "
                     f"{f['vqgan_latents']['accuracy']:.3f} (majority {p['chance_majority']:.3f})")
    if "photos" in report:
        ph = report["photos"]
        order = ", ".join(f"{r['photo']} {r['tokens']}" for r in ph["photos"])
        lines.append(f"scikit-image photos, flat to busy (tokens): {order}; Spearman(tokens, Laplacian variance) = "
                     f"{ph['spearman_tokens_vs_laplacian_model_input']:.3f}")
    for name, g in report.get("generalization", {}).get("sources", {}).items():
        objects = g["spearman_tokens_vs_objects"]
        lines.append(f"held-out {name} ({g['num_images']} images): Spearman(tokens, Laplacian variance) = "
                     f"{g['spearman_tokens_vs_laplacian']:.3f}" + ("" if objects is None else f", vs objects = {objects:.3f}")
                     + f"; {g['distinct_lengths']} distinct lengths, mean {g['mean_fraction_of_max']:.0%} of max, "
                     f"{g['share_at_max']:.0%} at max")
    if "queries" in report:
        q = report["queries"]
        lines.append(f"Q-DOVE on {q['num_images']} scenes: {q['mean_tokens_query']:.2f} tokens with the query vs "
                     f"{q['mean_tokens_null']:.2f} null; in-box PSNR {q['in_box_psnr_query']:.2f} vs "
                     f"{q['in_box_psnr_null']:.2f} dB")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"figure: {Path(output_dir) / name}" for name in report["figures"]]
    return "\n".join(lines)
