"""Continuous latents decode for any VQGAN config (aMUSEd's `lookup_from_codebook: True` included), the optional
gradient checkpointing of the frozen decoder, and the check that a pretrained VQGAN fits the preset."""

import pytest
import torch
from diffusers import VQModel

from dove_vlm import DoveModel, preset_config
from dove_vlm.presets import MICRO_AMUSED_VQGAN_CONFIG, PAPER_MICRO_OVERRIDES
from dove_vlm.pretrained import load_vqgan
from dove_vlm.vqgan import check_vqgan_config, decode_continuous, decoder_checkpointing, set_decoder_checkpointing


@pytest.fixture(scope="module")
def micro_paper():
    torch.manual_seed(0)
    return DoveModel(preset_config("paper", **PAPER_MICRO_OVERRIDES)).eval()


def test_lookup_from_codebook_vqgan_decodes_continuous_latents(micro_paper):
    vqgan = micro_paper.vqgan
    assert vqgan.config.lookup_from_codebook and micro_paper.config.downsample_factor == 16
    latents = torch.randn(2, 8, 4, 4)
    with pytest.raises(RuntimeError, match="indices"):  # what diffusers does with continuous latents here
        vqgan.decode(latents, force_not_quantize=True)
    plain = VQModel(**dict(MICRO_AMUSED_VQGAN_CONFIG, lookup_from_codebook=False)).eval()
    plain.load_state_dict(vqgan.state_dict())
    with torch.no_grad():
        expected = plain.decode(latents, force_not_quantize=True).sample
        torch.testing.assert_close(decode_continuous(vqgan, latents), expected)
        torch.testing.assert_close(micro_paper.latents_to_pixels(latents), expected)
        images = torch.rand(2, 3, 64, 64) * 2 - 1
        out = micro_paper(images)  # the training path: encode → tokens → decode
        assert out.reconstruction.shape == images.shape and torch.isfinite(out.reconstruction).all()
        enc = micro_paper.encode(images)
        assert micro_paper.decode(enc.tokens, enc.attention_mask).pixel_values.shape == images.shape


def test_decoder_checkpointing_gives_the_same_gradients(micro_paper):
    latents = torch.randn(2, 8, 4, 4, requires_grad=True)
    decode_continuous(micro_paper.vqgan, latents).square().mean().backward()
    plain = latents.grad.clone()
    latents.grad = None
    set_decoder_checkpointing(micro_paper.vqgan, True)
    try:
        assert decoder_checkpointing(micro_paper.vqgan) and not micro_paper.vqgan.encoder.gradient_checkpointing
        decode_continuous(micro_paper.vqgan, latents).square().mean().backward()
    finally:
        set_decoder_checkpointing(micro_paper.vqgan, False)
    torch.testing.assert_close(latents.grad, plain)
    assert not decoder_checkpointing(micro_paper.vqgan)


def test_vqgan_stage_trains_a_lookup_from_codebook_vqgan(tmp_path):
    from train_tokenizer.vqgan_stage import train_vqgan

    torch.manual_seed(0)
    vqgan = VQModel(**MICRO_AMUSED_VQGAN_CONFIG)
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    train_vqgan(vqgan, iter([{"pixels": pixels}]), tmp_path, steps=1, learning_rate=1e-3, seed=0,
                device=torch.device("cpu"))
    assert (tmp_path / "vqgan" / "config.json").is_file()


def test_vqgan_config_mismatch_names_the_keys(micro_paper, tmp_path):
    other = dict(MICRO_AMUSED_VQGAN_CONFIG, act_fn="relu")  # same weight shapes, another network
    VQModel(**other).save_pretrained(tmp_path / "vq")
    with pytest.raises(ValueError, match="act_fn: the VQGAN has 'relu', the preset 'silu'.*--model-overrides"):
        load_vqgan(micro_paper, tmp_path / "vq")
    # Keys DOVE does not read (scaling, sample size) do not matter.
    check_vqgan_config(dict(MICRO_AMUSED_VQGAN_CONFIG, scaling_factor=1.0, sample_size=512),
                       MICRO_AMUSED_VQGAN_CONFIG, "x")
