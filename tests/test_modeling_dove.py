import pytest
import torch

from dove_vlm import DoveConfig, DoveModel, preset_config
from dove_vlm.modeling_dove import lengths_from_p_eos, length_mask


def test_encode_shapes_and_masking(micro_model, images):
    with torch.no_grad():
        enc = micro_model.encode(images)
    n = micro_model.config.max_tokens
    assert enc.p_eos.shape == (4, n)
    assert enc.tokens.shape[0] == 4 and enc.tokens.shape[2] == micro_model.config.token_dim
    assert enc.tokens.shape[1] == int(enc.lengths.max())
    assert ((enc.lengths >= 1) & (enc.lengths <= n)).all()
    assert torch.equal(enc.attention_mask.sum(1), enc.lengths)
    # everything after each image's end is zero
    assert (enc.tokens[enc.attention_mask == 0] == 0).all()


def test_lengths_first_crossing_and_clamps():
    p = torch.tensor([[0.1, 0.7, 0.9, 0.2], [0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0.1, 0.1]])
    assert lengths_from_p_eos(p, 0.5).tolist() == [2, 4, 1]
    assert lengths_from_p_eos(p, 0.5, min_tokens=2).tolist() == [2, 4, 2]
    assert lengths_from_p_eos(p, 0.5, max_tokens=3).tolist() == [2, 3, 1]
    assert lengths_from_p_eos(p, 0.8).tolist() == [3, 4, 1]
    assert length_mask(torch.tensor([1, 3]), 4).tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]


def test_forced_lengths_and_max_tokens(micro_model, images):
    with torch.no_grad():
        enc = micro_model.encode(images, num_tokens=5)
        assert enc.lengths.tolist() == [5, 5, 5, 5]
        mixed = micro_model.encode(images, num_tokens=torch.tensor([0, 3, 0, 7]))
        adaptive = micro_model.encode(images)
        assert mixed.lengths[1] == 3 and mixed.lengths[3] == 7
        assert mixed.lengths[0] == adaptive.lengths[0]
        capped = micro_model.encode(images, max_tokens=6)
        assert capped.p_eos.shape[1] == 6 and int(capped.lengths.max()) <= 6
    with pytest.raises(ValueError, match="max_tokens"):
        micro_model.encode(images, max_tokens=999)


def test_causal_property(micro_model, images):
    """Token i never depends on later timesteps: perturbing timestep j > i leaves tokens ≤ i unchanged."""
    model = micro_model
    n = model.config.max_tokens
    with torch.no_grad():
        latents = model.encode_latents(images)
        prefix = model._visual_prefix(latents)
        steps = model._timesteps(4, n).clone()
        base = model.generator(inputs_embeds=torch.cat([prefix, steps], 1)).last_hidden_state[:, -n:]
        j = n // 2
        steps[:, j:] += torch.randn_like(steps[:, j:])
        changed = model.generator(inputs_embeds=torch.cat([prefix, steps], 1)).last_hidden_state[:, -n:]
    torch.testing.assert_close(model.token_head(base[:, :j]), model.token_head(changed[:, :j]), atol=1e-6, rtol=0)
    assert not torch.allclose(base[:, j:], changed[:, j:])


def test_truncation_equals_prefix_of_full_pass(micro_model, images):
    with torch.no_grad():
        full = micro_model.encode(images, num_tokens=micro_model.config.max_tokens)
        short = micro_model.encode(images, num_tokens=4)
    torch.testing.assert_close(short.tokens, full.tokens[:, :4], atol=1e-6, rtol=0)


def test_decode_range_and_masking(micro_model, images):
    with torch.no_grad():
        enc = micro_model.encode(images, num_tokens=6)
        out = micro_model.decode(enc.tokens, enc.attention_mask)
        assert out.pixel_values.shape == images.shape
        assert out.pixel_values.min() >= -1 and out.pixel_values.max() <= 1
        # values behind the mask do not matter
        noisy = enc.tokens.clone()
        mask = enc.attention_mask.clone()
        mask[:, 3:] = 0
        noisy[:, 3:] = 123.0
        a = micro_model.decode(noisy, mask).pixel_values
        b = micro_model.decode(enc.tokens[:, :3], mask[:, :3]).pixel_values
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_batch_equals_single(micro_model, images):
    with torch.no_grad():
        batch = micro_model.encode(images)
        for i in range(images.shape[0]):
            single = micro_model.encode(images[i : i + 1])
            assert single.lengths[0] == batch.lengths[i]
            m = int(single.lengths[0])
            torch.testing.assert_close(single.tokens[0, :m], batch.tokens[i, :m], atol=1e-5, rtol=0)


def test_deterministic_init_and_encode(micro_config, images):
    torch.manual_seed(1)
    a = DoveModel(micro_config).eval()
    torch.manual_seed(1)
    b = DoveModel(micro_config).eval()
    with torch.no_grad():
        assert torch.equal(a.encode(images).tokens, b.encode(images).tokens)
        assert torch.equal(a.encode(images).tokens, a.encode(images).tokens)


def test_save_load_identical_tokens(micro_model, images, tmp_path):
    micro_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    from transformers import AutoConfig, AutoModel

    assert isinstance(AutoConfig.from_pretrained(tmp_path), DoveConfig)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, DoveModel)
    with torch.no_grad():
        a, b = micro_model.encode(images), reloaded.encode(images)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)


def test_vqgan_frozen_and_trainable_rest(micro_model, images):
    micro_model.train()
    assert not micro_model.vqgan.training
    assert not any(p.requires_grad for p in micro_model.vqgan.parameters())
    out = micro_model(images)
    out.reconstruction.pow(2).mean().backward()
    assert micro_model.token_head.weight.grad is not None
    assert micro_model.token_decoder.latent_out.weight.grad is not None


@pytest.mark.parametrize(
    "shape, match",
    [((4, 3, 16, 16), "32x32"), ((4, 1, 32, 32), "shape"), ((3, 32, 32), "shape")],
)
def test_wrong_pixel_shapes(micro_model, shape, match):
    with pytest.raises(ValueError, match=match):
        micro_model.encode(torch.zeros(shape))


def test_nan_pixels_rejected(micro_model, images):
    images = images.clone()
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        micro_model.encode(images)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple"):
        preset_config("tiny", image_size=30)
    with pytest.raises(ValueError, match="min_tokens"):
        preset_config("tiny", min_tokens=0)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")
    paper = preset_config("paper")
    assert paper.latent_size == 16 and paper.latent_channels == 64 and paper.max_tokens == 256
    assert paper.vqgan_config["num_vq_embeddings"] == 8192 and paper.downsample_factor == 16


@pytest.mark.parametrize("case", ["missing", "no_config", "truncated", "bad_json", "no_weights", "other_config",
                                  "bad_header", "nan_weights"])
def test_bad_checkpoints_give_clear_errors(micro_model, micro_config, tmp_path, case):
    path = tmp_path / "ckpt"
    micro_model.save_pretrained(path)
    weights = path / "model.safetensors"
    if case == "missing":
        path = tmp_path / "nowhere"
    elif case == "no_config":
        (path / "config.json").unlink()
    elif case == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "bad_json":
        (path / "config.json").write_text("{not json")
    elif case == "no_weights":
        weights.unlink()
    elif case == "other_config":
        micro_config.max_tokens = 8
        micro_config.save_pretrained(path)
    elif case == "bad_header":
        data = bytearray(weights.read_bytes())
        data[20:30] = b"##########"
        weights.write_bytes(bytes(data))
    elif case == "nan_weights":
        data = bytearray(weights.read_bytes())
        data[-64:] = b"\xff" * 64
        weights.write_bytes(bytes(data))
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        DoveModel.from_pretrained(path)
    assert str(path.name) in str(info.value) or "nowhere" in str(info.value)


def test_latent_statistics_normalise_and_survive_save_load(micro_model, images, tmp_path):
    micro_model.set_latent_statistics(images)
    config = micro_model.config
    assert len(config.latent_mean) == len(config.latent_std) == config.latent_channels
    latents = micro_model.encode_latents(images)
    mean, std = micro_model._latent_statistics(latents)
    normalised = (latents - mean) / std
    assert normalised.mean((0, 2, 3)).abs().max() < 1e-4
    assert (normalised.std((0, 2, 3)) - 1).abs().max() < 1e-3
    # With the decoder's output zeroed, the predicted latents are exactly the measured mean.
    with torch.no_grad():
        micro_model.token_decoder.latent_out.weight.zero_()
        micro_model.token_decoder.latent_out.bias.zero_()
        enc = micro_model.encode(images)
        predicted = micro_model.decode_latents(enc.tokens, enc.attention_mask)
    torch.testing.assert_close(predicted, mean.expand_as(predicted))
    micro_model.save_pretrained(tmp_path)
    reloaded = DoveModel.from_pretrained(tmp_path)
    assert reloaded.config.latent_mean == pytest.approx(config.latent_mean)
    assert reloaded.config.latent_std == pytest.approx(config.latent_std)


def test_latent_statistics_must_match_channels(micro_config):
    with pytest.raises(ValueError, match="latent_mean has 2 entries"):
        type(micro_config)(**{**micro_config.to_dict(), "latent_mean": [0.0, 1.0]})
    with pytest.raises(ValueError, match="latent_std must be positive"):
        type(micro_config)(**{**micro_config.to_dict(), "latent_std": [0.0] * micro_config.latent_channels})


def test_reloaded_model_keeps_the_vqgan_frozen(micro_model, tmp_path):
    micro_model.save_pretrained(tmp_path)
    reloaded = DoveModel.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in reloaded.vqgan.parameters())
    assert all(p.requires_grad for p in reloaded.generator.parameters())


def test_pixel_dtypes(micro_model, images):
    with torch.no_grad():
        reference = micro_model.encode(images)
        for dtype in (torch.float64, torch.float16, torch.bfloat16):
            assert micro_model.encode(images.to(dtype)).tokens.dtype == torch.float32
        torch.testing.assert_close(micro_model.encode(images.double()).tokens, reference.tokens, rtol=0, atol=0)
    with pytest.raises(TypeError, match="floating point"):
        micro_model.encode(((images + 1) * 127.5).to(torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        micro_model.encode(images.numpy())
    with pytest.raises(ValueError, match="no images"):
        micro_model.encode(images[:0])
    with pytest.raises(ValueError, match="NaN or Inf"):
        micro_model.encode(torch.full_like(images, 1e39, dtype=torch.float64))  # overflows float32


def test_num_tokens_must_fit_the_batch(micro_model, images):
    with pytest.raises(ValueError, match="num_tokens must be an int or 4 ints"):
        micro_model.encode(images, num_tokens=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="num_tokens"):
        micro_model.encode(images, num_tokens=2.5)
    assert micro_model.encode(images, num_tokens=torch.tensor(3)).lengths.tolist() == [3] * 4


def test_pixel_detail_map_follows_texture_not_colour():
    from dove_vlm.modeling_dove_blocks import pixel_detail_map

    flat_red = torch.zeros(1, 3, 32, 32)
    flat_red[:, 0] = 0.8
    flat_grey = torch.full((1, 3, 32, 32), -0.3)
    texture = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    half = flat_grey.clone()
    half[..., 16:] = texture[..., 16:]  # texture in the right half only
    maps = pixel_detail_map(torch.cat([flat_red, flat_grey, texture, half]), 4)
    assert maps.shape == (4, 1, 4, 4)
    torch.testing.assert_close(maps[0], maps[1])  # a flat image is flat, whatever its colour
    assert (maps[2] > maps[0] + 1.0).all()  # texture stands well above flat
    assert (maps[3][..., 3] > maps[3][..., 0] + 1.0).all()  # and the map says where it is


def test_pixel_detail_model(micro_config, images, tmp_path):
    micro_config.pixel_detail = True
    torch.manual_seed(0)
    model = DoveModel(micro_config).eval()
    with torch.no_grad():
        enc = model.encode(images)
        latents = model.encode_latents(images)
        both = model.encode(images, latents=latents)  # precomputed latents still need the pixels' detail
        assert torch.equal(both.tokens, enc.tokens) and torch.equal(both.lengths, enc.lengths)
        for i in range(len(images)):  # batch invariant like the plain model
            alone = model.encode(images[i : i + 1])
            assert torch.equal(alone.lengths[0], enc.lengths[i])
        prefix = model.encode(prefix=model.encode_prefix(images))  # the prefix cache carries the detail too
        torch.testing.assert_close(prefix.p_eos, enc.p_eos, rtol=0, atol=1e-5)
        # The detail reaches the EOS head: other pixels with the same latents give other p_eos.
        other = model.encode(torch.zeros_like(images), latents=latents)
        assert not torch.allclose(other.p_eos, enc.p_eos)
    with pytest.raises(ValueError, match="pixel detail"):
        model.encode(latents=latents)
    out = model.train()(images, latents=latents)  # the training path: cached latents plus the pixels
    (out.reconstruction.pow(2).mean() + out.p_eos.mean()).backward()
    assert model.detail_in.weight.grad.abs().sum() > 0
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = DoveModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.pixel_detail and reloaded.detail_in is not None
    with torch.no_grad():
        assert torch.equal(reloaded.encode(images).tokens, enc.tokens)
