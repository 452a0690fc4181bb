"""Tiny LLaVA parts built locally (no pretrained LLM is available offline): a word-level text tokenizer with the
LLaVA-1.5 prompt format, and a small Llama wired to a DOVE tower."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import LlamaConfig, PreTrainedTokenizerFast

from ..vision_tower import DoveVisionTower
from .configuration_dove_llava import DoveLlavaConfig
from .modeling_dove_llava import DoveLlavaForConditionalGeneration

IMAGE_TOKEN, PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<image>", "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN)
USER_PREFIX, ASSISTANT_PREFIX = "USER:", "ASSISTANT:"
PROMPT_WORDS = ("user", "assistant", ":")

# LLaVA-1.5 style: "USER: <image>\n{question} ASSISTANT: {answer}</s>" (the tokenizer adds <s> in front).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'USER: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>\n' }}{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '</s>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def build_text_tokenizer(texts: Iterable[str], model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (NFKC + lower-case, whitespace/punctuation split) over the words of `texts` plus the
    prompt words, with the special tokens `<pad> <s> </s> <unk> <image>`, `<s>` prepended to every encoding, left
    padding (for batched generation) and the LLaVA-1.5 chat template ([`CHAT_TEMPLATE`]).

    Args:
        texts: the questions and answers the model will see (unknown words become `<unk>`).
        model_max_length: the context length; the processor refuses longer prompts.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Whitespace()
    words: set[str] = set(PROMPT_WORDS)
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab |= {word: i + len(vocab) for i, word in enumerate(sorted(words - set(SPECIAL_TOKENS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IMAGE_TOKEN],
        padding_side="left",
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer


def build_tiny_llava(tower: DoveVisionTower, tokenizer: PreTrainedTokenizerFast, **text_overrides) -> DoveLlavaForConditionalGeneration:
    """A [`DoveLlavaForConditionalGeneration`] with a small Llama (hidden 128, 2 layers, 4 heads; context =
    `tokenizer.model_max_length`) on `tower` (used as is: frozen, trained weights kept).

    Args:
        tower: the vision tower (any mode).
        tokenizer: from [`build_text_tokenizer`] (or any tokenizer with an `<image>` token, pad, bos and eos).
        text_overrides: `LlamaConfig` fields, e.g. `num_hidden_layers=4`.
    """
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token; build it with build_text_tokenizer.")
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=int(tokenizer.model_max_length),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    text.update(text_overrides)
    config = DoveLlavaConfig(
        vision_config=tower.config,
        text_config=LlamaConfig(**text),
        image_token_id=image_token_id,
        image_seq_length=tower.max_tokens,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model = DoveLlavaForConditionalGeneration(config)
    model.set_vision_tower(tower)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


__all__ = ["build_text_tokenizer", "build_tiny_llava", "CHAT_TEMPLATE", "IMAGE_TOKEN"]
