"""FastV pruning in the language model: k = all visual tokens changes nothing, fewer tokens change the logits as
the pruned prompt does, answers do not depend on the batch, bad options are refused by name."""

import pytest
import torch

from dove_vlm.llava.fastv import FastVError, apply_fastv
from dove_vlm.llava.vqa import build_vqa_split, generate_answers
from tests.llava.tiny_models import make_llava, make_tower


@pytest.fixture(scope="module")
def grid_llava():
    tower = make_tower(mode="grid", query=False)
    tower.dove.set_latent_statistics(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    model, processor = make_llava(tower)
    return model, processor


@pytest.fixture(scope="module")
def records():
    return build_vqa_split("test", 3, seed=0)[:5]


def _logits(model, processor, records):
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    inputs = processor(images=[r["image"] for r in records], text=[f"USER: <image>\n{r['question']} ASSISTANT:"
                                                                  for r in records], return_tensors="pt", padding=True)
    inputs.pop("image_queries", None)
    with torch.no_grad():
        return model(**inputs).logits[:, -1]


def test_fastv_with_every_visual_token_equals_the_grid_model(grid_llava, records):
    model, processor = grid_llava
    plain = generate_answers(model, processor, records, batch_size=2, max_new_tokens=3)
    plain_logits = _logits(model, processor, records)
    hooks = apply_fastv(model, layer=1, tokens=64)
    try:
        assert generate_answers(model, processor, records, batch_size=2, max_new_tokens=3) == plain
        assert torch.equal(_logits(model, processor, records), plain_logits)
    finally:
        hooks.remove()


def test_fastv_prunes_and_is_batch_invariant(grid_llava, records):
    model, processor = grid_llava
    plain_logits = _logits(model, processor, records)
    hooks = apply_fastv(model, layer=1, tokens=4)
    try:
        pruned_logits = _logits(model, processor, records)
        assert not torch.allclose(pruned_logits, plain_logits)
        assert hooks.pruned is not None and hooks.pruned.sum(1).tolist() == [60] * len(records)
        one_by_one = generate_answers(model, processor, records, batch_size=1, max_new_tokens=3)
        batched = generate_answers(model, processor, records, batch_size=len(records), max_new_tokens=3)
        assert one_by_one == batched
        single = torch.cat([_logits(model, processor, [r]) for r in records])
        torch.testing.assert_close(single, pruned_logits, rtol=1e-4, atol=1e-5)
    finally:
        hooks.remove()
    torch.testing.assert_close(_logits(model, processor, records), plain_logits)  # hooks removed: back to normal


def test_fastv_is_the_same_under_eager_and_sdpa_attention(grid_llava, records):
    """The pruning is the same under sdpa (a boolean mask) and eager attention (an additive float mask)."""
    model, processor = grid_llava
    hooks = apply_fastv(model, layer=1, tokens=8)
    try:
        sdpa = _logits(model, processor, records)
        model.model.language_model.set_attn_implementation("eager")
        eager = _logits(model, processor, records)
    finally:
        model.model.language_model.set_attn_implementation("sdpa")
        hooks.remove()
    torch.testing.assert_close(sdpa, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer, tokens, message", [
    (0, 8, "fastv_layer=0"), (2, 8, "fastv_layer=2"), (1, 0, "fastv_tokens=0"), ("x", 8, "fastv_layer='x'"),
])
def test_bad_fastv_options_are_named(grid_llava, layer, tokens, message):
    with pytest.raises(FastVError, match=message):
        apply_fastv(grid_llava[0], layer, tokens)
