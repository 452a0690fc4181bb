"""Q-DOVE per query against the null query: for held-out scenes with single-object queries, the tokens and the
in-box PSNR with the query and with the null query on the same image, summarised overall, per kind of query
(a phrase "the red circle" or a question "what colour is the square?") and per query text."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from dove_vlm import DoveModel
from train_tokenizer.evaluate import query_rows, summarize_query_rows


def query_kind(text: str) -> str:
    return "question" if text.rstrip().endswith("?") else "phrase"


def evaluate_query_model(model: DoveModel, num_scenes: int = 200, seed: int = 0, batch_size: int = 50,
                         reference: DoveModel | None = None, min_count: int = 3) -> dict:
    """Overall summary (`evaluate_queries`'s), `by_kind`, and `by_query` for texts seen at least `min_count` times."""
    if not model.supports_queries:
        raise ValueError("the --query-model is a plain DOVE model (no text queries); pass a Q-DOVE checkpoint.")
    rows = query_rows(model, num_scenes, seed, batch_size, reference)
    if not rows["text"]:
        raise ValueError("no held-out scene has a single-object query; raise the number of scenes.")
    groups: dict[str, dict[str, list[int]]] = {"by_kind": defaultdict(list), "by_query": defaultdict(list)}
    for i, text in enumerate(rows["text"]):
        groups["by_kind"][query_kind(text)].append(i)
        groups["by_query"][text].append(i)
    out = summarize_query_rows(rows)
    for name, members in groups.items():
        out[name] = {key: _group_summary(rows, index) for key, index in sorted(members.items())
                     if name == "by_kind" or len(index) >= min_count}
    return out


def _group_summary(rows: dict, index: list[int]) -> dict:
    pick = {k: rows[k][index].numpy() for k in ("query_len", "null_len", "query_psnr", "null_psnr")}
    return {"count": len(index), "tokens_query": float(pick["query_len"].mean()),
            "tokens_null": float(pick["null_len"].mean()),
            "in_box_psnr_query": float(pick["query_psnr"].mean()), "in_box_psnr_null": float(pick["null_psnr"].mean()),
            "in_box_psnr_gain": float(np.mean(pick["query_psnr"] - pick["null_psnr"]))}
