"""Real photographs that ship inside installed wheels (nothing downloads): scikit-image's `skimage.data` and
scikit-learn's `load_sample_images`, split by name into the photos that training crops come from and a fixed
held-out list kept for evaluation, and seeded random crops and rescales of them at a model's size."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .images import to_rgb

# Stored inside the scikit-image package (the `skimage.data` images that need a `pooch` download are left out).
SKIMAGE_PHOTOS = ("moon", "clock", "page", "text", "camera", "horse", "coins", "chelsea", "astronaut", "coffee",
                  "rocket", "immunohistochemistry", "retina", "cell", "hubble_deep_field", "brick", "grass", "gravel",
                  "colorwheel")
SKLEARN_PHOTOS = ("china", "flower")  # scikit-learn's `load_sample_images`
# Never cropped for training: flat to busy, colour and grey, from both wheels.
HELD_OUT_PHOTOS = ("astronaut", "coffee", "coins", "gravel", "moon", "china")
TRAINING_PHOTOS = tuple(n for n in SKIMAGE_PHOTOS + SKLEARN_PHOTOS if n not in HELD_OUT_PHOTOS)


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """Photo `name` as an `(H, W, 3)` uint8 array (read once per process). Unknown or unavailable names raise
    `ValueError` naming them."""
    try:
        if name in SKLEARN_PHOTOS:
            from sklearn.datasets import load_sample_image

            image = load_sample_image(f"{name}.jpg")
        elif name in SKIMAGE_PHOTOS:
            import skimage.data

            image = getattr(skimage.data, name)()
        else:
            raise ValueError(f"unknown photo {name!r}; choose from {', '.join(SKIMAGE_PHOTOS + SKLEARN_PHOTOS)}.")
    except (ImportError, AttributeError, OSError) as err:
        raise ValueError(f"the photo {name!r} is not available in this installation ({err}).") from err
    return np.asarray(to_rgb(np.asarray(image), name=name))


def random_crop(rng: np.random.Generator, photo: np.ndarray, size: int, min_side: int | None = None) -> Image.Image:
    """A random square crop of `photo` (side between `min_side`, default `size`, and the photo's shorter side, drawn
    log-uniformly so that close-ups and wide views are equally common), resized to `size`×`size`."""
    height, width = photo.shape[:2]
    short = min(height, width)
    low = min(short, max(1, min_side or size))
    side = int(round(np.exp(rng.uniform(np.log(low), np.log(short)))))
    y0 = int(rng.integers(0, height - side + 1))
    x0 = int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[y0 : y0 + side, x0 : x0 + side])
    return crop.resize((size, size), Image.Resampling.LANCZOS) if side != size else crop


class PhotoCrops:
    """`len(crops)` deterministic crops of the photos `names`; `crops[i]` is crop `i` of `seed` (photo picked
    round-robin, then a random crop) as `(PIL image, photo name)`."""

    def __init__(self, num_crops: int, image_size: int, seed: int = 0, names: tuple[str, ...] = TRAINING_PHOTOS):
        if not names:
            raise ValueError("PhotoCrops needs at least one photo name.")
        self.num_crops, self.image_size, self.seed, self.names = num_crops, image_size, seed, tuple(names)

    def __len__(self) -> int:
        return self.num_crops

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        if not 0 <= index < self.num_crops:
            raise IndexError(f"crop {index} out of range for {self.num_crops} crops.")
        name = self.names[index % len(self.names)]
        rng = np.random.default_rng([self.seed, 0xC409, index])
        return random_crop(rng, load_photo(name), self.image_size), name


FOOLBOX_PREFIXES = ("cifar10_", "cifar100_", "imagenet_")  # its MNIST / Fashion-MNIST samples are left out


def foolbox_samples(prefixes: tuple[str, ...] = FOOLBOX_PREFIXES) -> list[tuple[str, np.ndarray]]:
    """The CIFAR-10/100 and ImageNet sample images inside the `foolbox` wheel's `data/` folder (found through
    importlib: foolbox itself, which needs eagerpy, is never imported), as `(file name, (H, W, 3) uint8)`.
    `ValueError` when foolbox is not installed (`pip install --no-deps foolbox`)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("foolbox is not installed: `pip install --no-deps foolbox` adds its sample images.")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(p for p in folder.glob("*") if p.name.startswith(prefixes))
    if not files:
        raise ValueError(f"no {', '.join(prefixes)} sample images in {folder}.")
    samples = []
    for path in files:
        with Image.open(path) as image:
            samples.append((path.name, np.asarray(to_rgb(image, name=str(path)))))
    return samples
