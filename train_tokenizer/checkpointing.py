"""Checkpoints that are written atomically and found again on `--resume`.

A checkpoint is a folder `checkpoint-<step>/` holding the model (safetensors through `save_pretrained`), the
optimiser and LR-scheduler states (`torch.save`, reloaded with `weights_only=True`) and `trainer_state.json`.
It is written under a temporary name and renamed when complete, so a run killed mid-write never leaves a
half checkpoint that `--resume` could pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 2,
    extra_modules: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write `checkpoint-<step>` atomically and prune all but the newest `keep` checkpoints."""
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for name, module in (extra_modules or {}).items():
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    with open(tmp / STATE_FILE, "w") as handle:
        json.dump(dict(state, step=step), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint state {path} is missing or corrupt ({err}); delete that checkpoint folder.") from err


def load_torch_state(path: str | os.PathLike) -> dict[str, Any]:
    """Optimiser/scheduler states: plain tensors and numbers, so `weights_only=True` (no arbitrary unpickling)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / tampered files
        raise ValueError(f"cannot read {path} ({type(err).__name__}: {err}); the checkpoint is corrupt.") from err
