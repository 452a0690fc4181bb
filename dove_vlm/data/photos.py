"""Real photographs that ship inside installed wheels (nothing downloads): scikit-image's `skimage.data` and
scikit-learn's `load_sample_images`, and foolbox's CIFAR / ImageNet samples, split by name into the photos that
training crops come from and fixed held-out lists kept for evaluation, and seeded random crops and rescales of them
at a model's size."""

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
# foolbox 3.3.4's `data/` samples (20 per set; its MNIST / Fashion-MNIST are left out): the even-numbered ones of each
# set are training photos (`load_photo("foolbox/<file>")`), the odd-numbered ones are held out (`foolbox_samples`).
FOOLBOX_PREFIX = "foolbox/"
FOOLBOX_TRAINING = tuple(FOOLBOX_PREFIX + f for f in (
    "cifar10_00_3.png", "cifar10_02_8.png", "cifar10_04_6.png", "cifar10_06_1.png", "cifar10_08_3.png",
    "cifar10_10_0.png", "cifar10_12_5.png", "cifar10_14_9.png", "cifar10_16_5.png", "cifar10_18_8.png",
    "cifar100_00_49.png", "cifar100_02_72.png", "cifar100_04_71.png", "cifar100_06_15.png", "cifar100_08_23.png",
    "cifar100_10_71.png", "cifar100_12_81.png", "cifar100_14_40.png", "cifar100_16_92.png", "cifar100_18_70.png",
    "imagenet_00_243.jpg", "imagenet_02_438.jpg", "imagenet_04_949.jpg", "imagenet_06_609.jpg", "imagenet_08_915.jpg",
    "imagenet_10_541.jpg", "imagenet_12_741.jpg", "imagenet_14_129.jpg", "imagenet_16_251.jpg", "imagenet_18_317.jpg"))


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """Photo `name` as an `(H, W, 3)` uint8 array (read once per process). Unknown or unavailable names raise
    `ValueError` naming them."""
    try:
        if name.startswith(FOOLBOX_PREFIX):
            return _foolbox_image(foolbox_folder() / name[len(FOOLBOX_PREFIX):])
        if name in SKLEARN_PHOTOS:
            from sklearn.datasets import load_sample_image

            image = load_sample_image(f"{name}.jpg")
        elif name in SKIMAGE_PHOTOS:
            import skimage.data

            image = getattr(skimage.data, name)()
        else:
            raise ValueError(f"unknown photo {name!r}; choose from {', '.join(SKIMAGE_PHOTOS + SKLEARN_PHOTOS)} "
                             f"or {FOOLBOX_PREFIX}<file of foolbox's data folder>.")
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
FOOLBOX_SPLITS = ("held_out", "training", "all")


def foolbox_folder():
    """The `data/` folder of the installed `foolbox` wheel (found through importlib: foolbox itself, which needs
    eagerpy, is never imported). `ValueError` when foolbox is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("foolbox is not installed: `pip install --no-deps foolbox==3.3.4` adds its sample images.")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _foolbox_image(path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(to_rgb(image, name=str(path)))
    except OSError as err:
        raise ValueError(f"foolbox's sample {path.name!r} cannot be read ({err}); foolbox 3.3.4 ships it.") from err


def foolbox_samples(prefixes: tuple[str, ...] = FOOLBOX_PREFIXES, split: str = "held_out") -> list[tuple[str, np.ndarray]]:
    """foolbox's CIFAR-10/100 and ImageNet sample images as `(file name, (H, W, 3) uint8)`: by default the held-out
    ones (never in a training mix; `split="training"`: those in `FOOLBOX_TRAINING`, `"all"`: both). `ValueError`
    when foolbox is not installed (`pip install --no-deps foolbox==3.3.4`)."""
    if split not in FOOLBOX_SPLITS:
        raise ValueError(f"split must be one of {', '.join(FOOLBOX_SPLITS)}, got {split!r}.")
    folder = foolbox_folder()
    training = {name[len(FOOLBOX_PREFIX):] for name in FOOLBOX_TRAINING}
    files = [p for p in sorted(folder.glob("*")) if p.name.startswith(prefixes)
             and (split == "all" or (p.name in training) == (split == "training"))]
    if not files:
        raise ValueError(f"no {', '.join(prefixes)} sample images ({split}) in {folder}.")
    return [(path.name, _foolbox_image(path)) for path in files]
