"""The tokenizer's training mix: the embedded scenes in their `wide` variety and a share of crops of the training
photos (`photos.py`), each with a seeded colour / greyscale / flip augmentation, so that no background, palette or
saturation tells the length head how long a code should be. Item `i` of `(seed, photo_share)` is always the same
image and records its source, for objectives that calibrate per source."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .photos import TRAINING_PHOTOS, PhotoCrops
from .synthetic import SyntheticScenes

SOURCES = ("scenes", "photos")
DATA_MIXES = ("scenes", "wide")  # `scenes`: the classic scenes alone; `wide`: this mix
PHOTO_SHARE = 0.3
GREY_PROB, DESATURATE_PROB, FLIP_PROB = 0.2, 0.25, 0.5


def augment(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """A horizontal flip (p=0.5), then greyscale (p=0.2) or a saturation change (p=0.25: 0.1x to 1.3x)."""
    if rng.random() < FLIP_PROB:
        image = ImageOps.mirror(image)
    draw = rng.random()
    if draw < GREY_PROB:
        return ImageOps.grayscale(image).convert("RGB")
    if draw < GREY_PROB + DESATURATE_PROB:
        return ImageEnhance.Color(image).enhance(float(rng.uniform(0.1, 1.3)))
    return image


class TrainingMix:
    """`len(mix)` deterministic training images; `mix[i]` is `(PIL image, source index into SOURCES)`."""

    def __init__(self, num_images: int, image_size: int, seed: int = 0, photo_share: float = PHOTO_SHARE,
                 photos: tuple[str, ...] = TRAINING_PHOTOS):
        if not 0.0 <= photo_share <= 1.0:
            raise ValueError(f"photo_share must be in [0, 1], got {photo_share}.")
        self.num_images, self.seed, self.photo_share = num_images, seed, photo_share
        self.scenes = SyntheticScenes(num_images, image_size=image_size, seed=seed, split="train", variety="wide")
        self.photos = PhotoCrops(num_images, image_size, seed=seed, names=photos)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"image {index} out of range for {self.num_images} images.")
        rng = np.random.default_rng([self.seed, 0x313, index])
        source = int(rng.random() < self.photo_share)
        image = self.photos[index][0] if source else self.scenes[index].image
        return augment(rng, image), source
