"""End to end at the tiny preset (minutes on a CPU): `pytest -m slow`. Checks the tokenizer's must-show
figures on 200 held-out scenes from the real `dove train` command line."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_dove_train_tiny_meets_the_targets(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "dove_vlm", "train", "--preset", "tiny", "--output-dir",
                          str(tmp_path)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    ev = json.loads((tmp_path / "metrics.json").read_text())["eval"]
    assert ev["num_images"] == 200
    assert ev["spearman_length_vs_objects"] >= 0.6
    assert ev["spearman_length_vs_laplacian"] >= 0.5
    assert ev["distinct_lengths"] >= 8 and ev["std_over_mean"] >= 0.10
    assert ev["mean_length_fraction_of_max"] <= 0.60
    assert ev["psnr_rises_with_k"]
    assert ev["psnr_gap_max_minus_adaptive"] <= 1.0
