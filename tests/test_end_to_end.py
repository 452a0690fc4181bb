"""End to end at the tiny preset (about 23 minutes on a 2-core CPU): `python -m pytest -m slow`.
Runs the real `dove demo` command line and checks the tokenizer's and Q-DOVE's targets on held-out scenes, and that
the LLaVA stages and the lmms-eval comparison report."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_dove_demo_meets_the_targets(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "dove_vlm", "demo", "--output-dir", str(tmp_path)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "report.md").is_file()
    ev = json.loads((tmp_path / "tokenizer" / "metrics.json").read_text())["eval"]
    assert ev["num_images"] == 200
    assert ev["spearman_length_vs_objects"] >= 0.6
    assert ev["spearman_length_vs_laplacian"] >= 0.5
    assert ev["distinct_lengths"] >= 8 and ev["std_over_mean"] >= 0.10
    assert ev["mean_length_fraction_of_max"] <= 0.60
    assert ev["psnr_rises_with_k"]
    assert ev["psnr_gap_max_minus_adaptive"] <= 1.0
    q = json.loads((tmp_path / "qdove" / "metrics.json").read_text())["query_eval"]
    assert q["query_over_null_tokens"] <= 0.5
    assert q["in_box_psnr_query_minus_null"] >= -0.5
    assert abs(q["null_over_plain_tokens"] - 1) <= 0.10
    llava = json.loads((tmp_path / "llava_results.json").read_text())
    assert len(llava["stages"]) == 3 and all(s["accuracy"] is not None for s in llava["stages"].values())
    # The LLaVA targets on the 500 held-out questions: DOVE keeps >= 95% of the grid's accuracy with <= 50% of its
    # tokens, Q-DOVE with the question >= 95% with <= 30%, both >= 25 points above the majority answer.
    grid, dove, qdove = (llava["stages"][name] for name in llava["stages"])
    assert grid["num_questions"] >= 500
    majority = llava["majority_baseline"]["overall"]["accuracy"]
    for row, tokens in ((dove, 0.5), (qdove, 0.3)):
        assert row["accuracy"] >= 0.95 * grid["accuracy"]
        assert row["tokens_per_image_mean"] <= tokens * grid["tokens_per_image_mean"]
        assert row["accuracy"] - majority >= 0.25
    assert (tmp_path / "eval_compare" / "comparison.json").is_file()
