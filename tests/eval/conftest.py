"""A tiny Q-DOVE LLaVA saved locally and a handful of embedded VQA questions exported as an lmms-eval task."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("lmms_eval")

from tests.llava.tiny_models import make_llava, make_tower


def save_tiny_llava(tower, path) -> str:
    """A tiny DOVE-LLaVA (random weights) on `tower`, saved with its tokenizer in `path`."""
    tower.dove.set_latent_statistics(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    model, processor = make_llava(tower)
    model.save_pretrained(path)
    processor.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
    """A tiny DOVE-LLaVA on a micro Q-DOVE tower in query mode."""
    return save_tiny_llava(make_tower(mode="query", query=True), tmp_path_factory.mktemp("dove_llava"))


@pytest.fixture(scope="session")
def grid_dir(tmp_path_factory):
    """A tiny DOVE-LLaVA on the grid tower (2 decoder layers): the model of the token-budget rows."""
    return save_tiny_llava(make_tower(mode="grid", query=False), tmp_path_factory.mktemp("grid_llava"))


@pytest.fixture(scope="session")
def task_yaml(tmp_path_factory):
    """Six embedded test questions (three scenes) as a local lmms-eval task."""
    from eval.compare import export_embedded

    return export_embedded(tmp_path_factory.mktemp("eval_data"), num_scenes=3, questions_per_scene=2)
