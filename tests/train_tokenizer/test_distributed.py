"""Two processes train to the weights of one: `torchrun --nproc_per_node 2` with batch b per process against one
process with batch 2b (gloo on the CPU, fp32), tiny preset at micro widths with truncation on; also Q-DOVE,
the GAN and the detail length objective. And a resume under another number of processes is refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import MICRO_OVERRIDES
from train_tokenizer import train as train_module
from train_tokenizer.config import TrainingArguments

REPO = Path(__file__).resolve().parents[2]
COMMON = dict(preset="tiny", max_steps=3, num_train_scenes=16, vqgan_steps=2, eval_scenes=0, warmup_steps=1,
              eos_warmup_steps=0, eos_ramp_steps=2, truncation_prob=0.5, log_every=1, checkpoint_every=3,
              lpips_weight=0.0)


def _flags(values: dict) -> list[str]:
    flags = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags


def torchrun(output_dir: Path, nproc: int = 2, check: bool = True, **values) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "dove_vlm", "train", "--output-dir", str(output_dir),
               *_flags({**COMMON, "model_overrides": dict(MICRO_OVERRIDES), **values})]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def one_process(output_dir: Path, **values) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker: the same float reduction order within a process
    try:
        args = TrainingArguments(output_dir=str(output_dir), model_overrides=dict(MICRO_OVERRIDES), **{**COMMON, **values})
        return train_module.train(args)
    finally:
        torch.set_num_threads(threads)


def max_difference(a: Path, b: Path) -> float:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    return max((left[k].float() - right[k].float()).abs().max().item() for k in left)


@pytest.mark.parametrize("case", [
    dict(lpips_weight=0.1),  # LPIPS with a random trunk: the same trunk in every process
    dict(query=True, query_null_prob=0.5, query_full_prob=0.5),
    dict(gan_weight=0.1),
    dict(query=True, init_from="dove", freeze_decoder=True, query_threshold="teacher", vqgan_steps=0),
    dict(data_mix="wide", length_objective="detail"),  # the quantiles of the global batch's detail errors
], ids=["dove", "qdove", "gan", "qdove-from-dove", "detail"])
def test_two_processes_train_to_the_weights_of_one(tmp_path, case):
    if case.get("init_from"):  # Q-DOVE from a DOVE: the teacher threshold and the null-query distillation
        one_process(tmp_path / "dove", batch_size=4, max_steps=2)
        case = {**case, "init_from": str(tmp_path / "dove")}
    torchrun(tmp_path / "two", batch_size=2, **case)
    metrics = one_process(tmp_path / "one", batch_size=4, **case)
    weights = max_difference(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")
    print(f"max |Δweight| 2 processes vs 1: {weights:.2e}")  # shown with pytest -s
    assert weights <= 1e-4
    if case.get("gan_weight"):  # the discriminator too: its gradients are all-reduced
        discriminator = max_difference(tmp_path / "one" / "checkpoint-3" / "discriminator.safetensors",
                                       tmp_path / "two" / "checkpoint-3" / "discriminator.safetensors")
        print(f"max |Δweight| of the discriminator: {discriminator:.2e}")
        assert discriminator <= 1e-4
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["num_processes"] == 2 and metrics["num_processes"] == 1
    for mine, theirs in zip(metrics["history"], two["history"]):  # the logged figures are global ones
        for key in ("loss", "rec", "threshold", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    assert not (tmp_path / "two" / "vqgan.tmp").exists()
    if not case.get("init_from"):  # the VQGAN stage ran once, in the main process (from a DOVE there is none)
        assert (tmp_path / "two" / "vqgan" / "config.json").is_file()


def test_resume_under_another_number_of_processes_is_refused(tmp_path):
    one_process(tmp_path, batch_size=4, max_steps=2, checkpoint_every=1)
    result = torchrun(tmp_path, check=False, batch_size=2, max_steps=3, checkpoint_every=1, resume=True)
    assert result.returncode != 0
    assert "written by a run of 1 process(es) and this run has 2" in result.stderr
