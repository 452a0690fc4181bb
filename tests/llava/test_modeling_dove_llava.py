"""DoveLlavaForConditionalGeneration: per-image variable-length features packed into the placeholders, query
threading through forward and generate, batching equals one-by-one, saving and loading, tower swaps."""

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from dove_vlm.llava import DoveLlavaConfig, DoveLlavaForConditionalGeneration, DoveLlavaProcessor
from tests.llava.tiny_models import QUESTIONS, make_llava, make_tower, pil_images, prompt


@pytest.fixture(scope="module")
def adaptive():
    """A tiny LLaVA on a plain DOVE tower whose lengths vary a lot between images (1..16)."""
    return make_llava(make_tower("adaptive", query=False))


@pytest.fixture(scope="module")
def query():
    """A tiny LLaVA on a Q-DOVE tower in query mode."""
    return make_llava(make_tower("query", query=True))


@pytest.fixture(scope="module")
def images():
    return pil_images()


class TowerSpy:
    """Records the queries every tower call receives."""

    def __init__(self, tower):
        self.tower, self.calls = tower, []
        self.original = tower.forward

    def __enter__(self):
        def spy(pixel_values, queries=None, **kwargs):
            self.calls.append(queries)
            return self.original(pixel_values, queries, **kwargs)

        self.tower.forward = spy
        return self

    def __exit__(self, *exc):
        del self.tower.forward


@torch.no_grad()
def test_image_features_are_per_image_and_packed(adaptive, images):
    model, processor = adaptive
    pil, pixels = images
    out = model.get_image_features(pixel_values=pixels)
    tower_out = model.model.vision_tower(pixels)
    assert len(set(tower_out.lengths.tolist())) > 2
    assert [f.shape for f in out.pooler_output] == [(int(n), 128) for n in tower_out.lengths]
    for feature, raw in zip(out.pooler_output, tower_out.features):
        torch.testing.assert_close(feature, model.model.multi_modal_projector(raw))
    assert torch.equal(out.lengths, tower_out.lengths)

    inputs = processor(images=pil[:3], text=[prompt(q) for q in QUESTIONS[:3]])
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    merged = model.model(**inputs, output_hidden_states=True).hidden_states[0]
    mask = inputs["input_ids"] == model.config.image_token_id
    torch.testing.assert_close(merged[mask], torch.cat(out.pooler_output[:3]))  # packed, in order
    torch.testing.assert_close(merged[~mask], embeds[~mask])  # text positions untouched


@torch.no_grad()
def test_placeholder_count_mismatch_names_both_counts(adaptive, images):
    model, processor = adaptive
    pil, pixels = images
    inputs = processor(images=pil[:2], text=[prompt(q) for q in QUESTIONS[:2]])
    lengths = inputs["image_lengths"].tolist()
    # One image's features for two images' placeholders.
    with pytest.raises(ValueError, match=rf"{sum(lengths)} image placeholder tokens but the images give {lengths[0]}"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"][:1])
    with pytest.raises(ValueError, match=r"expanded the images to \[.*\] tokens but the vision tower gives"):
        model(**{**inputs, "image_lengths": inputs["image_lengths"] + 1})


@torch.no_grad()
@pytest.mark.parametrize("which", ["adaptive", "query"])
def test_batched_generate_equals_one_by_one(adaptive, query, images, which):
    model, processor = adaptive if which == "adaptive" else query
    pil, _ = images
    picks = [0, 3, 5, 6]  # mixed lengths, e.g. 1, 8 and 16 tokens
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(picks))]
    batch = processor(images=[pil[i] for i in picks], text=[prompt(q) for q in questions])
    assert len(set(batch["image_lengths"].tolist())) > 1
    generated = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1]:]
    logits = model(**batch).logits[:, -1]
    for row, (i, question) in enumerate(zip(picks, questions)):
        single = processor(images=[pil[i]], text=[prompt(question)])
        assert single["image_lengths"][0] == batch["image_lengths"][row]
        alone = model.generate(**single, max_new_tokens=4, do_sample=False)[:, single["input_ids"].shape[1]:]
        eos = model.generation_config.eos_token_id
        assert _until_eos(generated[row], eos) == _until_eos(alone[0], eos)
        torch.testing.assert_close(logits[row], model(**single).logits[0, -1], atol=1e-4, rtol=1e-4)


def _until_eos(tokens: torch.Tensor, eos: int) -> list[int]:
    out = tokens.tolist()
    return out[: out.index(eos) + 1] if eos in out else out  # a finished row is padded in a batch


@torch.no_grad()
def test_queries_reach_the_tower_in_forward_and_generate_prefill_only(query, images):
    model, processor = query
    pil, _ = images
    texts = [prompt(QUESTIONS[0]), "USER: <image>\n ASSISTANT:"]
    tower = model.model.vision_tower
    with TowerSpy(tower) as spy:
        inputs = processor(images=pil[:2], text=texts)
        assert inputs["image_queries"] == [QUESTIONS[0], None]  # the user's turn; no question → null query
        model(**inputs)
        assert spy.calls == [[QUESTIONS[0], None]]  # once: the processor's pass, reused by the model
    with TowerSpy(tower) as spy:
        model.generate(**processor(images=pil[:2], text=texts), max_new_tokens=3, do_sample=False)
        assert spy.calls == [[QUESTIONS[0], None]]  # once per image per generate (not again after the prefill)
    without = {k: v for k, v in inputs.items() if k != "tower_outputs"}
    with TowerSpy(tower) as spy:  # without the processor's pass the model runs the tower itself, with the queries
        model(**without)
        assert spy.calls == [[QUESTIONS[0], None]]
    with TowerSpy(tower) as spy:
        model.generate(**without, max_new_tokens=3, do_sample=False)
        assert spy.calls == [[QUESTIONS[0], None]]  # once: the prefill


@torch.no_grad()
@pytest.mark.parametrize("which", ["adaptive", "query"])
def test_processor_and_generate_run_the_tower_once_per_image(adaptive, query, images, which):
    model, processor = adaptive if which == "adaptive" else query
    pil, _ = images
    texts = [prompt(q) for q in QUESTIONS[:3]]
    seen = []
    hook = model.model.vision_tower.register_forward_hook(lambda module, args, out: seen.append(out.lengths.numel()))
    try:
        inputs = processor(images=pil[:3], text=texts)
        reused = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert seen == [3]  # the processor's pass only
        seen.clear()
        again = model.generate(**{k: v for k, v in inputs.items() if k != "tower_outputs"}, max_new_tokens=3,
                               do_sample=False)
        assert seen == [3]  # without it, the model's own pass
    finally:
        hook.remove()
    assert torch.equal(reused, again)
    with pytest.raises(ValueError, match="tower_outputs hold 3 images but pixel_values 2"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][:2]})


@torch.no_grad()
def test_changing_the_question_can_change_the_count(query, images):
    model, processor = query
    pil, _ = images
    counts = {q: processor(images=pil[:1], text=[prompt(q)])["image_lengths"].item() for q in QUESTIONS[:2]}
    assert len(set(counts.values())) == 2
    for question, count in counts.items():  # the model agrees with the processor's count
        inputs = processor(images=pil[:1], text=[prompt(question)])
        assert (inputs["input_ids"] == model.config.image_token_id).sum() == count
        model(**inputs)


def test_training_step_reaches_projector_and_lm_not_tower(query, images):
    model, processor = query
    pil, _ = images
    inputs = processor(images=pil[:2], text=[prompt(q) + " red </s>" for q in QUESTIONS[:2]])
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    model.train()
    try:
        loss = model(**inputs, labels=labels).loss
        loss.backward()
    finally:
        model.eval()
    assert torch.isfinite(loss)
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.model.vision_tower.parameters())
    assert not model.model.vision_tower.dove.training
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_save_and_load_round_trip(query, images, tmp_path):
    model, processor = query
    pil, _ = images
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "dove_llava"
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, DoveLlavaForConditionalGeneration) and isinstance(loaded_processor, DoveLlavaProcessor)
    tower = loaded.model.vision_tower
    assert tower.config.mode == "query" and tower.query_tokenizer is not None
    assert not any(p.requires_grad for p in tower.parameters())
    loaded_processor.attach_tower(tower)
    text = [prompt(q) for q in QUESTIONS[:3]]
    a, b = processor(images=pil[:3], text=text), loaded_processor(images=pil[:3], text=text)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["image_queries"] == b["image_queries"]
    torch.testing.assert_close(model(**a).logits, loaded(**b).logits, atol=0, rtol=0)
    assert torch.equal(model.generate(**a, max_new_tokens=3, do_sample=False),
                       loaded.generate(**b, max_new_tokens=3, do_sample=False))
    again = DoveLlavaForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(again(**a).logits, model(**a).logits, atol=0, rtol=0)


def _llava_15_like():
    """A llava-1.5 shaped checkpoint (CLIP tower, Llama), at micro size."""
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4),
        image_token_id=39,
    )
    return LlavaForConditionalGeneration(config).eval()


@torch.no_grad()
def test_llava_15_checkpoint_loads_then_takes_a_dove_tower(tmp_path):
    reference = _llava_15_like()
    reference.save_pretrained(tmp_path)
    model = DoveLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(model.config, DoveLlavaConfig) and model.config.vision_config.model_type == "clip_vision_model"
    ids = torch.tensor([[1, 2] + [39] * 16 + [3, 4]])  # (32/8)^2 patches (the CLS token is dropped: "default")
    pixels = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(input_ids=ids, pixel_values=pixels).logits,
                               reference(input_ids=ids, pixel_values=pixels).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="need a Q-DOVE vision tower"):
        model(input_ids=ids, pixel_values=pixels, image_queries=["what colour?"])

    language_model = model.model.language_model.layers[0].mlp.up_proj.weight.clone()
    tower = make_tower("fixed", query=False, num_tokens=3)
    model.set_vision_tower(tower)
    assert model.model.vision_tower is tower and model.config.vision_config.model_type == "dove_vision_tower"
    assert model.model.multi_modal_projector.linear_1.in_features == tower.hidden_size  # rebuilt: 32 → 4
    assert torch.equal(model.model.language_model.layers[0].mlp.up_proj.weight, language_model)
    out = model(input_ids=torch.tensor([[1, 2] + [39] * 3 + [3]]), pixel_values=torch.rand(1, 3, 32, 32) * 2 - 1)
    assert out.logits.shape == (1, 6, 40)

    projector = model.model.multi_modal_projector
    model.set_vision_tower(make_tower("adaptive", query=False))  # same width (4): the projector is kept
    assert model.model.multi_modal_projector is projector
    model.save_pretrained(tmp_path / "swapped")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "swapped")
    assert isinstance(loaded, DoveLlavaForConditionalGeneration) and loaded.model.vision_tower.config.mode == "adaptive"


@torch.no_grad()
def test_context_overflow_is_a_clear_error(adaptive):
    model, _ = adaptive
    limit = model.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match=rf"the sequence is {limit + 1} tokens .* context is {limit}"):
        model(input_ids=torch.ones(1, limit + 1, dtype=torch.long))
