"""Checkpoints that are written atomically, verified, and found again on `--resume`.

A checkpoint is a folder `checkpoint-<step>/` holding the model (safetensors through `save_pretrained`), the
optimiser and LR-scheduler states (`torch.save`, reloaded with `weights_only=True`: plain tensors and numbers, no
arbitrary unpickling) and `trainer_state.json`, written last, with the SHA-256 of every other file. The folder is
written under a temporary name and renamed when complete (old checkpoints are renamed away before they are
deleted), so a run killed at any moment — SIGKILL included — never leaves a half checkpoint that `--resume` could
pick up, and a file changed or truncated afterwards is caught on resume with an error naming it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
REQUIRED_FILES = (STATE_FILE, "optimizer.pt", "model/config.json")
TEMP_PREFIXES = (".checkpoint-", ".trash-")


def is_complete(checkpoint: str | os.PathLike) -> bool:
    """A checkpoint folder with its state, optimiser, model config and safetensors weights."""
    path = Path(checkpoint)
    weights = (path / "model" / "model.safetensors").is_file() or (path / "model" / "model.safetensors.index.json").is_file()
    return weights and all((path / name).is_file() for name in REQUIRED_FILES)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Rename `path` away first, then delete it: a kill mid-delete leaves a hidden `.trash-*` folder, never a
    checkpoint with some files missing."""
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_incomplete(output_dir: str | os.PathLike) -> list[Path]:
    """Delete what an interrupted save left behind (temporary and half-deleted folders); returns them."""
    root = Path(output_dir)
    stale = [child for child in root.iterdir() if child.is_dir() and child.name.startswith(TEMP_PREFIXES)] \
        if root.is_dir() else []
    for child in stale:
        shutil.rmtree(child, ignore_errors=True)
    return stale


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 2,
    extra_modules: dict[str, torch.nn.Module] | None = None,
    extra_states: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write `checkpoint-<step>` atomically and prune all but the newest `keep` checkpoints.

    Args:
        extra_modules: more modules, saved as `<name>.safetensors` (e.g. the GAN discriminator).
        extra_states: more optimiser-like states, saved as `<name>.pt` (e.g. the discriminator's optimiser).
    Raises:
        OSError: the checkpoint could not be written (e.g. the disk is full); nothing partial is left behind.
    """
    from safetensors.torch import save_file

    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    remove_incomplete(root)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        for name, module in (extra_modules or {}).items():
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
        for name, extra in (extra_states or {}).items():
            torch.save(extra, tmp / f"{name}.pt")
        files = {str(path.relative_to(tmp)): _sha256(path) for path in sorted(tmp.rglob("*")) if path.is_file()}
        with open(tmp / STATE_FILE, "w") as handle:
            json.dump(dict(state, step=step, files=files), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        hint = "the disk is full; free space" if err.errno == errno.ENOSPC else "check the output directory"
        raise OSError(err.errno, f"could not write checkpoint {final} ({err}); {hint} and rerun with --resume.") from err
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        _discard(old)
    return final


def resume_point(output_dir: str | os.PathLike, resume: bool, log=print) -> tuple[Path | None, dict[str, Any]]:
    """`(latest complete checkpoint, its trainer state)` when resuming, else `(None, {})`; says so when `resume` is
    asked for but nothing complete is there (the run then starts from scratch)."""
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if resume and checkpoint is None:
        log(f"--resume: no complete checkpoint in {output_dir}, starting from scratch.")
    return checkpoint, (load_trainer_state(checkpoint) if checkpoint else {})


def load_trainer_state(checkpoint: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """`trainer_state.json` of a checkpoint; with `verify`, every file listed in it must still have the SHA-256
    it was written with (a truncated or tampered file is named in a ValueError)."""
    path = Path(checkpoint) / STATE_FILE
    try:
        with open(path) as handle:
            state = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint state {path} is missing or corrupt ({err}); delete that checkpoint folder.") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint state {path} is not a JSON object; delete that checkpoint folder.")
    if verify:
        verify_checkpoint(checkpoint, state)
    return state


def verify_checkpoint(checkpoint: str | os.PathLike, state: dict[str, Any]) -> None:
    """Compare the files of `checkpoint` with the SHA-256 sums in its state (older checkpoints have none)."""
    root = Path(checkpoint)
    for name, expected in (state.get("files") or {}).items():
        path = root / name
        if not path.is_file():
            raise ValueError(f"checkpoint file {path} is missing; the checkpoint is incomplete — delete {root} to "
                             "resume from the previous one.")
        if _sha256(path) != expected:
            raise ValueError(f"checkpoint file {path} was modified or truncated after it was written (SHA-256 "
                             f"mismatch); delete {root} to resume from the previous checkpoint.")


def load_torch_state(path: str | os.PathLike) -> dict[str, Any]:
    """Optimiser/scheduler states: plain tensors and numbers, so `weights_only=True` (no arbitrary unpickling)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / tampered / pickled-code files
        raise ValueError(f"cannot read {path} ({type(err).__name__}: {str(err)[:300]}); the checkpoint is corrupt or "
                         "holds more than tensors (it is never unpickled) — delete that checkpoint folder.") from err


def load_safetensors_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `.safetensors` state dict, with a clear error for a missing, truncated or tampered file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError as err:
        raise ValueError(f"checkpoint file {path} is missing; delete that checkpoint folder.") from err
    except Exception as err:  # SafetensorError for corrupt headers, OSError for unreadable files
        raise ValueError(f"cannot read {path} ({err}); the file is corrupt or truncated — delete that checkpoint "
                         "folder.") from err
