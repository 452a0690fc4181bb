"""The saved format of a trained DOVE-LLaVA stage, and loading it for inference from any working directory.

A `dove llava-train --stage base` folder is a full `DoveLlavaForConditionalGeneration` with its tokenizer. A
`--stage lora` folder holds `adapter/` (peft), `tower/` (the DOVE tower it was trained on), the tokenizer and
`dove_llava_lora.json`, which records the base model: a hub id as given, a local folder relative to the saved
folder (so a folder moved together with its base keeps working) and as an absolute path (so a folder moved on
its own keeps working).

A `--stage align` folder (the LLaVA-1.5 alignment stage on a pretrained language model) holds only what it
trained and what it was trained on: `projector.safetensors`, `tower/`, the tokenizer (with `<image>` added) and
`dove_llava_align.json`, which records the language model (`--language-model`: hub id, folder or `.gguf` file)
or the LLaVA checkpoint (`--base-model`) the same way. Loading rebuilds the model from that source, so a 7B
language model is never copied. A LoRA stage trained straight on `--language-model` records it as
`language_model` instead of `base_model`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..checkpoints import ALIGN_INFO_FILE, LORA_INFO_FILE, describe_mismatch, looks_local, quiet_loading
from ..encoder_tower import TOWERS, load_tower
from ..tower_settings import TowerSettings
from ..vision_tower import DoveVisionTower
from .modeling_dove_llava import DoveLlavaForConditionalGeneration
from .processing_dove_llava import DoveLlavaProcessor

PROJECTOR = "multi_modal_projector"
ADAPTER_DIR, TOWER_DIR, MERGED_DIR = "adapter", "tower", "merged"
PROJECTOR_FILE = "projector.safetensors"


def load_base_llava(path: str) -> DoveLlavaForConditionalGeneration:
    """A base LLaVA (a `--stage base` folder or a LLaVA checkpoint); refuses checkpoints whose projector or
    language-model weights are missing, naming them. A `--stage align` folder is rebuilt from its language model
    and its trained projector."""
    if (Path(path) / ALIGN_INFO_FILE).is_file():
        return load_aligned_llava(path)[0]
    if not os.path.exists(path) and path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"base model {path!r} does not exist; pass a folder written by "
                                "`dove llava-train --stage base` or a LLaVA checkpoint.")
    model, info = _from_pretrained(path)
    missing = [k for k in info.get("missing_keys", []) if "vision_tower" not in k and "lm_head" not in k]
    wrong = describe_mismatch({k: v for k, v in info.items() if k != "missing_keys"}, path)
    if wrong:
        raise ValueError(wrong)
    if missing:
        projector = [k for k in missing if PROJECTOR in k]
        what = "the multimodal projector" if projector else "language-model weights"
        raise ValueError(f"the base model {path!r} is missing {what} ({', '.join(sorted(missing)[:4])}); it would be "
                         "randomly initialised. Pass a complete LLaVA checkpoint (projector + language model).")
    return model


def _from_pretrained(path) -> tuple[DoveLlavaForConditionalGeneration, dict]:
    """`from_pretrained` with its loading info, quietly (no per-key report), failures as one clear error."""
    try:
        with quiet_loading():
            return DoveLlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load the DOVE-LLaVA model in {str(path)!r}: {first}") from err


def build_processor(tower: DoveVisionTower, tokenizer) -> DoveLlavaProcessor:
    """The processor of a model on `tower`; the user/assistant markers (where `image_queries="auto"` finds the
    user's turn) come from the tokenizer's chat template."""
    from .chat import ChatTemplateError, chat_markers, template_owner

    markers = {}
    owner = template_owner(tokenizer)
    if owner is not None:
        try:
            user, end = chat_markers(owner)
            if user and end:
                markers = {"user_prefix": user, "assistant_prefix": end}
        except ChatTemplateError:
            pass
    processor = DoveLlavaProcessor(image_processor=tower.image_processor, tokenizer=tokenizer, **markers)
    return processor.attach_tower(tower)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def text_fingerprint(model) -> dict[str, Any]:
    """What a LoRA adapter depends on: the language model's shape."""
    text = model.config.text_config
    return {"model_type": text.model_type, "hidden_size": text.hidden_size, "num_hidden_layers": text.num_hidden_layers,
            "intermediate_size": getattr(text, "intermediate_size", None), "vocab_size": text.vocab_size}



def check_adapter(adapter_dir: str | os.PathLike, base_model) -> None:
    """Clear errors before peft loads `adapter_dir` onto `base_model`: an adapter trained on another base model
    (language-model shape or weight shapes that differ), or an adapter without the projector."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter in {adapter_dir} (adapter_config.json is missing).")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"the LoRA adapter in {adapter_dir} has no adapter_model.safetensors.")
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118 (not a dict)
    if not any(PROJECTOR in k for k in shapes):
        raise ValueError(f"the LoRA adapter in {adapter_dir} has no projector weights ({PROJECTOR} in "
                         "modules_to_save); without them the new tower's projector would be random. Retrain with "
                         "`dove llava-train --stage lora` (which saves it).")
    info_file = adapter_dir.parent / LORA_INFO_FILE
    if info_file.is_file():
        saved = json.loads(info_file.read_text()).get("text_model", {})
        current = text_fingerprint(base_model)
        diff = {k: (saved[k], current.get(k)) for k in saved if saved[k] != current.get(k)}
        if diff:
            detail = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
            raise ValueError(f"the LoRA adapter in {adapter_dir} was trained on another base model: its language "
                             f"model differs ({detail}; adapter vs given base).")
    params = dict(base_model.named_parameters())
    for key, shape in shapes.items():
        if ".lora_A." in key or ".lora_B." in key:
            module = key.split(".lora_")[0].removeprefix("base_model.model.")
            weight = params.get(module + ".weight")
            if weight is None:
                raise ValueError(f"the LoRA adapter in {adapter_dir} targets {module}, which the given base model does "
                                 "not have: the adapter was trained on another base model.")
            expected = weight.shape[1] if ".lora_A." in key else weight.shape[0]
            got = shape[1] if ".lora_A." in key else shape[0]
            if expected != got:
                raise ValueError(f"the LoRA adapter in {adapter_dir} was trained on another base model: {module} is "
                                 f"{tuple(weight.shape)} in the given base model but the adapter expects width {got}.")
        elif PROJECTOR in key and key.endswith(".weight"):
            module = key.replace(".modules_to_save.default", "").removeprefix("base_model.model.")
            weight = params.get(module)
            if weight is not None and tuple(weight.shape) != shape:
                raise ValueError(f"the adapter's projector {module} is {shape} but the model's is "
                                 f"{tuple(weight.shape)}: the adapter was trained for another vision tower or base model.")


def write_lora_info(output_dir: str | os.PathLike, base_model: str, tower: str, settings: TowerSettings,
                    text_model: dict[str, Any], source_key: str = "base_model") -> Path:
    """Record what a LoRA stage in `output_dir` was trained on (`source_key="language_model"`: straight on a
    pretrained LM). A local base model is stored relative to `output_dir` and as an absolute path, so the folder
    loads from any working directory and after a move."""
    root = Path(output_dir)
    info: dict[str, Any] = {source_key: _portable(base_model, root), "tower_source": _portable(tower, root),
                            "tower_settings": settings.to_dict(), "text_model": text_model}
    path = root / LORA_INFO_FILE
    path.write_text(json.dumps(info, indent=2))
    return path


def _portable(source: str, root: Path) -> dict[str, Any]:
    source = os.path.expanduser(str(source))
    if not looks_local(source):
        return {"hub_id": source}
    absolute = Path(source).resolve()
    return {"relative": os.path.relpath(absolute, root.resolve()), "absolute": str(absolute)}


def resolve_base_model(root: str | os.PathLike, info: dict[str, Any], key: str = "base_model") -> str:
    """The base model (`key="base_model"`) or language model (`key="language_model"`) a saved stage names: its hub
    id, or the first local path that exists (relative to the stage's folder, then the absolute path recorded at
    save time). A clear error says where it looked."""
    root = Path(root)
    entry = info.get(key)
    if isinstance(entry, str):  # written before paths were recorded relative to the folder
        entry = {"hub_id": entry} if not looks_local(entry) else {"relative": entry, "absolute": entry}
    if not isinstance(entry, dict) or not entry:
        raise ValueError(f"the stage in {root} records no {key.replace('_', ' ')}; pass base_model= (the folder "
                         "written by `dove llava-train --stage base`).")
    if "hub_id" in entry:
        return entry["hub_id"]
    tried = [root / entry["relative"]] if entry.get("relative") else []
    tried += [Path(entry["absolute"])] if entry.get("absolute") else []
    for candidate in tried:
        if (candidate / "config.json").is_file() or (candidate / ALIGN_INFO_FILE).is_file() or (
                candidate.is_file() and key == "language_model"):
            return str(candidate)
    tried = [str(c) for c in tried]
    raise FileNotFoundError(f"the {key.replace('_', ' ')} of the stage in {root} is missing: looked for it at "
                            f"{' and '.join(dict.fromkeys(tried))}. Move it back beside the stage, or pass "
                            "base_model=PATH (lmms-eval: --model_args pretrained=...,base_model=PATH).")


def write_align_info(output_dir: str | os.PathLike, source: str, source_key: str, tower: str,
                     settings: TowerSettings, text_model: dict[str, Any]) -> Path:
    """Record what an align stage in `output_dir` was trained on (`source_key`: `language_model` or
    `base_model`), paths portable as in `write_lora_info`."""
    root = Path(output_dir)
    info = {source_key: _portable(source, root), "tower_source": _portable(tower, root),
            "tower_settings": settings.to_dict(), "text_model": text_model}
    path = root / ALIGN_INFO_FILE
    path.write_text(json.dumps(info, indent=2))
    return path


def language_model_llava(tower: DoveVisionTower, source: str, tokenizer):
    """A LLaVA on `tower` over the pretrained language model `source` with `tokenizer` (a saved stage's)."""
    from .language_model import build_llava_on_language_model

    return build_llava_on_language_model(tower, source, tokenizer=tokenizer)[0]


def load_aligned_llava(output_dir: str | os.PathLike, base_model: str | None = None):
    """`(model, processor)` of a `--stage align` folder: its language model (or LLaVA checkpoint) rebuilt with the
    saved tower and the trained projector."""
    from safetensors.torch import load_file

    root = Path(output_dir)
    info = json.loads((root / ALIGN_INFO_FILE).read_text())
    for needed in (TOWER_DIR + "/config.json", PROJECTOR_FILE):
        if not (root / needed).is_file():
            raise FileNotFoundError(f"the align stage in {root} is incomplete: {root / needed} is missing.")
    tower = load_tower(str(root / TOWER_DIR))
    tokenizer = load_tokenizer(str(root))
    if "language_model" in info and base_model is None:
        model = language_model_llava(tower, resolve_base_model(root, info, "language_model"), tokenizer)
    else:
        model = load_base_llava(base_model or resolve_base_model(root, info))
        model.set_vision_tower(tower)
    saved = text_fingerprint(model)
    diff = {k: (v, saved.get(k)) for k, v in info.get("text_model", {}).items() if saved.get(k) != v}
    if diff:
        raise ValueError(f"the align stage in {root} was trained on another language model: "
                         + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items()) + " (saved vs found).")
    state = load_file(str(root / PROJECTOR_FILE))
    model.model.multi_modal_projector.load_state_dict(state)
    return model.eval(), build_processor(tower, tokenizer)


def save_aligned_projector(model, output_dir: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = {k: v.detach().contiguous().cpu() for k, v in inner.model.multi_modal_projector.state_dict().items()}
    path = Path(output_dir) / PROJECTOR_FILE
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def load_llava_lora(output_dir: str | os.PathLike, merged: bool = False, base_model: str | None = None):
    """A model written by `--stage lora`, ready for `generate`: `(model, processor)`.

    Args:
        output_dir: the stage's output folder (`adapter/`, `tower/`, `dove_llava_lora.json`, the tokenizer).
        merged: load `merged/` (written with `--merge`) instead of base + adapter.
        base_model: override the base model recorded at training time.
    """
    root = Path(output_dir)
    if merged:
        if not (root / MERGED_DIR / "config.json").is_file():
            raise FileNotFoundError(f"no merged model in {root / MERGED_DIR}; train with --merge or call merge_adapter.")
        model, info = _from_pretrained(root / MERGED_DIR)
        wrong = describe_mismatch(info, root / MERGED_DIR, ignore_missing=("lm_head",))
        if wrong:
            raise ValueError(wrong)
        model = model.eval()
        tower = model.model.vision_tower
    else:
        info_file = root / LORA_INFO_FILE
        if not info_file.is_file():
            raise FileNotFoundError(f"{root} holds no `dove llava-train --stage lora` output ({LORA_INFO_FILE} missing).")
        info = json.loads(info_file.read_text())
        if not (root / TOWER_DIR / "config.json").is_file():
            raise FileNotFoundError(f"the tower of the LoRA stage in {root} is missing: looked for it at "
                                    f"{root / TOWER_DIR}.")
        tower = load_tower(str(root / TOWER_DIR))
        if "language_model" in info and base_model is None:  # trained straight on a pretrained LM (new projector)
            model = language_model_llava(tower, resolve_base_model(root, info, "language_model"),
                                         load_tokenizer(str(root)))
        else:
            model = load_base_llava(base_model or resolve_base_model(root, info))
            model.set_vision_tower(tower)
        model = attach_adapter(model, root / ADAPTER_DIR).eval()
    processor = build_processor(tower, load_tokenizer(str(root)))
    return model, processor


def load_dove_llava(pretrained: str | os.PathLike, base_model: str | None = None, merged: bool = False):
    """`(model, processor)` of a `dove llava-train` output folder (base or LoRA stage) or a DOVE-LLaVA folder."""
    root = Path(pretrained)
    if not root.is_dir():
        raise FileNotFoundError(f"pretrained={str(pretrained)!r} is not a folder; pass a `dove llava-train` output "
                                "folder.")
    if (root / LORA_INFO_FILE).is_file() or merged:
        return load_llava_lora(root, merged=merged, base_model=base_model)
    if (root / ALIGN_INFO_FILE).is_file():
        return load_aligned_llava(root, base_model=base_model)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root} holds neither a DOVE-LLaVA model (config.json) nor a LoRA stage "
                                f"({LORA_INFO_FILE}).")
    model, info = _from_pretrained(root)
    wrong = describe_mismatch(info, root, ignore_missing=("lm_head",))
    if wrong:
        raise ValueError(wrong)
    model = model.eval()
    tower = model.model.vision_tower
    if not isinstance(tower, TOWERS):
        raise TypeError(f"{root} has a {type(tower).__name__} vision tower, not a DOVE or encoder tower.")
    return model, build_processor(tower, load_tokenizer(str(root)))


def attach_adapter(model, adapter_dir: str | os.PathLike, is_trainable: bool = False):
    """`PeftModel.from_pretrained` after `check_adapter`'s clear errors."""
    from peft import PeftModel

    check_adapter(adapter_dir, model)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)


def merge_adapter(peft_model, output_dir: str | os.PathLike, processor=None) -> Path:
    """Merge the LoRA weights (and the trained projector) into a copy-free full model in `output_dir/merged`."""
    merged = peft_model.merge_and_unload()
    path = Path(output_dir) / MERGED_DIR
    merged.save_pretrained(path)
    if processor is not None:
        processor.tokenizer.save_pretrained(path)
    return path


def projector_of(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.multi_modal_projector


