"""The one check of "is this a local checkpoint folder, and what does it hold" (every loader asks here).

A source is local when it exists or is written like a path (`./x`, `/x`, `~/x`, `a/b/c`); otherwise it is a hub
id (`org/name`), which `from_pretrained` resolves through the Hugging Face cache (offline with HF_HUB_OFFLINE=1).
`has_file`, `model_type` and `weights_problem` answer the same questions for both, a hub id through the cache
(`huggingface_hub`), asking the hub itself only when not offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

# The marker file of a `dove llava-train --stage lora` folder (what it was trained on).
LORA_INFO_FILE = "dove_llava_lora.json"
ALIGN_INFO_FILE = "dove_llava_align.json"  # a `dove llava-train --stage align` folder (no config.json)


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
    kind = read_config(path).get("model_type")
    if kind in KIND_WEIGHTS:
        check_weights_kind(path, kind)


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


def check_source(source: str | os.PathLike, flag: str, what: str = "a model folder") -> None:
    """A model source given on the command line: an existing local path, or a hub id (`org/name`) that can be
    resolved. A missing folder is reported as missing (not as a failed hub download), and a hub id that is not
    in the local Hugging Face cache while offline says so."""
    text = os.path.expanduser(str(source))
    if os.path.exists(text):
        return
    if not text.strip() or looks_local(text) or text.count("/") != 1:
        raise FileNotFoundError(f"{flag} {source}: no such file or folder; pass {what}.")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(text, "config.json")
    except HFValidationError as err:
        raise FileNotFoundError(f"{flag} {source}: no such folder, and not a valid hub id ({err}).") from None
    if not isinstance(cached, str) and constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"{flag} {source}: no such local folder, and no hub model of that name in the local "
                                "Hugging Face cache (offline: HF_HUB_OFFLINE is set); pass " + what + ".")


def model_kind(path: str | os.PathLike) -> str:
    """What a local model folder holds, for the checks of which folder a flag takes: `dove` (a DOVE / Q-DOVE
    checkpoint), `dove_vision_tower`, `llava_lora` (a `dove llava-train --stage lora` folder), `llava_align` (an align stage), `dove_llava` (a
    base stage or a merged DOVE-LLaVA), another config's `model_type`, or `unknown` (no readable config)."""
    path = str(path)
    if os.path.isfile(os.path.join(path, LORA_INFO_FILE)):
        return "llava_lora"
    if os.path.isfile(os.path.join(path, ALIGN_INFO_FILE)):
        return "llava_align"
    if not os.path.isfile(os.path.join(path, "config.json")):
        return "unknown"
    return str(read_config(path).get("model_type") or "unknown")


def describe_kind(kind: str) -> str:
    """A [`model_kind`] in words, for errors about a folder given to the wrong flag."""
    return {"unknown": "no model (no config.json)", "llava_lora": "a `dove llava-train --stage lora` output",
            "llava_align": "a `dove llava-train --stage align` output",
            "dove_llava": "a DOVE-LLaVA model (`dove llava-train` output)", "dove_vision_tower": "a DOVE vision tower",
            "dove": "a DOVE tokenizer checkpoint (`dove train` output)"}.get(kind, f"a {kind!r} model")


def supports_queries(path: str | os.PathLike) -> bool:
    """Whether a local DOVE checkpoint, tower folder or DOVE-LLaVA folder holds a Q-DOVE model (a query
    embedding), read from its config files only."""
    path = str(path)
    kind = model_kind(path)
    if kind in ("llava_lora", "llava_align"):
        return supports_queries(os.path.join(path, "tower"))
    config = read_config(path) if kind != "unknown" else {}
    if kind == "dove_llava":
        config = (config.get("vision_config") or {}).get("dove_config") or {}
    elif kind == "dove_vision_tower":
        config = config.get("dove_config") or {}
    return bool(config.get("query_vocab_size"))


def weight_names(path: str | os.PathLike) -> list[str]:
    """The tensor names in a folder's safetensors weights, read from the file headers only (nothing is loaded);
    a clear error naming the file when a header is not a safetensors header."""
    path = str(path)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as handle:
                weight_map = json.load(handle).get("weight_map")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
            raise ValueError(f"{index!r} is not a valid safetensors index ({err}).") from err
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index!r} has no weight_map; the checkpoint is corrupt.")
        return list(weight_map)
    weights = os.path.join(path, "model.safetensors")
    try:
        with open(weights, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= min(100 * 2**20, os.path.getsize(weights) - 8):
                raise ValueError("bad header length")
            header = json.loads(handle.read(size))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{weights!r} is not a safetensors file, or it is truncated ({err}); re-save the "
                         "checkpoint.") from err
    if not isinstance(header, dict):
        raise ValueError(f"{weights!r} has a damaged safetensors header; re-save the checkpoint.")
    return [name for name in header if name != "__metadata__"]


# Names every weights file of a kind holds (a weights file of another model is refused before it is loaded).
KIND_WEIGHTS = {"dove": ("eos_head.", "generator."), "dove_vision_tower": ("eos_head.", "generator."),
                "dove_llava": ("multi_modal_projector", "language_model")}


def check_weights_kind(path: str | os.PathLike, kind: str) -> None:
    """Refuse a folder whose weights file belongs to another kind of model than its config.json says."""
    names = weight_names(path)
    missing = [part for part in KIND_WEIGHTS.get(kind, ()) if not any(part in name for name in names)]
    if missing:
        example = ", ".join(sorted(names)[:2]) or "no tensors"
        raise ValueError(f"the weights in {str(path)!r} do not fit its config.json ({kind!r} model): no "
                         f"{' / '.join(missing)} weights (it holds {len(names)} tensors such as {example}). The folder "
                         "holds another model's weights file; re-save it or pass the right folder.")


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Keep transformers' loading report (a line per mismatched key) off the terminal while a checkpoint loads:
    the loaders here check the loading info themselves and raise one clear error."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def describe_mismatch(info: dict, source: str | os.PathLike, ignore_missing: Iterable[str] = ()) -> str | None:
    """One sentence about the weights of `source` that do not fit its config (transformers' loading info:
    unexpected, mismatched and missing keys; missing keys containing any of `ignore_missing` are fine), or None."""
    ignore = tuple(ignore_missing)
    parts = []
    for key, label in (("unexpected_keys", "unexpected"), ("mismatched_keys", "of the wrong shape"),
                       ("missing_keys", "missing")):
        names = [k if isinstance(k, str) else k[0] for k in info.get(key) or ()]
        if key == "missing_keys":
            names = [k for k in names if not any(part in k for part in ignore)]
        if names:
            parts.append(f"{len(names)} {label} (e.g. {', '.join(sorted(names)[:2])})")
    if not parts:
        return None
    return (f"the weights in {str(source)!r} do not fit its config.json: {'; '.join(parts)} weights. The folder holds "
            "another model's weights file, or a damaged one; re-save it or pass the right folder.")
