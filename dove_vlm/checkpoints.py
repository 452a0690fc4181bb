"""The one check of "is this a local checkpoint folder, and what does it hold" (every loader asks here).

A source is local when it exists or is written like a path (`./x`, `/x`, `~/x`, `a/b/c`); otherwise it is a hub
id (`org/name`), which `from_pretrained` resolves through the Hugging Face cache (offline with HF_HUB_OFFLINE=1).
`has_file`, `model_type` and `weights_problem` answer the same questions for both, a hub id through the cache
(`huggingface_hub`), asking the hub itself only when not offline.
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
        problem = weights_problem(path)
        raise FileNotFoundError(f"{path!r} has no model.safetensors; " + (problem or "the checkpoint is incomplete."))


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


# --- local folders and hub ids alike --------------------------------------------------------------------------

SAFETENSORS_SUFFIXES = (".safetensors", ".safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".bin.index.json", ".pt", ".pth", ".ckpt")


def _repo_path(filename: str, subfolder: str | None) -> str:
    return f"{subfolder.strip('/')}/{filename}" if subfolder else filename


def has_file(source: str | os.PathLike, filename: str, subfolder: str | None = None) -> bool:
    """Whether the checkpoint `source` holds `subfolder/filename`: on disk for a local folder; for a hub id in the
    Hugging Face cache (`try_to_load_from_cache`, which reads `refs/main` → `snapshots/<commit>/`), else — only when
    not offline — on the hub (`file_exists`)."""
    source = str(source)
    if looks_local(source):
        return os.path.isfile(os.path.join(os.path.expanduser(source), subfolder or "", filename))
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(source, _repo_path(filename, subfolder))
    if isinstance(cached, str):
        return True
    if cached is not None or huggingface_hub.is_offline_mode():  # known absent, or nothing more to ask
        return False
    try:
        return huggingface_hub.file_exists(source, _repo_path(filename, subfolder))
    except Exception:  # noqa: BLE001 - no answer from the hub: let from_pretrained report it
        return False


def model_type(source: str | os.PathLike, strict: bool = True) -> str | None:
    """The `model_type` in the `config.json` of a local folder (as `local_model_type`) or of a hub id (read through
    the cache, or fetched when online); `None` where a hub id's config cannot be had (from_pretrained then says
    why)."""
    source = str(source)
    if looks_local(source):
        return local_model_type(source, strict=strict)
    import huggingface_hub

    try:
        path = huggingface_hub.hf_hub_download(source, "config.json")
    except Exception:  # noqa: BLE001 - not cached / not reachable / no such repo
        return None
    return read_config(os.path.dirname(path)).get("model_type")


def list_files(source: str | os.PathLike, subfolder: str | None = None) -> list[str] | None:
    """The file names (relative to `subfolder`) of a local folder or of a hub id's cached snapshot (the hub's list
    when online and nothing is cached); `None` when they cannot be listed."""
    source = str(source)
    if looks_local(source):
        root = os.path.join(os.path.expanduser(source), subfolder or "")
    else:
        import huggingface_hub

        try:
            root = os.path.join(huggingface_hub.snapshot_download(source, local_files_only=True), subfolder or "")
        except Exception:  # noqa: BLE001 - nothing cached
            if huggingface_hub.is_offline_mode():
                return None
            try:
                prefix = _repo_path("", subfolder)
                return [name[len(prefix):] for name in huggingface_hub.list_repo_files(source)
                        if name.startswith(prefix)]
            except Exception:  # noqa: BLE001
                return None
    if not os.path.isdir(root):
        return None
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def weights_problem(source: str | os.PathLike, subfolder: str | None = None) -> str | None:
    """A sentence saying why `source` has no weights DOVE reads (only safetensors are read): it holds pickled
    (`.bin`/`.pt`) or GGUF weights only, and what to do; `None` when it holds safetensors or cannot be listed."""
    names = list_files(source, subfolder)
    if not names or any(name.endswith(SAFETENSORS_SUFFIXES) for name in names):
        return None
    where = repr(str(source)) + (f" (subfolder {subfolder!r})" if subfolder else "")
    gguf = [name for name in names if name.endswith(".gguf")]
    if gguf:
        return (f"{where} holds GGUF weights only ({', '.join(gguf[:3])}); only safetensors weights are read — use the "
                "original (non-GGUF) checkpoint, or convert it to safetensors with transformers "
                "(`from_pretrained(..., gguf_file=...)` then `save_pretrained`).")
    pickled = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    if pickled:
        return (f"{where} holds pickled weights only ({', '.join(pickled[:3])}); only safetensors weights are read "
                "(a pickle can run code when loaded) — convert it to safetensors first (load it where you trust it "
                "and `save_pretrained(..., safe_serialization=True)`), or use a revision with model.safetensors.")
    return None
