"""The accuracy vs tokens-per-image comparison through the lmms-eval command line.

The tasks come from `eval.export` (`dove eval export`); `compare` runs `lmms-eval --model dove_llava` once per tower mode
in a subprocess, reads each run's results file (never its exit code: lmms-eval can exit 0 after a failure), and
writes `comparison.json`, `comparison.md` and `accuracy_vs_tokens.png`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from dove_vlm.presets import DEMO_COMPARE_FIXED_K

from .bootstrap import paired_differences, paired_table
from .rows import BudgetRows, RunSpec, mode_matrix  # noqa: F401  (RunSpec, mode_matrix re-exported)

from .export import (  # noqa: F401  (re-exported: `eval.compare` is where callers found them)
    REQUIRED_FIELDS,
    TASK_NAME,
    TEMPLATE,
    _parse_json_file,
    _plain,
    _text_field,
    _write_task,
    _write_task_yaml,
    check_task_data,
    check_task_name,
    default_task_name,
    export_embedded,
    export_file,
    materialize_task,
    read_records,
    task_data_file,
    task_of,
)

METRIC = "vqa_accuracy,none"


class LmmsEvalError(RuntimeError):
    """An lmms-eval run that produced no usable results (its cause is in the message)."""


# --- running lmms-eval ------------------------------------------------------------------------------------


def lmms_eval_command() -> list[str]:
    exe = shutil.which("lmms-eval")
    return [exe] if exe else [sys.executable, "-m", "lmms_eval"]


def run_lmms_eval(spec: RunSpec, tasks: list[str], include_path: Path, output_dir: Path, batch_size: int = 16,
                  limit: int | None = None, timeout: float | None = None) -> Path:
    """Run the lmms-eval CLI on one mode; return its results file. Raises `LmmsEvalError` (with the tail of the
    log) when the run wrote no results for every task, whatever its exit code."""
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    include_path = Path(include_path).resolve()
    model_args = {"pretrained": str(Path(spec.pretrained).resolve()), "tower_mode": spec.mode, **spec.model_args}
    cmd = lmms_eval_command() + [
        "--model", "dove_llava", "--model_args", ",".join(f"{k}={v}" for k, v in model_args.items()),
        "--tasks", ",".join(tasks), "--include_path", str(include_path), "--batch_size", str(batch_size),
        "--output_path", str(output_dir), "--log_samples"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log = output_dir / "lmms_eval.log"
    with open(log, "w") as handle:
        handle.write(" ".join(cmd) + "\n")
        handle.flush()
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)
    files = sorted(glob.glob(str(output_dir / "**" / "*_results.json"), recursive=True), key=os.path.getmtime)
    if not files:
        raise LmmsEvalError(f"lmms-eval wrote no results for {spec.name} (exit code {proc.returncode}): "
                            f"{_cause(log)} (full log: {log})")
    results = json.loads(Path(files[-1]).read_text())
    missing = [t for t in tasks if METRIC not in results.get("results", {}).get(t, {})]
    if missing:
        raise LmmsEvalError(f"lmms-eval results for {spec.name} lack {', '.join(missing)} (exit code "
                            f"{proc.returncode}): {_cause(log)} (full log: {log})")
    return Path(files[-1])


def _cause(log: Path, lines: int = 2) -> str:
    """The last error lines of an lmms-eval log (colour codes removed), joined into one line."""
    text = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in log.read_text(errors="replace").splitlines()]
    errors = [line for line in text if "Error" in line or "error" in line]
    picked = (errors or [line for line in text if line])[-lines:]
    return " | ".join(line[:300] for line in picked) or "the log is empty"


def read_results(results_file: str | os.PathLike, task: str) -> dict:
    """Accuracy (points), tokens per image (mean, std), seconds per sample and sample count of one task from an
    lmms-eval results file (the adapter's token and latency accounting in `throughput`)."""
    results = json.loads(Path(results_file).read_text())
    task_results = results["results"][task]
    throughput = results.get("throughput", {})
    mean = throughput.get("avg_image_tokens")
    square = throughput.get("avg_image_tokens_sq")
    if mean is None:
        raise LmmsEvalError(f"{results_file} has no tokens-per-image accounting (throughput.avg_image_tokens); was it "
                            "run with --model dove_llava?")
    return {
        "accuracy": float(task_results[METRIC]),
        "accuracy_stderr": task_results.get("vqa_accuracy_stderr,none"),
        "tokens_per_image_mean": float(mean),
        "tokens_per_image_std": math.sqrt(max(0.0, float(square) - float(mean) ** 2)) if square is not None else None,
        "seconds_per_sample": float(throughput.get("avg_latency", float("nan"))),
        "num_samples": int(results.get("n-samples", {}).get(task, {}).get("effective", 0)),
        "results_file": str(results_file),
    }


# --- the comparison ---------------------------------------------------------------------------------------


def run_fingerprint(spec: RunSpec, task_yaml: str | os.PathLike, batch_size: int, limit: int | None) -> str:
    """A digest of everything an lmms-eval run's results depend on: the row (model folder, mode, adapter options),
    the task file and its data, batch size and limit, and the model folder's files (names, sizes, modification
    times; checkpoints left out). Equal digests mean a finished run can be reused."""
    task, include = task_of(task_yaml)
    row = {k: v for k, v in asdict(spec).items() if k != "trained"}  # a label, not an input of the run
    digest = hashlib.sha256(json.dumps([row, batch_size, limit], sort_keys=True).encode())
    digest.update(Path(task_yaml).read_bytes())
    data = include.parent / f"{task}.json"
    if data.is_file():
        digest.update(data.read_bytes())
    root = Path(spec.pretrained).resolve()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not rel.parts[0].startswith("checkpoint-"):
            stat = path.stat()
            digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


RUN_RECORD = "dove_run.json"


def run_rows(task_yaml: str | os.PathLike, specs: list[RunSpec], output_dir: str | os.PathLike, batch_size: int = 16,
             limit: int | None = None, reuse: bool = True, log=print) -> list[dict]:
    """One lmms-eval command-line run per spec (into `output_dir/runs/NAME`); returns each row's figures
    (`read_results`). With `reuse`, a row whose earlier run finished with the same `run_fingerprint` is read back
    instead of run again (`dove demo` runs the grid and DOVE rows while Q-DOVE still trains). Raises
    `LmmsEvalError` on the first failed run."""
    task_yaml = materialize_task(task_yaml, output_dir)
    task, include = task_of(task_yaml)
    check_task_data(task_yaml)
    rows = []
    for spec in specs:
        run_dir = Path(output_dir) / "runs" / spec.name
        record = run_dir / RUN_RECORD
        fingerprint = run_fingerprint(spec, task_yaml, batch_size, limit)
        t0 = time.time()
        previous = json.loads(record.read_text()) if reuse and record.is_file() else {}
        if previous.get("fingerprint") == fingerprint and Path(previous.get("results_file", "")).is_file():
            log(f"[dove eval] {spec.name}: reusing the finished lmms-eval run in {run_dir} (same model, task and "
                "options)")
            results_file, wall = Path(previous["results_file"]), previous["wall_seconds"]
        else:
            log(f"[dove eval] {spec.name}: lmms-eval --model dove_llava --model_args pretrained={spec.pretrained},"
                f"tower_mode={spec.mode} --tasks {task}")
            record.unlink(missing_ok=True)
            results_file = run_lmms_eval(spec, [task], include, run_dir, batch_size, limit)
            wall = time.time() - t0
            record.write_text(json.dumps({"fingerprint": fingerprint, "results_file": str(results_file),
                                          "wall_seconds": wall}))
        row = {"name": spec.name, **asdict(spec), **read_results(results_file, task), "wall_seconds": wall}
        rows.append(row)
        log(f"[dove eval] {spec.name}: accuracy {row['accuracy']:.1f}, tokens/image {row['tokens_per_image_mean']:.1f}"
            f", {1000 * row['seconds_per_sample']:.1f} ms/sample")
    return rows


def compare(task_yaml: str | os.PathLike, specs: list[RunSpec], output_dir: str | os.PathLike, batch_size: int = 16,
            limit: int | None = None, reference: dict | None = None, side_by_side: bool = True, reuse: bool = True,
            log=print, budget: BudgetRows | None = None) -> dict:
    """Run every spec through lmms-eval on one task and write the comparison files into `output_dir`.

    Args:
        budget: the training-free token-budget rows on the grid LLaVA (pool-K, random-K, fastv-K), run after
            `specs` so that `auto` budgets are the measured adaptive and query means; then DOVE adaptive and Q-DOVE
            are each compared with the budget rows at their own k (paired bootstrap over questions, `paired`).
        reference: optional `{row name: accuracy in [0, 1]}` from another evaluation (e.g. `dove llava-train`'s
            metrics.json), reported next to the lmms-eval accuracy as a difference in points.
        side_by_side: also time all rows in one process, interleaved (`side_by_side_latency`); the speed-ups
            vs grid then come from it (lmms-eval's `avg_latency` of separate runs drifts with the machine's load).
        reuse: read back rows whose lmms-eval run already finished with the same inputs (`run_rows`).

    Returns:
        the `comparison.json` content. Raises `LmmsEvalError` on the first failed run.
    """
    task, _ = task_of(task_yaml)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = run_rows(task_yaml, specs, out, batch_size, limit, reuse=reuse, log=log)
    if budget is not None:
        extra = budget.specs(rows)
        log(f"[dove eval] token-budget rows on the grid model: {', '.join(s.name for s in extra)}")
        rows += run_rows(task_yaml, extra, out, batch_size, limit, reuse=reuse, log=log)
        specs = list(specs) + extra
    for row in rows:
        if reference and row["name"] in reference:
            row["reference_accuracy"] = 100.0 * reference[row["name"]]
            row["accuracy_minus_reference"] = row["accuracy"] - row["reference_accuracy"]
    if side_by_side:
        log("[dove eval] latency: all rows side by side in one process, interleaved batch by batch")
        stats: dict = {}
        latency = side_by_side_latency(specs, task_yaml, batch_size, limit, stats=stats)
        for row, spec in zip(rows, specs):
            row["side_by_side_seconds_per_sample"] = latency[spec.name]
            for part in ("tower", "language_model"):
                row[f"side_by_side_{part}_seconds_per_sample"] = stats[spec.name][f"{part}_seconds_per_sample"]
    grid = next((r for r in rows if r["mode"] == "grid"), None)
    key = "side_by_side_seconds_per_sample" if side_by_side else "seconds_per_sample"
    for row in rows:
        if grid:
            row["tokens_vs_grid"] = row["tokens_per_image_mean"] / grid["tokens_per_image_mean"]
            row["speedup_vs_grid"] = grid[key] / row[key]
            if side_by_side:  # the language model's share alone: does it fall with the tokens saved?
                lm = "side_by_side_language_model_seconds_per_sample"
                row["language_model_speedup_vs_grid"] = grid[lm] / row[lm]
    try:
        paired = paired_differences(rows, task)
    except FileNotFoundError as err:  # a reused run from before --log_samples
        log(f"[dove eval] no paired bootstrap: {err}")
        paired = []
    comparison = {"task": task, "task_file": str(Path(task_yaml).resolve()), "batch_size": batch_size, "limit": limit,
                  "rows": rows, "paired": paired, "seconds": time.time() - started}
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2))
    (out / "comparison.md").write_text(f"# Accuracy vs tokens per image on `{task}` (lmms-eval)\n\n"
                                       + comparison_table(comparison) + "\n")
    plot_comparison(comparison, out / "accuracy_vs_tokens.png")
    return comparison


def comparison_table(comparison: dict) -> str:
    """The markdown table: accuracy, mean ± std tokens per image, latency per sample and its ratio to grid."""
    has_ref = any("reference_accuracy" in r for r in comparison["rows"])
    side = any("side_by_side_seconds_per_sample" in r for r in comparison["rows"])
    split = any("side_by_side_tower_seconds_per_sample" in r for r in comparison["rows"])
    head = ("| mode | training | accuracy | tokens / image | latency / sample (lmms-eval run) |"
            + (" latency / sample (side by side) |" if side else "") + " speed-up vs grid |"
            + (" tower + LM / sample (side by side) | LM speed-up vs grid |" if split else "")) + (
        " reference accuracy |" if has_ref else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in comparison["rows"]:
        std = f" ± {r['tokens_per_image_std']:.1f}" if r.get("tokens_per_image_std") is not None else ""
        speed = f"{r['speedup_vs_grid']:.2f}×" if "speedup_vs_grid" in r else "—"
        training = "trained" if r.get("trained", True) else "training-free"
        line = (f"| {r['name']} | {training} | {r['accuracy']:.1f} | {r['tokens_per_image_mean']:.1f}{std} | "
                f"{1000 * r['seconds_per_sample']:.1f} ms |"
                + (f" {1000 * r['side_by_side_seconds_per_sample']:.1f} ms |" if side else "") + f" {speed} |")
        if split:
            lm_speed = r.get("language_model_speedup_vs_grid")
            line += (f" {1000 * r['side_by_side_tower_seconds_per_sample']:.1f} + "
                     f"{1000 * r['side_by_side_language_model_seconds_per_sample']:.1f} ms |"
                     if "side_by_side_tower_seconds_per_sample" in r else " — |")
            line += f" {lm_speed:.2f}× |" if lm_speed is not None else " — |"
        if has_ref:
            line += (f" {r['reference_accuracy']:.1f} ({round(r['accuracy_minus_reference'], 1) + 0.0:+.1f}) |"
                     if "reference_accuracy" in r else " — |")
        lines.append(line)
    if comparison.get("paired"):
        lines += ["", "Paired bootstrap over questions (first row minus second, 95% interval):", "",
                  paired_table(comparison["paired"])]
    return "\n".join(lines)


def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both axes (at most as many tokens per image and at least the accuracy, one of
    them strictly), by increasing tokens."""
    front = [r for r in rows if not any(
        o["tokens_per_image_mean"] <= r["tokens_per_image_mean"] and o["accuracy"] >= r["accuracy"]
        and (o["tokens_per_image_mean"], o["accuracy"]) != (r["tokens_per_image_mean"], r["accuracy"]) for o in rows)]
    return sorted(front, key=lambda r: r["tokens_per_image_mean"])


def plot_comparison(comparison: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in comparison["rows"]:
        ax.errorbar(r["tokens_per_image_mean"], r["accuracy"], xerr=r.get("tokens_per_image_std") or 0,
                    fmt="o" if r.get("trained", True) else "s", capsize=3)  # squares: training-free rows
        ax.annotate(r["name"], (r["tokens_per_image_mean"], r["accuracy"]), textcoords="offset points", xytext=(4, 4))
    front = pareto_front(comparison["rows"])
    if len(front) > 1:
        ax.step([r["tokens_per_image_mean"] for r in front], [r["accuracy"] for r in front], where="post",
                color="grey", linestyle="--", linewidth=1, label="Pareto front", zorder=0)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("tokens per image (mean ± std)")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_title(comparison["task"])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reference_accuracies(specs: list[RunSpec], task_yaml: str | os.PathLike) -> dict:
    """`{row name: accuracy}` from each model folder's `metrics.json` (`dove llava-train`'s own evaluation) for
    the rows whose mode is the one the model was trained and evaluated in, and only when the task holds the very
    questions that evaluation scored (the embedded test split exported with the same scenes, seed and questions
    per scene). A user task gets no reference: the numbers would come from another data set."""
    task, include = task_of(task_yaml)
    params_file = include.parent / f"{task}.export.json"
    if not params_file.is_file():
        return {}
    params = json.loads(params_file.read_text())
    ref = {}
    for spec in specs:
        metrics = Path(spec.pretrained) / "metrics.json"
        if not metrics.is_file():
            continue
        m = json.loads(metrics.read_text())
        args = m.get("args", {})
        same_questions = (params.get("split") == "test" and params.get("num_scenes") == args.get("eval_scenes")
                          and params.get("seed") == args.get("seed")
                          and params.get("questions_per_scene") == args.get("eval_questions_per_scene"))
        if m.get("mode") == spec.mode and "eval" in m and same_questions:
            ref[spec.name] = m["eval"]["accuracy"]
    return ref


def reference_evaluation(spec: RunSpec, task_yaml: str | os.PathLike, batch_size: int = 64,
                         limit: int | None = None) -> float | None:
    """The accuracy (in [0, 1]) of `dove_vlm.llava.vqa.evaluate_vqa` (the evaluation `dove llava-train` runs) on the
    same model, mode and questions, in this process and without lmms-eval: the embedded split is rebuilt from its
    export parameters (original images, not the PNG files); a user file is read back. `None` for query-null
    (`evaluate_vqa` gives a query-mode tower the question)."""
    from dove_vlm.llava.vqa import build_vqa_split, evaluate_vqa
    from dove_vlm.tower_settings import TowerMode, TowerSettings
    from eval.lmms_adapter import load_for_inference

    settings = TowerSettings.parse(spec.mode)
    if settings.mode is TowerMode.QUERY_NULL:
        return None
    task, include = task_of(task_yaml)
    params = include.parent / f"{task}.export.json"
    if params.is_file():
        p = json.loads(params.read_text())
        records = build_vqa_split(p["split"], p["num_scenes"], p["seed"], p["image_size"], p["questions_per_scene"])
    else:
        from PIL import Image

        records = [dict(r, image=Image.open(r["image"]).convert("RGB"))
                   for r in read_records(include.parent / f"{task}.json")]
    records = records[:limit] if limit else records
    args = {key: spec.model_args[key] for key in ("batch_invariant", "merge_lora", "base_model", "merged",
                                                  "fastv_layer", "fastv_tokens") if key in spec.model_args}
    model, processor, tower = load_for_inference(spec.pretrained, settings, **args)
    return evaluate_vqa(model, processor, records, batch_size=batch_size,
                        use_queries=tower.supports_queries)["accuracy"]


def demo_comparison(demo_dir: str | os.PathLike, seed: int = 0, fixed_k: tuple[int, ...] = DEMO_COMPARE_FIXED_K,
                    num_scenes: int = 250, questions_per_scene: int = 2, query_null: bool = False,
                    runs_only: bool = False, log=print) -> str | None:
    """The closing report of `dove demo`: the lmms-eval comparison over the demo's LLaVA stages
    (`llava_base` → grid, `llava_dove` → fixed-K and adaptive, `llava_qdove` → query, and query-null when asked)
    on the embedded test split that `dove llava-train` scores (same scenes, same questions). The default rows
    keep the demo short: fixed-28 is the fixed-length baseline at adaptive DOVE's mean count (the demo's DOVE LoRA
    has a 24-token floor), fixed-16 the same model with fewer tokens. Returns the
    markdown section, or `None` when no LLaVA stage is there; a failed run is reported, not raised.

    `runs_only` runs (or reuses) the lmms-eval runs of the stages present now and returns `None`: no latency
    measurement and no report (`dove demo` does this for the grid and DOVE rows while Q-DOVE still trains; the
    closing call reuses them)."""
    root = Path(demo_dir)
    stages = {name: root / name for name in ("llava_base", "llava_dove", "llava_qdove")}
    present = {name: str(path) for name, path in stages.items() if (path / "metrics.json").is_file()}
    if not present:
        return None
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        skipped = "## lmms-eval comparison\n\nskipped: lmms-eval is not installed (see docs/evaluation.md)."
        return None if runs_only else skipped
    task_yaml = export_embedded(root / "eval_data", "test", num_scenes, seed, 32, questions_per_scene)
    specs = mode_matrix(present.get("llava_base"), present.get("llava_dove"), present.get("llava_qdove"), fixed_k,
                        query_null=query_null)
    try:
        if runs_only:
            run_rows(task_yaml, specs, root / "eval_compare", log=log)
            return None
        comparison = compare(task_yaml, specs, root / "eval_compare", reference=reference_accuracies(specs, task_yaml), log=log)
    except LmmsEvalError as err:
        return None if runs_only else f"## lmms-eval comparison\n\nfailed: {err}"
    return (f"## lmms-eval comparison ({comparison['task']}, {root / 'eval_compare'})\n\n"
            + comparison_table(comparison))


def side_by_side_latency(specs: list[RunSpec], task_yaml: str | os.PathLike, batch_size: int = 16,
                         limit: int | None = None, rounds: int = 3, window: int | None = None,
                         stats: dict | None = None, max_new_tokens: int = 4, fixed_length: bool = False) -> dict:
    """Seconds per sample of every row, measured in one process with the rows interleaved (the adapter's own
    inference path, `DoveLlava._generate`: tower, processor, length-bucketed greedy generation), so that a shared
    machine's load drifts alike for all rows; the ratios to grid come from here.

    The questions run in windows of `window` requests (default: the adapter's bucketing window, `bucket_window`
    batches); within every window each row runs once, in an order that rotates from window to window. `rounds`
    repeats the whole pass (after one untimed warm-up batch per row); a row's figure is the median over rounds.
    `stats`, when given, receives each row's mean tokens per image and prompt length, and where its time goes:
    seconds per sample in the tower (`tower_seconds_per_sample`) and in the language model's `generate`
    (`language_model_seconds_per_sample`), from the median round. Answers are up to `max_new_tokens` long; with
    `fixed_length` every row generates exactly that many (no end-of-sequence stop: untrained rows then do the same
    work)."""
    from PIL import Image

    from eval.lmms_adapter import DoveLlava

    task, include = task_of(task_yaml)
    records = read_records(include.parent / f"{task}.json")
    records = records[:limit] if limit else records
    models = {s.name: DoveLlava(pretrained=s.pretrained, tower_mode=s.mode, batch_size=batch_size, **s.model_args)
              for s in specs}
    if fixed_length:
        for adapter in models.values():
            adapter.model.generation_config.eos_token_id = None
    names = list(models)
    window = window or batch_size * min(m.bucket_window for m in models.values())
    windows = []
    for start in range(0, len(records), window):
        batch = records[start : start + window]
        windows.append(([Image.open(r["image"]).convert("RGB") for r in batch], [r["question"] for r in batch]))
    for name in names:  # warm-up: first-call allocations are not part of any row's time
        models[name]._generate(windows[0][0][:batch_size], windows[0][1][:batch_size], max_new_tokens)
    per_round = {name: [] for name in names}
    step = 0
    for _ in range(max(1, rounds)):
        totals = dict.fromkeys(names, 0.0)
        parts = {name: {} for name in names}
        for images, questions in windows:
            for name in names[step % len(names):] + names[: step % len(names)]:  # rotate the order every window
                t0 = time.perf_counter()
                _, lengths, prompt_lengths, _, _ = models[name]._generate(images, questions, max_new_tokens,
                                                                          timings=parts[name])
                totals[name] += time.perf_counter() - t0
                if stats is not None:
                    row = stats.setdefault(name, {"tokens": 0, "prompt_tokens": 0, "samples": 0})
                    row["tokens"] += sum(lengths)
                    row["prompt_tokens"] += sum(prompt_lengths)
                    row["samples"] += len(lengths)
            step += 1
        for name in names:
            per_round[name].append((totals[name] / len(records), parts[name]))
    medians = {name: sorted(values, key=lambda v: v[0])[len(values) // 2] for name, values in per_round.items()}
    for name, row in (stats or {}).items():
        row["tokens_per_image"] = row["tokens"] / row["samples"]
        row["prompt_tokens_mean"] = row["prompt_tokens"] / row["samples"]
        for part in ("tower", "language_model"):
            row[f"{part}_seconds_per_sample"] = medians[name][1].get(part, 0.0) / len(records)
    return {name: seconds for name, (seconds, _) in medians.items()}


def latency_table(seconds: dict, stats: dict) -> str:
    """Markdown table of a `side_by_side_latency` run: per row the tokens per image, the prompt length (text +
    image tokens), seconds per sample split into tower and LM, and the speed-ups vs grid beside their limit, the
    prompt-length ratio (what the LM could save if its cost were proportional to the prompt)."""
    names = list(seconds)
    grid = "grid" if "grid" in seconds else names[0]
    lines = ["| mode | tokens / image | prompt tokens | latency / sample | speed-up vs grid | tower + LM / sample | "
             "LM speed-up vs grid | prompt-length ratio (limit) |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        row, ref = stats[name], stats[grid]
        lm = row["language_model_seconds_per_sample"]
        lines.append(f"| {name} | {row['tokens_per_image']:.1f} | {row['prompt_tokens_mean']:.1f} | "
                     f"{1000 * seconds[name]:.1f} ms | {seconds[grid] / seconds[name]:.2f}× | "
                     f"{1000 * row['tower_seconds_per_sample']:.1f} + {1000 * lm:.1f} ms | "
                     f"{ref['language_model_seconds_per_sample'] / lm:.2f}× | "
                     f"{ref['prompt_tokens_mean'] / row['prompt_tokens_mean']:.2f}× |")
    return "\n".join(lines)
