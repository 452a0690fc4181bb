"""lmms-eval's data-parallel launch (`torchrun --nproc_per_node 2 -m lmms_eval ...`, gloo on a CPU): every rank
answers its own share of the questions, and the merged results (per-sample answers and token counts, accuracy,
the throughput accounting) equal one process's."""

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eval.compare import task_of

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(launcher: list[str], llava_dir, task_yaml, out: Path) -> tuple[dict, dict, str]:
    task, include = task_of(task_yaml)
    cmd = launcher + ["-m", "lmms_eval", "--model", "dove_llava", "--model_args", f"pretrained={llava_dir}",
                      "--tasks", task, "--include_path", str(include), "--batch_size", "2", "--log_samples",
                      "--output_path", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=str(out.parent))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    samples = glob.glob(str(out / "**" / f"*_samples_{task}.jsonl"), recursive=True)
    results = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    assert samples and results, log[-3000:]
    rows = {}
    for line in Path(samples[0]).read_text().splitlines():
        row = json.loads(line)
        rows[row["doc_id"]] = (row["filtered_resps"], row["token_counts"], row["vqa_accuracy"])
    return rows, json.loads(Path(results[0]).read_text()), log


@pytest.mark.slow  # three lmms-eval processes: ~1.5 min on the 2-core CPU
def test_two_ranks_each_answer_their_share_and_merge_to_one_process(llava_dir, task_yaml, tmp_path):
    one, one_results, _ = _run([sys.executable], llava_dir, task_yaml, tmp_path / "one")
    two, two_results, log = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                  "--master_port", str(_free_port())], llava_dir, task_yaml, tmp_path / "two")
    n = len(one)
    assert n == 6 and two == one  # the same answers and token counts, document by document
    half = n // 2
    assert f"rank 0 of 2 answers {half} requests" in log and f"rank 1 of 2 answers {half} requests" in log
    task = next(iter(one_results["results"]))
    assert two_results["results"][task]["vqa_accuracy,none"] == one_results["results"][task]["vqa_accuracy,none"]
    assert two_results["n-samples"] == one_results["n-samples"]
    for key in ("total_gen_tokens", "avg_image_tokens", "avg_image_tokens_sq"):  # every rank's requests counted
        assert two_results["throughput"][key] == pytest.approx(one_results["throughput"][key])
