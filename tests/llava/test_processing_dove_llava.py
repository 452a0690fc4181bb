"""DoveLlavaProcessor: each <image> expanded to its own image's count, queries from the user's turn, clear
errors, saving and loading; and the tiny tokenizer / model builders."""

import pytest
import torch

from dove_vlm.llava import DoveLlavaProcessor, build_text_tokenizer, build_tiny_llava
from dove_vlm.llava.tiny import CHAT_TEMPLATE
from dove_vlm.query_tokenizer import build_word_tokenizer
from tests.llava.tiny_models import QUESTIONS, make_tower, pil_images, prompt, text_tokenizer


@pytest.fixture(scope="module")
def towers():
    return {"adaptive": make_tower("adaptive", query=False), "query": make_tower("query", query=True)}


@pytest.fixture(scope="module")
def images():
    return pil_images()[0]


def _processor(tower, model_max_length=512):
    return DoveLlavaProcessor(image_processor=tower.image_processor,
                              tokenizer=text_tokenizer(model_max_length)).attach_tower(tower)


@torch.no_grad()
def test_each_placeholder_expands_to_its_own_image_count(towers, images):
    tower = towers["adaptive"]
    processor = _processor(tower)
    picks = [0, 3, 4]
    out = processor(images=[images[i] for i in picks], text=[prompt(q) for q in QUESTIONS[:3]])
    expected = tower.num_image_tokens(processor.image_processor.preprocess([images[i] for i in picks])["pixel_values"])
    assert torch.equal(out["image_lengths"], expected) and len(set(expected.tolist())) == 3
    image_id = processor.image_token_id
    assert (out["input_ids"] == image_id).sum(1).tolist() == expected.tolist()
    assert out["pixel_values"].shape == (3, 3, 32, 32) and out["image_queries"] == [None, None, None]
    # Left padding: every row ends with the same text after its image tokens.
    tail = processor.tokenizer(" ASSISTANT:", add_special_tokens=False)["input_ids"]
    assert all(row[-len(tail):].tolist() == tail for row in out["input_ids"])

    two = processor(images=[images[0], images[5]], text=["USER: <image> and <image>\nsame colour? ASSISTANT:"])
    ids = two["input_ids"][0].tolist()
    first, second = two["image_lengths"].tolist()
    start = ids.index(image_id)
    assert ids[start : start + first] == [image_id] * first and ids[start + first] != image_id
    assert ids.count(image_id) == first + second


def test_marker_and_image_counts_must_match(towers, images):
    processor = _processor(towers["adaptive"])
    with pytest.raises(ValueError, match="the text has 2 <image> markers but 1 images"):
        processor(images=[images[0]], text=[prompt("a"), prompt("b")])
    with pytest.raises(ValueError, match="the text has 1 <image> markers but 2 images"):
        processor(images=images[:2], text=[prompt("a")])
    with pytest.raises(ValueError, match="the text has 1 <image> markers but 0 images"):
        processor(text=[prompt("a")])
    text_only = processor(text=["USER: hello ASSISTANT:"])
    assert "pixel_values" not in text_only and text_only["image_queries"] == []


def test_queries_auto_is_the_users_turn(towers, images):
    processor = _processor(towers["query"])
    out = processor(images=images[:3], text=[prompt(QUESTIONS[0]), "USER: <image>\n ASSISTANT:",
                                             "<image> what colour is the circle ?"])
    assert out["image_queries"] == [QUESTIONS[0], None, "what colour is the circle ?"]
    multi_turn = "USER: <image>\nhow many shapes ? ASSISTANT: two</s>USER: and the circle ? ASSISTANT:"
    assert processor.user_turn(multi_turn) == "how many shapes ?"
    assert processor.user_turn("USER: first ASSISTANT: x</s>USER: <image> second ASSISTANT:") == "second"
    explicit = processor(images=images[:2], text=[prompt("a"), prompt("b")], image_queries=["the red circle", ""])
    assert explicit["image_queries"] == ["the red circle", None]
    none = processor(images=images[:2], text=[prompt("a"), prompt("b")], image_queries=None)
    assert none["image_queries"] == [None, None]
    assert torch.equal(none["image_lengths"], towers["query"].num_image_tokens(none["pixel_values"]))
    with pytest.raises(ValueError, match="got 1 image_queries for 2 images"):
        processor(images=images[:2], text=[prompt("a"), prompt("b")], image_queries=["x"])
    # A tower without queries gets None from "auto".
    assert _processor(towers["adaptive"])(images=images[:1], text=[prompt("a")])["image_queries"] == [None]


def test_missing_tower_lengths_and_context_errors(towers, images):
    tower = towers["adaptive"]
    bare = DoveLlavaProcessor(image_processor=tower.image_processor, tokenizer=text_tokenizer())
    with pytest.raises(ValueError, match="attach_tower"):
        bare(images=images[:1], text=[prompt("a")])
    given = bare(images=images[:2], text=[prompt("a"), prompt("b")], image_lengths=[3, 7])
    assert (given["input_ids"] == bare.image_token_id).sum(1).tolist() == [3, 7]
    with pytest.raises(ValueError, match="got 1 image_lengths for 2 images"):
        bare(images=images[:2], text=[prompt("a"), prompt("b")], image_lengths=[3])
    short = _processor(tower, model_max_length=40)
    long_question = " ".join(["what colour is the circle ?"] * 8)
    with pytest.raises(ValueError, match=r"the prompt is \d+ tokens .* context is 40"):
        short(images=[images[7]], text=[prompt(long_question)])
    with pytest.raises(ValueError, match="has no '<img>' token"):
        DoveLlavaProcessor(image_processor=tower.image_processor, tokenizer=text_tokenizer(), image_token="<img>")


def test_processor_save_and_load(towers, images, tmp_path):
    processor = _processor(towers["query"])
    processor.save_pretrained(tmp_path)
    loaded = DoveLlavaProcessor.from_pretrained(tmp_path)
    assert loaded.tower is None and processor.tower is towers["query"]  # the tower is not saved
    assert (loaded.image_token, loaded.user_prefix, loaded.assistant_prefix) == ("<image>", "USER:", "ASSISTANT:")
    assert loaded.image_processor.size == 32 and loaded.chat_template == CHAT_TEMPLATE
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    loaded.attach_tower(towers["query"])
    text = [prompt(q) for q in QUESTIONS[:2]]
    a, b = processor(images=images[:2], text=text), loaded(images=images[:2], text=text)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["image_queries"] == b["image_queries"]


def test_text_tokenizer_and_chat_template():
    tokenizer = build_text_tokenizer(["What colour is the circle?", "red"], model_max_length=64)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    assert tokenizer.padding_side == "left" and tokenizer.model_max_length == 64
    ids = tokenizer("USER: <image>\nWhat colour is the CIRCLE? ASSISTANT: red</s>")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "user", ":", "<image>", "what", "colour", "is", "the",
                                                    "circle", "?", "assistant", ":", "red", "</s>"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("a zebra")["input_ids"])[1:] == ["<unk>", "<unk>"]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
                {"role": "assistant", "content": "red"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "USER: <image>\nWhat colour? ASSISTANT: red</s>"
    assert (tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
            == "USER: <image>\nWhat colour? ASSISTANT:")


def test_build_tiny_llava(towers):
    tokenizer = text_tokenizer(model_max_length=256)
    tower = towers["adaptive"]
    model = build_tiny_llava(tower, tokenizer, num_hidden_layers=3)
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (128, 3, 4)
    assert text.vocab_size == len(tokenizer) and text.max_position_embeddings == 256
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert model.model.vision_tower is tower and model.config.vision_config.model_type == "dove_vision_tower"
    assert model.model.multi_modal_projector.linear_1.in_features == tower.hidden_size
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="no <image> token"):
        build_tiny_llava(tower, build_word_tokenizer(["what colour"]))
