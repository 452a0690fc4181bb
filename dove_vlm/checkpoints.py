"""The one check of "is this a local checkpoint folder, and what does it hold" (every loader asks here).

A source is local when it exists or is written like a path (`./x`, `/x`, `~/x`, `a/b/c`); otherwise it is a hub
id (`org/name`), which `from_pretrained` resolves through the Hugging Face cache (offline with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os


def looks_local(source: str | os.PathLike) -> bool:
    """True when `source` is meant as a local path rather than a hub id."""
    source = str(source)
    return os.path.exists(source) or source.startswith((".", "/", "~")) or source.count("/") > 1


def check_checkpoint_dir(path: str | os.PathLike) -> None:
    """Raise a clear error unless `path` is a folder with a readable `config.json` and safetensors weights."""
    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint folder at {path!r}; pass a folder written by `dove train` or save_pretrained.")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{path!r} has no config.json, so it is not a DOVE checkpoint (or it is incomplete).")
    read_config(path)
    names = os.listdir(path)
    if "model.safetensors" not in names and "model.safetensors.index.json" not in names:
        raise FileNotFoundError(f"{path!r} has no model.safetensors; the checkpoint is incomplete.")


def read_config(path: str | os.PathLike) -> dict:
    """The `config.json` of a local folder as a dict; a clear error naming the file when it is not a JSON object."""
    config = os.path.join(str(path), "config.json")
    try:
        with open(config, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config!r} is not valid JSON ({err}); the checkpoint is corrupt.") from err
    if not isinstance(value, dict):
        raise ValueError(f"{config!r} holds a JSON {type(value).__name__}, not an object; the checkpoint is corrupt.")
    return value


def local_model_type(source: str | os.PathLike, strict: bool = True) -> str | None:
    """The `model_type` of a local checkpoint folder; `None` for hub ids (and, with `strict=False`, for folders
    that hold no readable config). With `strict`, a broken local folder is a clear error."""
    source = str(source)
    if not looks_local(source):
        return None
    if not strict:
        try:
            return read_config(source).get("model_type") if os.path.isfile(os.path.join(source, "config.json")) else None
        except ValueError:
            return None
    check_checkpoint_dir(source)
    return read_config(source).get("model_type")
