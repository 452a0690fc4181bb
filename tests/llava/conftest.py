"""Tiny DOVE / Q-DOVE checkpoints and a tiny base LLaVA, built locally once per test session (nothing downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tests.llava.tiny_models import spread_dove

# A micro text model: fast enough to train a few steps per test.
MICRO_LLAVA = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   num_train_scenes=24, eval_scenes=6, eval_questions_per_scene=2, batch_size=8, eval_batch_size=8,
                   checkpoint_every=2, log_every=1)


def _save(model, path):
    model.set_latent_statistics(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def dove_dir(tmp_path_factory):
    """A micro plain DOVE checkpoint (random weights, rescaled so that adaptive lengths vary between images)."""
    return _save(spread_dove(query=False), tmp_path_factory.mktemp("dove"))


@pytest.fixture(scope="session")
def qdove_dir(tmp_path_factory):
    """A micro Q-DOVE checkpoint whose lengths vary with the image and the question."""
    return _save(spread_dove(query=True), tmp_path_factory.mktemp("qdove"))


@pytest.fixture(scope="session")
def base_dir(dove_dir, tmp_path_factory):
    """A micro base LLaVA (grid tower) trained for 4 steps."""
    from llava_patch.training import LlavaTrainingArguments, train_llava

    path = tmp_path_factory.mktemp("llava_base")
    train_llava(LlavaTrainingArguments(output_dir=str(path), stage="base", tower=dove_dir, max_steps=4,
                                       learning_rate=3e-3, **MICRO_LLAVA))
    return str(path)


@pytest.fixture(scope="session")
def micro_lm_dir(tmp_path_factory):
    """A micro pretrained-style causal LM folder (BPE tokenizer with a ChatML template, 1-layer Llama)."""
    from tests.llava.micro_lm import save_micro_lm

    return save_micro_lm(tmp_path_factory.mktemp("micro_lm"))


MICRO_DATA = {k: v for k, v in MICRO_LLAVA.items()
              if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}


@pytest.fixture(scope="session")
def align_dir(dove_dir, micro_lm_dir, tmp_path_factory):
    """An align stage (projector only) of the micro LM on the micro DOVE tower, on the embedded captions."""
    from llava_patch.training import LlavaTrainingArguments, train_llava

    path = tmp_path_factory.mktemp("llava_align")
    train_llava(LlavaTrainingArguments(output_dir=str(path), stage="align", tower=dove_dir, language_model=micro_lm_dir,
                                       max_steps=2, learning_rate=3e-3, **dict(MICRO_DATA, eval_scenes=0)))
    return str(path)


@pytest.fixture
def final_model(monkeypatch):
    """The in-memory model and processor that `train_llava` saves at its end, as `{"model", "processor"}`."""
    from llava_patch.training import train as training

    captured = {}
    original = training._save_final

    def spy(args, output_dir, raw_model, tower, processor):
        captured["model"], captured["processor"] = raw_model, processor
        return original(args, output_dir, raw_model, tower, processor)

    monkeypatch.setattr(training, "_save_final", spy)
    return captured
