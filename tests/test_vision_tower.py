"""DoveVisionTower: every mode gives what DoveModel gives, per image; early exit, freezing, saving and loading,
and clear errors."""

import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from dove_vlm import DoveVisionTower, DoveVisionTowerConfig
from tests.llava.tiny_models import QUESTIONS, make_tower, spread_dove, varied_images

ATOL = 1e-5


@pytest.fixture(scope="module")
def dove():
    return spread_dove(query=False)


@pytest.fixture(scope="module")
def qdove():
    return spread_dove(query=True)


@pytest.fixture(scope="module")
def images():
    return varied_images()


def _check_packing(out, width):
    assert out.last_hidden_state.shape == (len(out.lengths), int(out.lengths.max()), width)
    assert torch.equal(out.attention_mask.sum(1), out.lengths)
    assert len(out.features) == len(out.lengths)
    for i, feature in enumerate(out.features):
        assert feature.shape == (int(out.lengths[i]), width)
        torch.testing.assert_close(feature, out.last_hidden_state[i, : len(feature)])
        assert not out.last_hidden_state[i, len(feature):].any()  # zero after the image's length


@torch.no_grad()
def test_adaptive_mode_equals_dove_encode(dove, images):
    tower = make_tower("adaptive", dove=dove)
    out, ref = tower(images), dove.encode(images)
    assert torch.equal(out.lengths, ref.lengths) and len(set(out.lengths.tolist())) > 2
    _check_packing(out, dove.config.token_dim)
    torch.testing.assert_close(out.last_hidden_state, ref.tokens, atol=ATOL, rtol=0)
    assert torch.equal(tower.num_image_tokens(images), out.lengths)
    assert tower.hidden_size == dove.config.token_dim and tower.max_tokens == dove.config.max_tokens
    assert not tower.supports_queries


@torch.no_grad()
def test_fixed_mode_truncates_to_k(dove, images):
    tower = make_tower("fixed", dove=dove, num_tokens=5)
    out = tower(images)
    assert out.lengths.tolist() == [5] * len(images) and tower.max_tokens == 5
    _check_packing(out, dove.config.token_dim)
    ref = dove.encode(images, num_tokens=5)
    torch.testing.assert_close(out.last_hidden_state, ref.tokens, atol=ATOL, rtol=0)
    assert torch.equal(tower.num_image_tokens(images), out.lengths)


@torch.no_grad()
def test_grid_mode_gives_normalised_latents(images):
    model = spread_dove(query=False)
    channels = model.config.latent_channels
    model.config.latent_mean = [0.1 * c for c in range(channels)]
    model.config.latent_std = [1.0 + 0.5 * c for c in range(channels)]
    tower = make_tower("grid", dove=model)
    out = tower(images)
    positions = model.config.num_latent_positions
    assert out.lengths.tolist() == [positions] * len(images)
    assert tower.hidden_size == channels and tower.max_tokens == positions
    _check_packing(out, channels)
    latents = model.encode_latents(images)
    mean, std = torch.tensor(model.config.latent_mean), torch.tensor(model.config.latent_std)
    expected = ((latents - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.last_hidden_state, expected)
    assert torch.equal(tower.num_image_tokens(images), out.lengths)


@torch.no_grad()
def test_hidden_feature_is_the_generator_state_at_kept_slots(dove, images):
    tower = make_tower("adaptive", dove=dove, feature="hidden")
    out = tower(images)
    assert tower.hidden_size == dove.config.hidden_size
    _check_packing(out, dove.config.hidden_size)
    hidden = dove._run_generator(dove.encode_latents(images), None, None, dove.config.max_tokens)
    ref = dove.encode(images)
    assert ref.hidden_states is None  # only on request
    assert torch.equal(out.lengths, ref.lengths)
    for i, feature in enumerate(out.features):
        torch.testing.assert_close(feature, hidden[i, : len(feature)], atol=ATOL, rtol=0)
        torch.testing.assert_close(dove.token_head(feature), ref.tokens[i, : len(feature)], atol=ATOL, rtol=0)


@torch.no_grad()
def test_query_mode_threads_the_question(qdove, images):
    tower = make_tower("query", dove=qdove)
    assert tower.supports_queries
    null = tower(images)
    adaptive = make_tower("adaptive", dove=qdove)(images)
    assert torch.equal(null.lengths, adaptive.lengths)  # query-null == adaptive on the same Q-DOVE model
    torch.testing.assert_close(null.last_hidden_state, adaptive.last_hidden_state, atol=ATOL, rtol=0)
    queries = [QUESTIONS[i % 2] if i % 3 else None for i in range(len(images))]
    out = tower(images, queries=queries)
    ref = qdove.encode(images, queries=queries)
    assert torch.equal(out.lengths, ref.lengths)
    torch.testing.assert_close(out.last_hidden_state, ref.tokens, atol=ATOL, rtol=0)
    assert torch.equal(tower.num_image_tokens(images, queries), out.lengths)
    first, second = tower(images, queries=QUESTIONS[0]).lengths, tower(images, queries=QUESTIONS[1]).lengths
    assert not torch.equal(first, second)  # the question changes the count


@torch.no_grad()
def test_query_length_limits_of_the_tower(qdove, images, tmp_path):
    """The tower's own query limits bound every queried image (null-query images keep their DOVE length), equal
    `encode`'s per-call limits, survive save/load, and bad limits are clear errors."""
    queries = [QUESTIONS[i % 2] if i % 3 else None for i in range(len(images))]
    tower = make_tower("query", dove=qdove, query_min_tokens=5, query_max_tokens=7)
    out = tower(images, queries=queries)
    ref = qdove.encode(images, queries=queries, query_min_tokens=5, query_max_tokens=7)
    assert torch.equal(out.lengths, ref.lengths)
    asked = torch.tensor([q is not None for q in queries])
    assert ((out.lengths[asked] >= 5) & (out.lengths[asked] <= 7)).all()
    assert torch.equal(out.lengths[~asked], make_tower("adaptive", dove=qdove)(images).lengths[~asked])
    tower.save_pretrained(tmp_path / "tower")
    loaded = DoveVisionTower.from_pretrained(tmp_path / "tower")
    assert torch.equal(loaded(images, queries=queries).lengths, out.lengths)
    assert (loaded.config.query_min_tokens, loaded.config.query_max_tokens) == (5, 7)
    with pytest.raises(ValueError, match="query_min_tokens .* <= query_max_tokens"):
        make_tower("query", dove=qdove, query_min_tokens=8, query_max_tokens=7)
    with pytest.raises(ValueError, match="query_max_tokens must be in"):
        make_tower("query", dove=qdove, query_max_tokens=qdove.config.max_tokens + 1)


@torch.no_grad()
@pytest.mark.parametrize("mode,kwargs", [("adaptive", {}), ("query", {}), ("fixed", {"num_tokens": 6}),
                                         ("adaptive", {"feature": "hidden"})])
def test_early_exit_equals_the_full_pass(qdove, images, mode, kwargs):
    queries = QUESTIONS[0] if mode == "query" else None
    fast = make_tower(mode, dove=qdove, early_exit=True, chunk_size=3, **kwargs)(images, queries)
    full = make_tower(mode, dove=qdove, early_exit=False, **kwargs)(images, queries)
    assert torch.equal(fast.lengths, full.lengths)
    torch.testing.assert_close(fast.last_hidden_state, full.last_hidden_state, atol=ATOL, rtol=0)


def test_tower_is_frozen_and_stays_in_eval_mode(dove, images):
    tower = make_tower("adaptive", dove=dove)
    assert not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert tower.training and not tower.dove.training and not tower.dove.vqgan.training
    out = tower(images[:2])
    assert not out.last_hidden_state.requires_grad


@torch.no_grad()
def test_save_and_load_tower_folder(qdove, images, tmp_path):
    tower = make_tower("query", dove=qdove, eos_threshold=0.4)
    tower.save_pretrained(tmp_path / "tower")
    for loaded in (DoveVisionTower.from_pretrained(tmp_path / "tower"), AutoModel.from_pretrained(tmp_path / "tower")):
        assert isinstance(loaded, DoveVisionTower) and loaded.config.mode == "query"
        assert loaded.config.eos_threshold == 0.4 and loaded.query_tokenizer is not None
        assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.dove.training
        for queries in (None, QUESTIONS[1]):
            a, b = tower(images, queries), loaded(images, queries)
            assert torch.equal(a.lengths, b.lengths)
            assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "tower"), DoveVisionTowerConfig)
    assert AutoImageProcessor.from_pretrained(tmp_path / "tower").size == 32
    fixed = DoveVisionTower.from_pretrained(tmp_path / "tower", mode="fixed", num_tokens=3)
    assert fixed.config.mode == "fixed" and fixed(images).lengths.tolist() == [3] * len(images)


@torch.no_grad()
def test_load_plain_dove_checkpoint_with_overrides(dove, images, tmp_path):
    dove.save_pretrained(tmp_path / "dove")
    tower = DoveVisionTower.from_pretrained(tmp_path / "dove")
    assert tower.config.mode == "adaptive"
    assert torch.equal(tower(images).lengths, dove.encode(images).lengths)
    grid = DoveVisionTower.from_pretrained(tmp_path / "dove", mode="grid")
    assert grid(images).lengths.tolist() == [dove.config.num_latent_positions] * len(images)
    hidden = DoveVisionTower.from_pretrained(tmp_path / "dove", feature="hidden", max_tokens=4)
    assert hidden.hidden_size == dove.config.hidden_size and int(hidden(images).lengths.max()) <= 4
    assert not any(p.requires_grad for p in hidden.parameters())


def test_clear_errors(dove, qdove, images, tmp_path):
    with pytest.raises(ValueError, match="unknown tower mode"):
        DoveVisionTowerConfig(dove_config=dove.config, mode="bogus")
    with pytest.raises(ValueError, match="needs num_tokens"):
        DoveVisionTowerConfig(dove_config=dove.config, mode="fixed")
    with pytest.raises(ValueError, match=r"num_tokens must be in \[1, 16\]"):
        DoveVisionTowerConfig(dove_config=dove.config, mode="fixed", num_tokens=17)
    with pytest.raises(ValueError, match="needs a Q-DOVE model"):
        DoveVisionTowerConfig(dove_config=dove.config, mode="query")
    with pytest.raises(ValueError, match="unknown feature"):
        DoveVisionTowerConfig(dove_config=dove.config, feature="logits")
    dove.save_pretrained(tmp_path / "dove")
    with pytest.raises(ValueError, match="needs a Q-DOVE model"):
        DoveVisionTower.from_pretrained(tmp_path / "dove", mode="query")
    make_tower("adaptive", dove=dove).save_pretrained(tmp_path / "tower")
    with pytest.raises(ValueError, match="needs num_tokens"):
        DoveVisionTower.from_pretrained(tmp_path / "tower", mode="fixed")
    with pytest.raises(FileNotFoundError):
        DoveVisionTower.from_pretrained(tmp_path / "missing")
    tower = make_tower("adaptive", dove=qdove)
    for bad in (images[0], images[:, :, :16], images[:, :1], images.reshape(8, 3, 16, 64)):
        with pytest.raises(ValueError, match="pixel_values must have shape"):
            tower(bad)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        tower(images.numpy())
    with pytest.raises(ValueError, match="ignores text queries"):
        tower(images, queries=QUESTIONS[0])
    assert torch.equal(tower(images, queries=[None] * 8).lengths, tower(images).lengths)  # null queries are fine
    with pytest.raises(ValueError, match="got 2 queries for 8 images"):
        make_tower("query", dove=qdove)(images, queries=QUESTIONS[:2])



def test_pickled_weights_are_never_loaded(dove, tmp_path):
    """A tower folder whose weights come only as a pickle (`pytorch_model.bin`) is refused, not unpickled."""
    from safetensors.torch import load_file

    folder = tmp_path / "tower"
    make_tower("adaptive", dove=dove).save_pretrained(folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(OSError, match="safetensors"):
        DoveVisionTower.from_pretrained(folder)
