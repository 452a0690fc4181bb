"""Shared fixtures: tiny DOVE configs and models built locally (nothing is downloaded)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from dove_vlm import DoveModel, preset_config  # noqa: E402

MICRO_OVERRIDES = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
    max_tokens=16, token_dim=4,
)


@pytest.fixture
def micro_config():
    """A DoveConfig with the tiny VQGAN and very small transformers (fast enough for unit tests)."""
    return preset_config("tiny", **MICRO_OVERRIDES)


@pytest.fixture
def micro_model(micro_config):
    torch.manual_seed(0)
    return DoveModel(micro_config).eval()


@pytest.fixture
def images():
    """Four random images in [-1, 1] at the tiny preset's 32 px."""
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
