"""`dove llava-train` under `torchrun --nproc_per_node 2` (gloo on a CPU) reaches the weights that one process
reaches with twice the batch: the same batches (a pure function of seed, step and process), and an answer loss
averaged over every process's answer tokens."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava_patch.training import LlavaTrainingArguments, train_llava
from tests.llava.conftest import MICRO_DATA

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_the_doubled_batch(dove_dir, micro_lm_dir, tmp_path):
    common = dict(stage="finetune", tower=dove_dir, language_model=micro_lm_dir, max_steps=3, learning_rate=3e-3,
                  lora_r=4, lora_alpha=8, turns_per_image=2, **dict(MICRO_DATA, eval_scenes=0, checkpoint_every=10))
    single = train_llava(LlavaTrainingArguments(output_dir=str(tmp_path / "one"), **dict(common, batch_size=8)))
    assert single["num_processes"] == 1
    flags = []
    for key, value in dict(common, batch_size=4).items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "dove_vlm", "llava-train", "--output-dir", str(tmp_path / "two"), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    import json

    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["batch_size"] == 4
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
        moved += int("lora_B" in key and a[key].abs().max() > 0)
    assert moved > 0  # training changed the weights (the comparison is not between two untouched adapters)
    print(f"max |Δweight| of the adapter, 2 processes vs 1: {max((a[k] - b[k]).abs().max().item() for k in a):.2e}")
    losses = [h["loss"] for h in single["history"]]  # the logged loss is the step's, over both processes
    assert [h["loss"] for h in metrics["history"]] == [pytest.approx(x, rel=1e-5) for x in losses]
