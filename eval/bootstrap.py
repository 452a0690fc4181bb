"""Paired bootstrap of an accuracy difference between two rows scored on the same questions.

Each lmms-eval run logs one score per question (`--log_samples`: `*_samples_<task>.jsonl`, field `vqa_accuracy`
per `doc_id`). The difference of two rows is resampled over questions: the same resampled questions for both rows
(paired), so the interval reflects how the rows differ question by question, not the spread of the questions.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np

SCORE = "vqa_accuracy"


def question_scores(results_file: str | Path, task: str) -> dict[int, float]:
    """`{doc_id: score}` of one lmms-eval run (points, 0 to 100), from the samples file beside its results file."""
    folder = Path(results_file).parent
    files = sorted(glob.glob(str(folder / f"*_samples_{task}.jsonl")))
    if not files:
        raise FileNotFoundError(f"no per-question samples (*_samples_{task}.jsonl) beside {results_file}; run "
                                "lmms-eval with --log_samples.")
    scores = {}
    with open(files[-1]) as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                scores[int(row["doc_id"])] = float(row[SCORE])
    return scores


def paired_bootstrap(a: dict[int, float], b: dict[int, float], resamples: int = 10000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """Accuracy of `a` minus accuracy of `b` over their shared questions, in the scores' unit (points: the task's
    `vqa_accuracy` is 0 or 100 per question), with a `level` percentile interval from `resamples` paired resamples
    of the questions."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("the two rows share no question; score them on the same task.")
    diff = np.array([a[q] - b[q] for q in shared], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high), "level": level,
            "num_questions": len(shared), "resamples": resamples}


def matched_pairs(rows: list[dict]) -> list[tuple[str, str]]:
    """The comparisons at equal budgets: DOVE adaptive and Q-DOVE (query) each against the training-free rows at
    its own rounded mean k (pool-k, fastv-k, random-k), where those rows were run."""
    names = {r["name"] for r in rows}
    pairs = []
    for row in rows:
        if row["name"] not in ("adaptive", "query"):
            continue
        k = round(row["tokens_per_image_mean"])
        pairs += [(row["name"], f"{kind}-{k}") for kind in ("pool", "fastv", "random") if f"{kind}-{k}" in names]
    return pairs


def paired_differences(rows: list[dict], task: str, resamples: int = 10000, seed: int = 0) -> list[dict]:
    """`paired_bootstrap` of every `matched_pairs` comparison (first row minus second)."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for first, second in matched_pairs(rows):
        a = question_scores(by_name[first]["results_file"], task)
        b = question_scores(by_name[second]["results_file"], task)
        out.append({"row": first, "versus": second, **paired_bootstrap(a, b, resamples, seed=seed)})
    return out


def paired_table(differences: list[dict]) -> str:
    """Markdown table of `paired_differences`."""
    lines = ["| row | versus (same k) | accuracy difference (points) | 95% interval | questions |", "|---|---|---|---|---|"]
    for d in differences:
        lines.append(f"| {d['row']} | {d['versus']} | {d['difference']:+.1f} | [{d['low']:+.1f}, {d['high']:+.1f}] | "
                     f"{d['num_questions']} |")
    return "\n".join(lines)


__all__ = ["matched_pairs", "paired_bootstrap", "paired_differences", "paired_table", "question_scores"]
