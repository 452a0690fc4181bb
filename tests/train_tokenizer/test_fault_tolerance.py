"""Training survives faults: SIGKILL at a random step, half-written or tampered checkpoints, a full disk."""

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dove_vlm.commands import cli
from tests.conftest import MICRO_OVERRIDES
from tests.train_tokenizer.test_train import micro_args
from train_tokenizer import checkpointing
from train_tokenizer import train as train_module
from train_tokenizer.checkpointing import latest_checkpoint, list_checkpoints, load_torch_state, load_trainer_state

REPO = Path(__file__).resolve().parents[2]
KILL_RUN = dict(max_steps=12, checkpoint_every=1, keep_checkpoints=2)


def _cli_flags(output_dir: Path, **overrides) -> list[str]:
    """`dove train` flags equal to `micro_args(output_dir, **KILL_RUN, **overrides)`."""
    args = micro_args(output_dir, **KILL_RUN, **overrides)
    flags = ["--model-overrides", json.dumps(args.model_overrides)]
    for name in ("output_dir", "preset", "max_steps", "batch_size", "num_train_scenes", "vqgan_steps", "checkpoint_every",
                 "keep_checkpoints", "eval_scenes", "lpips_weight", "warmup_steps", "eos_warmup_steps",
                 "eos_ramp_steps", "truncation_prob", "log_every", "seed"):
        flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return flags + (["--resume"] if args.resume else [])


def _dove_train(flags: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    return subprocess.Popen([sys.executable, "-m", "dove_vlm", "train", *flags], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_at_a_random_step_resumes_to_the_same_weights(tmp_path):
    # The uninterrupted reference runs the same command in the same environment (one thread): float sums depend on
    # the thread count, so an in-process run with the test runner's threads would differ in the last bits.
    straight = _dove_train(_cli_flags(tmp_path / "straight"))
    output, _ = straight.communicate(timeout=900)
    assert straight.returncode == 0, output
    reference = load_file(str(tmp_path / "straight" / "model.safetensors"))

    rng = random.SystemRandom()
    kill_after = rng.randint(1, KILL_RUN["max_steps"] - 4)
    jitter = rng.uniform(0.0, 0.05)  # sometimes inside the next step's checkpoint write
    run_dir = tmp_path / "killed"
    process = _dove_train(_cli_flags(run_dir))
    deadline = time.monotonic() + 600
    while not (run_dir / f"checkpoint-{kill_after}").is_dir():
        assert process.poll() is None, f"the run ended before checkpoint-{kill_after}:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint after 600 s"
        time.sleep(0.005)
    time.sleep(jitter)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "model.safetensors").exists(), f"the run finished before the kill (step {kill_after})"
    resumed_from = latest_checkpoint(run_dir)
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) >= kill_after

    resume = _dove_train(_cli_flags(run_dir, resume=True))
    output, _ = resume.communicate(timeout=900)
    assert resume.returncode == 0, output
    resumed = load_file(str(run_dir / "model.safetensors"))
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6,
                                   msg=lambda m: f"{key} after SIGKILL at checkpoint-{kill_after} + {jitter:.3f} s: {m}")
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(KILL_RUN["max_steps"]))
    assert not [p for p in run_dir.iterdir() if p.name.startswith(checkpointing.TEMP_PREFIXES)]


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def save_pretrained(self, path):
        from safetensors.torch import save_file

        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        save_file(self.state_dict(), str(path / "model.safetensors"))


def _save(root, step, **kwargs):
    model = _Model()
    optimizer = torch.optim.AdamW(model.parameters())
    model.linear(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return checkpointing.save_checkpoint(root, step, model, optimizer, None, {"history": []}, **kwargs)


def test_incomplete_checkpoints_are_never_picked_up(tmp_path):
    _save(tmp_path, 2)
    for broken, keep in [("checkpoint-3", "trainer_state.json"), ("checkpoint-4", "optimizer.pt"),
                         ("checkpoint-5", "model/config.json")]:
        shutil.copytree(tmp_path / "checkpoint-2", tmp_path / broken)
        (tmp_path / broken / keep).unlink()
    shutil.copytree(tmp_path / "checkpoint-2", tmp_path / ".checkpoint-9.tmp")  # killed before the rename
    shutil.copytree(tmp_path / "checkpoint-2", tmp_path / ".trash-checkpoint-1")  # killed while pruning
    (tmp_path / "checkpoint-7").write_text("a file, not a folder")
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    _save(tmp_path, 6)  # the next save clears the leftovers of the interrupted one
    assert not (tmp_path / ".checkpoint-9.tmp").exists() and not (tmp_path / ".trash-checkpoint-1").exists()
    assert latest_checkpoint(tmp_path).name == "checkpoint-6"


def test_a_kill_inside_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 2)
    real_save = torch.save

    def die_midway(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise KeyboardInterrupt  # the process dies right after writing the optimiser state

    monkeypatch.setattr(torch, "save", die_midway)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 4)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    load_trainer_state(latest_checkpoint(tmp_path))  # and it verifies


def test_full_disk_while_saving_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    _save(tmp_path, 2)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError, match="could not write checkpoint .*checkpoint-4.*disk is full"):
        _save(tmp_path, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_pruning_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    _save(tmp_path, 4, keep=2)  # re-saving a step replaces it
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-4"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("name", ["optimizer.pt", "model/model.safetensors"])
def test_tampered_or_truncated_checkpoint_names_the_file(tmp_path, damage, name):
    path = _save(tmp_path, 2) / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit in the payload: only the checksum sees it
    else:
        path.unlink()
    with pytest.raises(ValueError, match=f"{name}.*(missing|modified or truncated).*delete .*checkpoint-2"):
        load_trainer_state(tmp_path / "checkpoint-2")


def test_resume_from_a_tampered_checkpoint_fails_before_training(tmp_path):
    train_module.train(micro_args(tmp_path, max_steps=2, checkpoint_every=1))
    weights = tmp_path / "checkpoint-2" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="model.safetensors was modified or truncated"):
        train_module.train(micro_args(tmp_path, max_steps=4, checkpoint_every=1, resume=True))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch " + str(_Payload.marker),))


def test_optimizer_states_are_never_unpickled(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    evil = tmp_path / "optimizer.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"state": _Payload()}, handle)
    torch.save({"state": {}, "param_groups": [], "x": _Payload()}, tmp_path / "evil_zip.pt")
    for path in (evil, tmp_path / "evil_zip.pt"):
        with pytest.raises(ValueError, match=f"cannot read {path}.*never unpickled"):
            load_torch_state(path)
    assert not _Payload.marker.exists()
    truncated = tmp_path / "truncated.pt"
    torch.save({"a": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_torch_state(truncated)


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    with pytest.raises(OSError, match="only 10 MiB free under .* choose another --output-dir"):
        train_module.train(micro_args(tmp_path / "run"))
    assert not (tmp_path / "run" / "vqgan").exists()


def test_too_little_space_for_the_checkpoints_fails_before_training(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train_module, "checkpoint_bytes", lambda model, keep: 2**40)  # needs 1 TiB
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: usage._replace(free=2**30))
    with pytest.raises(OSError, match=r"1024 MiB free .* 1048576 MiB are needed for 3 checkpoints"):
        train_module.train(micro_args(tmp_path / "run"))
    assert not (tmp_path / "run" / "vqgan").exists()


def test_checkpoint_bytes_counts_weights_and_adam_moments():
    model = torch.nn.Linear(10, 10)  # 110 float32 parameters = 440 bytes
    assert train_module.checkpoint_bytes(model, keep_checkpoints=2) == 3 * (3 * 440) + 440


def test_cli_reports_a_full_disk_and_bad_overrides(tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: usage._replace(free=0))
    assert cli.main(["train", "--output-dir", str(tmp_path / "run")]) == cli.EXIT_USAGE
    assert "dove train: error: [Errno 28] only 0 MiB free" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--output-dir", str(tmp_path), "--model-overrides", "{not json"])
    assert "--model-overrides: not valid JSON" in capsys.readouterr().err


def test_cli_model_overrides_reach_the_model(tmp_path):
    overrides = json.dumps(MICRO_OVERRIDES)
    code = cli.main(["train", "--output-dir", str(tmp_path), "--max-steps", "1", "--batch-size", "2",
                     "--num-train-scenes", "4", "--vqgan-steps", "1", "--eval-scenes", "0", "--lpips-weight", "0",
                     "--model-overrides", overrides])
    assert code == 0
    assert json.loads((tmp_path / "config.json").read_text())["max_tokens"] == MICRO_OVERRIDES["max_tokens"]
