import numpy as np
import pytest

from dove_vlm.data import COLORS, SHAPES, SyntheticScenes, laplacian_variance


def test_scenes_are_deterministic_and_splits_differ():
    a, b = SyntheticScenes(5, seed=3), SyntheticScenes(5, seed=3)
    for i in range(5):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
        assert a[i].vqa == b[i].vqa
    test = SyntheticScenes(5, seed=3, split="test")
    assert any(not np.array_equal(np.asarray(a[i].image), np.asarray(test[i].image)) for i in range(5))


def test_scene_records_boxes_phrases_and_questions():
    scenes = SyntheticScenes(60, image_size=32, seed=0)
    counts = [s.num_objects for s in scenes]
    assert set(counts) == set(range(7))  # complexity 0..6 all appear
    types = set()
    for scene in scenes:
        assert scene.image.size == (32, 32) and scene.image.mode == "RGB"
        assert scene.complexity == scene.num_objects
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            assert obj.shape in SHAPES and obj.color in COLORS
            assert any(p["text"] == obj.phrase and list(obj.box) in p["boxes"] for p in scene.phrases)
        for qa in scene.vqa:
            types.add(qa["type"])
            assert qa["question"].endswith("?") and qa["answer"]
        count_q = next(q for q in scene.vqa if q["type"] == "count")
        assert count_q["answer"] == str(scene.num_objects)
    assert types == {"count", "colour", "shape", "position", "existence"}


def test_complexity_grows_with_object_count():
    scenes = SyntheticScenes(200, seed=1)
    lap = np.array([laplacian_variance(s.image) for s in scenes])
    objects = np.array([s.num_objects for s in scenes])
    assert lap[objects >= 5].mean() > 2 * lap[objects <= 1].mean()


def test_other_sizes_and_bad_arguments():
    assert SyntheticScenes(1, image_size=64)[0].image.size == (64, 64)
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes(1, split="dev")
    with pytest.raises(ValueError, match="image_size"):
        SyntheticScenes(1, image_size=4)
    with pytest.raises(IndexError):
        SyntheticScenes(2)[2]


def test_laplacian_variance_inputs():
    flat = np.full((16, 16), 128, np.uint8)
    busy = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
    assert laplacian_variance(flat) == 0.0
    assert laplacian_variance(busy) > 1.0
    assert laplacian_variance(np.stack([busy] * 3, -1)) == pytest.approx(laplacian_variance(busy))
    with pytest.raises(ValueError, match="shape"):
        laplacian_variance(np.zeros((2, 2, 2, 2)))
