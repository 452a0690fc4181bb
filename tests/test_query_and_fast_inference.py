"""Q-DOVE queries and the fast inference paths (early exit, prefix cache, length knob): each must give what
the plain parallel pass gives."""

import pytest
import torch

from dove_vlm import DoveModel, preset_config
from dove_vlm.query_tokenizer import build_word_tokenizer, default_query_tokenizer
from tests.conftest import MICRO_OVERRIDES

ATOL = 1e-5


@pytest.fixture
def query_model():
    tokenizer = default_query_tokenizer(num_scenes=50)
    torch.manual_seed(0)
    model = DoveModel(preset_config("tiny", **MICRO_OVERRIDES, query_vocab_size=len(tokenizer), query_max_length=8))
    model.set_query_tokenizer(tokenizer)
    with torch.no_grad():  # spread p_eos so lengths vary across images and queries
        model.eos_head.weight.normal_(0, 2.0)
        model.eos_head.bias.fill_(-1.0)
    return model.eval()


def _same(a, b):
    assert torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.tokens, b.tokens, atol=ATOL, rtol=0)
    torch.testing.assert_close(a.p_eos[:, : b.p_eos.shape[1]], b.p_eos[:, : a.p_eos.shape[1]], atol=ATOL, rtol=0)


@torch.no_grad()
def test_null_queries_are_plain_dove(query_model, images):
    plain = query_model.encode(images)
    for null in (None, "", "   ", [None, "", " ", None]):
        _same(query_model.encode(images, queries=null), plain)


@torch.no_grad()
def test_queries_change_the_code_and_batching_matches_single_images(query_model, images):
    queries = ["the blue triangle", None, "what colour is the square?", "the red circle"]
    batched = query_model.encode(images, queries=queries)
    assert not torch.allclose(batched.p_eos[0], query_model.encode(images[:1]).p_eos[0])
    for i, query in enumerate(queries):
        single = query_model.encode(images[i : i + 1], queries=[query])
        assert batched.lengths[i] == single.lengths[0]
        torch.testing.assert_close(batched.tokens[i, : single.tokens.shape[1]], single.tokens[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(batched.p_eos[i], single.p_eos[0], atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 8, 100])
def test_early_exit_equals_the_full_pass(query_model, images, chunk_size):
    for queries in (None, ["the blue triangle", None, "the square", "is there a red cross?"]):
        full = query_model.encode(images, queries=queries)
        fast = query_model.encode(images, queries=queries, early_exit=True, chunk_size=chunk_size)
        _same(fast, full)
        assert fast.p_eos.shape[1] >= int(full.lengths.max())
    forced = query_model.encode(images, num_tokens=torch.tensor([2, 0, 16, 5]), early_exit=True, chunk_size=4)
    _same(forced, query_model.encode(images, num_tokens=torch.tensor([2, 0, 16, 5])))


@torch.no_grad()
def test_early_exit_stops_early_on_short_images(query_model, images):
    with torch.no_grad():
        query_model.eos_head.weight.zero_()
        query_model.eos_head.bias.fill_(5.0)  # every image ends at its first token
    fast = query_model.encode(images, early_exit=True, chunk_size=4)
    assert fast.p_eos.shape[1] == 4 and fast.lengths.tolist() == [1, 1, 1, 1]


@torch.no_grad()
def test_prefix_cache_equals_independent_encodes(query_model, images):
    queries = ["the blue triangle", None, "what colour is the square?", "the red circle", "", "the cross"]
    prefix = query_model.encode_prefix(images[:1])
    cached = query_model.encode(prefix=prefix, queries=queries)
    independent = query_model.encode(images[:1].expand(len(queries), -1, -1, -1), queries=queries)
    _same(cached, independent)
    again = query_model.encode(prefix=prefix, queries=queries, early_exit=True, chunk_size=3)  # prefix is reusable
    _same(again, independent)
    per_image = query_model.encode(prefix=query_model.encode_prefix(images), queries=queries[:4])
    _same(per_image, query_model.encode(images, queries=queries[:4]))
    with pytest.raises(ValueError, match="prefix holds 4 images but 6 queries"):
        query_model.encode(prefix=query_model.encode_prefix(images), queries=queries)
    with pytest.raises(ValueError, match="either pixel_values or prefix"):
        query_model.encode(images, prefix=prefix)


@torch.no_grad()
def test_length_knob(query_model, images):
    base = query_model.encode(images)
    lower = query_model.encode(images, eos_threshold=0.05)
    higher = query_model.encode(images, eos_threshold=0.95)
    assert (lower.lengths <= base.lengths).all() and (higher.lengths >= base.lengths).all()
    assert (query_model.encode(images, min_tokens=5).lengths >= 5).all()
    assert (query_model.encode(images, max_tokens=3).lengths <= 3).all()


@torch.no_grad()
@pytest.mark.parametrize("early_exit", [False, True])
def test_query_length_limits_apply_to_queried_images_only(query_model, images, early_exit):
    queries = ["the blue triangle", None, "what colour is the square?", "the red circle"]
    free = query_model.encode(images, queries=queries)
    query_model.config.query_min_tokens, query_model.config.query_max_tokens = 3, 5
    try:
        limited = query_model.encode(images, queries=queries, early_exit=early_exit, chunk_size=2)
        for i, query in enumerate(queries):
            single = query_model.encode(images[i : i + 1], queries=[query])
            assert limited.lengths[i] == single.lengths[0]  # a batch gives what single images give
        plain = query_model.encode(images, early_exit=early_exit)  # no query: the image limits
    finally:
        query_model.config.query_min_tokens = query_model.config.query_max_tokens = None
    expected = free.lengths.clone()
    expected[[0, 2, 3]] = free.lengths[[0, 2, 3]].clamp(3, 5)
    assert torch.equal(limited.lengths, expected)
    assert torch.equal(plain.lengths, query_model.encode(images).lengths)
    # per call: override the config's query limits; an explicit max_tokens caps them too
    capped = query_model.encode(images, queries=queries, query_min_tokens=4, query_max_tokens=4)
    assert capped.lengths[[0, 2, 3]].tolist() == [4, 4, 4] and capped.lengths[1] == free.lengths[1]
    assert (query_model.encode(images, queries=queries, query_min_tokens=6, max_tokens=2).lengths <= 2).all()


def test_bad_query_length_limits(query_model, images):
    with pytest.raises(ValueError, match="query_max_tokens must be in"):
        query_model.encode(images, queries="the square", query_max_tokens=0)
    with pytest.raises(ValueError, match="query_min_tokens .* <= query_max_tokens"):
        preset_config("tiny", **MICRO_OVERRIDES, query_min_tokens=6, query_max_tokens=4)
    with pytest.raises(ValueError, match="<= max_tokens"):
        preset_config("tiny", **MICRO_OVERRIDES, query_max_tokens=17)


def test_bad_queries(query_model, images):
    with pytest.raises(ValueError, match="got 3 queries for 4 images"):
        query_model.encode(images, queries=["a", "b", "c"])
    with pytest.raises(TypeError, match="query 1 is a int"):
        query_model.encode(images, queries=["a", 3, None, None])
    long_query = " ".join(["the red circle"] * 10)
    with pytest.warns(UserWarning, match="truncated to the query budget of 8"):
        out = query_model.encode(images[:1], queries=[long_query])
    with torch.no_grad():
        truncated = query_model.encode(images[:1], queries=[" ".join(long_query.split()[:8])])
    torch.testing.assert_close(out.p_eos, truncated.p_eos)
    unicode = query_model.encode(images[:1], queries=["le cercle rouge — 赤い丸 🔴"])  # unknown words → [UNK]
    assert 1 <= int(unicode.lengths[0]) <= query_model.config.max_tokens


def test_plain_model_refuses_queries(micro_model, images):
    assert micro_model.encode(images, queries=["", None, " ", None]).lengths.shape == (4,)
    with pytest.raises(ValueError, match="trained without text queries"):
        micro_model.encode(images, queries="the red circle")


def test_query_tokenizer_is_saved_and_loaded(query_model, images, tmp_path):
    query_model.save_pretrained(tmp_path)
    reloaded = DoveModel.from_pretrained(tmp_path).eval()
    assert reloaded.query_tokenizer is not None
    with torch.no_grad():
        _same(reloaded.encode(images, queries="the blue triangle"), query_model.encode(images, queries="the blue triangle"))


def test_tokenizer_must_fit_the_embedding(query_model):
    with pytest.raises(ValueError, match="larger query_vocab_size"):
        query_model.set_query_tokenizer(build_word_tokenizer([" ".join(f"w{i}" for i in range(100))]))


def test_chunk_schedule_covers_every_slot_once():
    from dove_vlm.modeling_dove import chunk_schedule

    assert chunk_schedule(256, None) == [64, 128, 64]  # a quarter first, then doubling, capped at the end
    assert chunk_schedule(32, None) == [8, 16, 8]
    assert chunk_schedule(10, 4) == [4, 4, 2]
    assert chunk_schedule(3, None) == [1, 2]
    for n in range(1, 70):
        assert sum(chunk_schedule(n, None)) == n and sum(chunk_schedule(n, 5)) == n


def test_encode_from_precomputed_latents_equals_encode_from_pixels(query_model, images):
    with torch.no_grad():
        from_pixels = query_model.encode(images, queries="the red circle")
        from_latents = query_model.encode(latents=from_pixels.latents, queries="the red circle")
    assert torch.equal(from_pixels.lengths, from_latents.lengths)
    torch.testing.assert_close(from_latents.tokens, from_pixels.tokens, rtol=0, atol=1e-6)
    # Per-image queries of different lengths: latents are grouped by query length like pixels, so each image
    # gets the bits it gets alone (batch invariance) and one VQGAN pass serves several queries.
    queries = [["the red circle", "the cross", None][i % 3] for i in range(len(images))]
    with torch.no_grad():
        mixed = query_model.encode(latents=from_pixels.latents, queries=queries)
        for i, query in enumerate(queries):
            alone = query_model.encode(images[i : i + 1], queries=[query])
            assert int(mixed.lengths[i]) == int(alone.lengths[0])
            assert torch.equal(mixed.tokens[i, : int(alone.lengths[0])], alone.tokens[0])
    with pytest.raises(ValueError, match="latents must have shape"):
        query_model.encode(latents=from_pixels.latents[:, :2])
    with torch.no_grad():  # pixels beside their latents: the latents are used (the VQGAN encoder is skipped)
        both = query_model.encode(images, latents=from_pixels.latents, queries="the red circle")
    assert torch.equal(both.lengths, from_pixels.lengths)
    with pytest.raises(ValueError, match="latents of 1"):
        query_model.encode(images, latents=from_pixels.latents[:1])
