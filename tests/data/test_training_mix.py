"""The tokenizer's training mix: wide scenes, crops of the training photos (never the held-out ones) and
augmentation, all deterministic and read from installed wheels without a network."""

import importlib.util
import socket

import numpy as np
import pytest

from dove_vlm.data import SyntheticScenes
from dove_vlm.data.mix import TrainingMix, augment
from dove_vlm.data.photos import HELD_OUT_PHOTOS, TRAINING_PHOTOS, PhotoCrops, foolbox_samples, load_photo


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    load_photo.cache_clear()  # read the photos again, now with the network refused
    yield
    load_photo.cache_clear()


def test_the_mix_is_deterministic_offline_and_keeps_its_sources(no_network):
    a, b = TrainingMix(40, 32, seed=2), TrainingMix(40, 32, seed=2)
    items = [a[i] for i in range(40)]
    for i, (image, source) in enumerate(items):
        again, same = b[i]
        assert image.size == (32, 32) and image.mode == "RGB" and source == same
        assert np.array_equal(np.asarray(image), np.asarray(again))
    sources = [s for _, s in items]
    assert 0 < sum(sources) < 40  # both scenes and photo crops
    other = TrainingMix(40, 32, seed=3)
    assert any(not np.array_equal(np.asarray(items[i][0]), np.asarray(other[i][0])) for i in range(40))


def test_held_out_photos_are_never_cropped_for_training():
    assert HELD_OUT_PHOTOS and not set(HELD_OUT_PHOTOS) & set(TRAINING_PHOTOS)
    crops = PhotoCrops(len(TRAINING_PHOTOS), 32, seed=0)
    assert {crops[i][1] for i in range(len(crops))} == set(TRAINING_PHOTOS)
    assert TrainingMix(4, 32).photos.names == TRAINING_PHOTOS


def test_wide_scenes_cover_light_backgrounds_and_the_classic_ones_are_unchanged():
    wide = SyntheticScenes(60, seed=0, variety="wide")
    brightness = [np.asarray(s.image, dtype=float).mean() for s in wide]
    assert min(brightness) < 80 and max(brightness) > 180
    assert {s.background for s in wide} >= {"plain", "gradient", "fractal"}
    classic = SyntheticScenes(6, seed=0)
    assert all(np.asarray(s.image, dtype=float).mean() < 150 for s in classic if not s.objects)
    with pytest.raises(ValueError, match="variety"):
        SyntheticScenes(1, variety="bright")


def test_augmentation_flips_and_greys_deterministically():
    image = SyntheticScenes(1, seed=1, variety="wide")[0].image
    outs = [np.asarray(augment(np.random.default_rng(i), image), dtype=int) for i in range(40)]
    grey = [o for o in outs if np.array_equal(o[..., 0], o[..., 1]) and np.array_equal(o[..., 1], o[..., 2])]
    assert 0 < len(grey) < 40
    assert np.array_equal(outs[0], np.asarray(augment(np.random.default_rng(0), image), dtype=int))


def test_foolbox_samples_when_installed():
    if importlib.util.find_spec("foolbox") is None:
        pytest.skip("foolbox (pip install --no-deps foolbox) ships the samples")
    samples = foolbox_samples()
    assert len(samples) >= 20 and all(a.ndim == 3 and a.shape[2] == 3 for _, a in samples)
