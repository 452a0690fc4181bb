"""The tokenizer's training mix: wide scenes, crops of the training photos and of half of foolbox's samples (never
the held-out ones) and augmentation, all deterministic and read from installed wheels without a network."""

import importlib.util
import socket

import numpy as np
import pytest

from dove_vlm.data import SyntheticScenes
from dove_vlm.data.mix import MIX_PHOTOS, TrainingMix, augment
from dove_vlm.data.photos import (FOOLBOX_PREFIX, FOOLBOX_TRAINING, HELD_OUT_PHOTOS, TRAINING_PHOTOS, PhotoCrops,
                                  foolbox_samples, load_photo)

needs_foolbox = pytest.mark.skipif(importlib.util.find_spec("foolbox") is None,
                                   reason="foolbox (pip install --no-deps foolbox) ships the samples")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    load_photo.cache_clear()  # read the photos again, now with the network refused
    yield
    load_photo.cache_clear()


@needs_foolbox
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
    assert MIX_PHOTOS == TRAINING_PHOTOS + FOOLBOX_TRAINING


@needs_foolbox
def test_foolbox_samples_split_in_two_halves_and_the_training_half_is_cropped(no_network):
    held_out, training = foolbox_samples(), foolbox_samples(split="training")
    assert len(held_out) == len(training) == 30 and len(foolbox_samples(split="all")) == 60
    names = {name for name, _ in held_out}
    assert not names & {name[len(FOOLBOX_PREFIX):] for name in FOOLBOX_TRAINING}
    assert {name for name, _ in training} == {name[len(FOOLBOX_PREFIX):] for name in FOOLBOX_TRAINING}
    assert all(a.ndim == 3 and a.shape[2] == 3 for _, a in held_out + training)
    crops = PhotoCrops(len(MIX_PHOTOS), 32, seed=0, names=MIX_PHOTOS)
    assert {crops[i][1] for i in range(len(crops))} == set(MIX_PHOTOS)
    assert TrainingMix(4, 32).photos.names == MIX_PHOTOS
    with pytest.raises(ValueError, match="split"):
        foolbox_samples(split="test")
    with pytest.raises(ValueError, match="foolbox/"):
        load_photo("lena")


def test_a_mix_with_foolbox_photos_names_the_install_when_foolbox_is_missing(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match="pip install --no-deps foolbox"):
        TrainingMix(4, 32)
    assert len(TrainingMix(4, 32, photos=TRAINING_PHOTOS)) == 4  # the wheels' photos alone need no foolbox


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

