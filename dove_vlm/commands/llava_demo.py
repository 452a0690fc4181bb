"""The LLaVA part of `dove demo`: a tiny base LLaVA on the grid tower, then LoRA + projector on DOVE and on
Q-DOVE, each scored on the same held-out embedded VQA questions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llava_patch.training import LlavaTrainingArguments, format_llava_report, train_llava

from ..presets import LLAVA_DEMO_BASE, LLAVA_DEMO_LORA, LLAVA_DEMO_QDOVE, LLAVA_DEMO_SHARED
from .stages import finished_stage


def run_llava_demo(tokenizer_dir: str, qdove_dir: str | None, output_dir: str, seed: int = 0,
                   shared: dict | None = None, base: dict | None = None, lora: dict | None = None,
                   qdove: dict | None = None, only: tuple[str, ...] | None = None,
                   log=print) -> tuple[str, dict]:
    """Train and score the three LLaVA stages of the demo.

    Args:
        tokenizer_dir: the plain DOVE checkpoint (its VQGAN gives the grid tower; adaptive mode for DOVE).
        qdove_dir: the Q-DOVE checkpoint (query mode, with each question as its query); `None` skips it.
        output_dir: `llava_base/`, `llava_dove/`, `llava_qdove/` are written here (each resumable).
        seed: data order and initialisation.
        shared / base / lora / qdove: overrides of `LLAVA_DEMO_SHARED` / `LLAVA_DEMO_BASE` / `LLAVA_DEMO_LORA` /
            `LLAVA_DEMO_QDOVE` (the Q-DOVE stage reads the LoRA settings, then its own).
        only: train just these stages (`base`, `dove`, `qdove`) and write no report (`dove demo` runs the stages
            in parallel processes this way, then calls again without `only`, which reuses them all).
        log: where progress lines go.

    Returns:
        `(markdown, results)`: a table (accuracy, tokens per image, their ratios to the grid baseline, the
        majority baselines, timings) and the same numbers as a dict.
    """
    root = Path(output_dir)
    common = dict(LLAVA_DEMO_SHARED, **(shared or {}))
    base_args = {**LLAVA_DEMO_BASE, **(base or {}), "stage": "base", "tower": tokenizer_dir, "mode": "grid"}
    lora_args = {**LLAVA_DEMO_LORA, **(lora or {}), "stage": "lora", "base_model": str(root / "llava_base")}
    stages = [("base", "grid (base LLaVA)", base_args, root / "llava_base"),
              ("dove", "DOVE adaptive (LoRA)", {**lora_args, "tower": tokenizer_dir, "mode": "adaptive"},
               root / "llava_dove")]
    if qdove_dir is not None:  # Q-DOVE encodes each image for one question: single-turn examples
        stages.append(("qdove", "Q-DOVE with the question (LoRA)", {**lora_args, **LLAVA_DEMO_QDOVE, **(qdove or {}),
                                                                   "tower": qdove_dir, "mode": "query",
                                                                   "init_adapter": str(root / "llava_dove")},
                       root / "llava_qdove"))
    if only is not None:
        stages = [stage for stage in stages if stage[0] in only]
    results: dict[str, Any] = {"stages": {}}
    reports = []
    started = time.time()
    for i, (key, name, kwargs, path) in enumerate(stages, 1):
        log(f"[dove demo] LLaVA {i}/{len(stages)}: {name} into {path}")
        args = LlavaTrainingArguments(**{**common, **kwargs, "output_dir": str(path), "seed": seed, "resume": True})
        metrics = finished_stage(args) or train_llava(args)
        reports.append(format_llava_report(metrics, str(path)))
        results["stages"][name] = summarize(metrics)
        if key == "base":  # the baselines of the base stage's training answers (the same held-out questions throughout)
            results["majority_baseline"] = metrics.get("majority_baseline")
    results["seconds"] = time.time() - started
    if only is not None:
        return "", results
    table = llava_table(results)
    (root / "llava_report.md").write_text("# LLaVA stages of `dove demo`\n\n" + table + "\n\n```\n" +
                                          "\n\n".join(reports) + "\n```\n")
    (root / "llava_results.json").write_text(json.dumps(results, indent=2))
    return table, results


def summarize(metrics: dict) -> dict:
    ev = metrics.get("eval", {})
    return {"mode": metrics["mode"], "accuracy": ev.get("accuracy"), "accuracy_by_type": ev.get("accuracy_by_type"),
            "tokens_per_image_mean": ev.get("tokens_per_image_mean"), "tokens_per_image_std": ev.get("tokens_per_image_std"),
            "seconds_per_sample": ev.get("seconds_per_sample"), "num_questions": ev.get("num_questions"),
            "timings": metrics.get("timings", {})}


def llava_table(results: dict) -> str:
    """Markdown table of `run_llava_demo` results, relative to the first (grid) row."""
    stages = results["stages"]
    names = list(stages)
    if not names:
        return ""
    grid = stages[names[0]]
    majority = results.get("majority_baseline") or {}
    per_type = majority.get("per_type", {}).get("accuracy")
    lines = ["| model | accuracy | vs grid | tokens / image | vs grid | above per-type majority | train s | eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        s = stages[name]
        acc, tok = s["accuracy"], s["tokens_per_image_mean"]
        t = s["timings"]
        lines.append(
            f"| {name} | {100 * acc:.1f}% | {_ratio(acc, grid['accuracy'])} | {tok:.1f} ± {s['tokens_per_image_std']:.1f} "
            f"| {_ratio(tok, grid['tokens_per_image_mean'])} | "
            f"{100 * (acc - per_type):+.1f} pts | {t.get('train_seconds', 0):.0f} | {t.get('eval_seconds', 0):.0f} |"
            if per_type is not None else f"| {name} | {100 * acc:.1f}% | | {tok:.1f} | | | | |")
    if majority:
        lines.append("")
        lines.append(f"Majority-answer baselines on the same {grid['num_questions']} held-out questions: "
                     f"'{majority['overall']['answer']}' for every question {100 * majority['overall']['accuracy']:.1f}%, "
                     f"most frequent answer per question type {100 * per_type:.1f}%.")
    return "\n".join(lines)


def _ratio(value: float, reference: float) -> str:
    return f"{100 * value / reference:.0f}%" if reference else "–"
