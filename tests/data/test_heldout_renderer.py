"""The held-out scene renderer: deterministic, 0-8 objects that its label map and its pixels agree with, light and
dark backgrounds, and no code shared with the embedded generator."""

import ast
from pathlib import Path

import numpy as np
import pytest

from dove_vlm.data.heldout_renderer import MAX_HELDOUT_OBJECTS, HeldOutScenes


def test_scenes_are_deterministic_and_seeds_differ():
    a, b, other = HeldOutScenes(6, 32, seed=4), HeldOutScenes(6, 32, seed=4), HeldOutScenes(6, 32, seed=5)
    for i in range(6):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image)) and a[i].num_objects == b[i].num_objects
    assert any(not np.array_equal(np.asarray(a[i].image), np.asarray(other[i].image)) for i in range(6))


def test_object_counts_match_the_labels_and_the_pixels():
    scenes = [HeldOutScenes(80, 32, seed=1)[i] for i in range(80)]
    assert {s.num_objects for s in scenes} == set(range(MAX_HELDOUT_OBJECTS + 1))
    assert {s.background for s in scenes} == {"light", "dark"} and len({s.palette for s in scenes}) >= 3
    for scene in scenes:
        image = np.asarray(scene.image, dtype=float)
        assert scene.image.size == (32, 32) and scene.labels.shape == (32, 32)
        assert sorted(set(np.unique(scene.labels)) - {0}) == list(range(1, scene.num_objects + 1))
        background = image[scene.labels == 0].mean(0)
        for label in range(1, scene.num_objects + 1):  # every counted object is visible against the background
            assert np.abs(image[scene.labels == label].mean(0) - background).max() > 15


def test_it_shares_no_code_with_the_generator():
    source = Path(__file__).resolve().parents[2] / "dove_vlm" / "data" / "heldout_renderer.py"
    imported = {node.module for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.ImportFrom)}
    assert not any("synthetic" in (name or "") for name in imported)
    with pytest.raises(IndexError):
        HeldOutScenes(2)[2]
