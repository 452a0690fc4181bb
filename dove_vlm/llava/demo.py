"""The LLaVA part of `dove demo`: a tiny base LLaVA on the grid tower, then LoRA + projector on DOVE and on
Q-DOVE, each scored on the same held-out embedded VQA questions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .training import LlavaTrainingArguments, format_llava_report, train_llava

# Sized for the 2-core CPU budget of `dove demo` (see README); every field can be overridden.
LLAVA_DEMO_SHARED: dict[str, Any] = dict(num_train_scenes=2000, eval_scenes=250, eval_questions_per_scene=2,
                                         batch_size=32, checkpoint_every=250, eval_batch_size=100)
LLAVA_DEMO_BASE: dict[str, Any] = dict(max_steps=1500, learning_rate=2e-3, warmup_steps=50)
LLAVA_DEMO_LORA: dict[str, Any] = dict(max_steps=500, learning_rate=2e-3, warmup_steps=25, lora_r=16, lora_alpha=32)


def run_llava_demo(tokenizer_dir: str, qdove_dir: str | None, output_dir: str, seed: int = 0,
                   shared: dict | None = None, base: dict | None = None, lora: dict | None = None,
                   log=print) -> tuple[str, dict]:
    """Train and score the three LLaVA stages of the demo.

    Args:
        tokenizer_dir: the plain DOVE checkpoint (its VQGAN gives the grid tower; adaptive mode for DOVE).
        qdove_dir: the Q-DOVE checkpoint (query mode, with each question as its query); `None` skips it.
        output_dir: `llava_base/`, `llava_dove/`, `llava_qdove/` are written here (each resumable).
        seed: data order and initialisation.
        shared / base / lora: overrides of `LLAVA_DEMO_SHARED` / `LLAVA_DEMO_BASE` / `LLAVA_DEMO_LORA`.
        log: where progress lines go.

    Returns:
        `(markdown, results)`: a table (accuracy, tokens per image, their ratios to the grid baseline, the
        majority baselines, timings) and the same numbers as a dict.
    """
    root = Path(output_dir)
    common = dict(LLAVA_DEMO_SHARED, **(shared or {}))
    stages = [("grid (base LLaVA)", dict(stage="base", tower=tokenizer_dir, mode="grid", **LLAVA_DEMO_BASE, **(base or {})),
               root / "llava_base")]
    lora_args = dict(stage="lora", base_model=str(root / "llava_base"), **LLAVA_DEMO_LORA, **(lora or {}))
    stages.append(("DOVE adaptive (LoRA)", dict(tower=tokenizer_dir, mode="adaptive", **lora_args), root / "llava_dove"))
    if qdove_dir is not None:
        stages.append(("Q-DOVE with the question (LoRA)", dict(tower=qdove_dir, mode="query", **lora_args),
                       root / "llava_qdove"))
    results: dict[str, Any] = {"stages": {}}
    reports = []
    started = time.time()
    for i, (name, kwargs, path) in enumerate(stages, 1):
        log(f"[dove demo] LLaVA {i}/{len(stages)}: {name} into {path}")
        args = LlavaTrainingArguments(output_dir=str(path), seed=seed, resume=True, **common, **kwargs)
        metrics = train_llava(args)
        reports.append(format_llava_report(metrics, str(path)))
        results["stages"][name] = summarize(metrics)
    results["majority_baseline"] = metrics.get("majority_baseline")
    results["seconds"] = time.time() - started
    return llava_table(results), results


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
            f"| {name} | {100 * acc:.1f}% | {100 * acc / grid['accuracy']:.0f}% | {tok:.1f} ± {s['tokens_per_image_std']:.1f} "
            f"| {100 * tok / grid['tokens_per_image_mean']:.0f}% | "
            f"{100 * (acc - per_type):+.1f} pts | {t.get('train_seconds', 0):.0f} | {t.get('eval_seconds', 0):.0f} |"
            if per_type is not None else f"| {name} | {100 * acc:.1f}% | | {tok:.1f} | | | | |")
    if majority:
        lines.append("")
        lines.append(f"Majority-answer baselines on the same {grid['num_questions']} held-out questions: "
                     f"'{majority['overall']['answer']}' for every question {100 * majority['overall']['accuracy']:.1f}%, "
                     f"most frequent answer per question type {100 * per_type:.1f}%.")
    return "\n".join(lines)
