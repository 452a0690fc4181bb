"""Image data sets for tokenizer training and evaluation: the embedded scenes, image folders, and
Hugging Face `datasets` (saved to disk, or by name when a hub cache or network is available)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import ImageLoadError, list_image_files, load_image, to_rgb
from .synthetic import SyntheticScenes


class SceneImageDataset(Dataset):
    """Synthetic scenes as `{"pixel_values"}` items."""

    def __init__(self, scenes: SyntheticScenes, processor):
        self.scenes, self.processor = scenes, processor

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.processor(self.scenes[index].image)["pixel_values"][0]}


def to_uint8(pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixel values in [-1, 1] (`k / 127.5 - 1` for 8-bit k) → the uint8 k."""
    return ((pixel_values + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_pixel_values(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → values in [-1, 1], exactly as `DoveImageProcessor` and the uint8 training sets compute them."""
    return pixels.float().div_(127.5).sub_(1.0)


def uint8_pixels(processor, image) -> torch.Tensor:
    """What `processor(image)["pixel_values"][0]` holds, as the 8-bit `(3, H, W)` values it is made of (pixel
    values are `k / 127.5 - 1`): a quarter of the bytes, for DataLoader workers to hand over."""
    rgb = to_rgb(image)
    if processor.do_resize:
        rgb = processor.resize(rgb)
    if rgb.size != (processor.size, processor.size):
        processor(rgb)  # raises the processor's own error for an image of the wrong size
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)


class ImageFolderDataset(Dataset):
    """Every image file under a folder (recursively). A corrupt file raises `ImageLoadError` naming it."""

    def __init__(self, root: str | os.PathLike, processor):
        self.root, self.processor = Path(root), processor
        self.files = list_image_files(root)
        if not self.files:
            raise ValueError(f"no image files under {root} (looked for {', '.join(('.png', '.jpg', '...'))}).")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.processor(load_image(self.files[index]))["pixel_values"][0]}

    def uint8_item(self, index: int) -> torch.Tensor:
        """Image `index` as `(3, H, W)` uint8 (see `uint8_pixels`)."""
        return uint8_pixels(self.processor, load_image(self.files[index]))


class HFImageDataset(Dataset):
    """A `datasets.Dataset` with an image column (found by feature type, or `image_column`)."""

    def __init__(self, dataset, processor, image_column: str | None = None):
        self.dataset, self.processor = dataset, processor
        self.image_column = image_column or _find_image_column(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.processor(self._image(index))["pixel_values"][0]}

    def uint8_item(self, index: int) -> torch.Tensor:
        """Row `index`'s image as `(3, H, W)` uint8 (see `uint8_pixels`)."""
        return uint8_pixels(self.processor, self._image(index))

    def _image(self, index: int):
        try:
            image = self.dataset[index][self.image_column]
        except Image.DecompressionBombError as err:
            raise ImageLoadError(f"row {index} of the data set: {err} Raise the limit with --max-image-pixels N if "
                                 "the data are trusted.") from err
        except OSError as err:  # PIL decoding a corrupt or truncated image inside `datasets`
            raise ImageLoadError(f"row {index} of the data set holds an image that cannot be decoded ({err}).") from err
        if image is None:
            raise ImageLoadError(f"row {index} of the data set has no image in column {self.image_column!r}.")
        return to_rgb(image, name=f"row {index}")


def _find_image_column(dataset) -> str:
    from datasets import Image as ImageFeature

    for name, feature in dataset.features.items():
        if isinstance(feature, ImageFeature):
            return name
    for name in ("image", "img", "pixel_values"):
        if name in dataset.column_names:
            return name
    raise ValueError(f"the data set has no image column: its columns are {', '.join(dataset.column_names) or 'none'}; "
                     "dove reads the column of `datasets.Image` type, or one named image, img or pixel_values.")


def build_image_dataset(spec: str, processor, num_scenes: int = 1000, seed: int = 0, split: str = "train") -> Dataset:
    """Resolve a data spec:
    - `synthetic` or `synthetic:N` — the embedded scenes;
    - a folder written by `datasets.Dataset.save_to_disk` — loaded with `datasets.load_from_disk`;
    - any other folder — every image file under it;
    - `hf:NAME[:SPLIT]` — `datasets.load_dataset(NAME, split=SPLIT)` (needs the hub or its cache)."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        count = int(spec.split(":", 1)[1]) if ":" in spec else num_scenes
        return SceneImageDataset(SyntheticScenes(count, image_size=processor.size, seed=seed, split=split), processor)
    if spec.startswith("hf:"):
        import datasets

        name, _, hf_split = spec[3:].partition(":")
        try:
            dataset = datasets.load_dataset(name, split=hf_split or "train")
        except Exception as err:  # offline, unknown name, ...: one clear message
            raise ValueError(f"could not load the data set {name!r} with `datasets` ({err}). "
                             "Offline? Save it with `save_to_disk` and pass that folder instead.") from err
        return HFImageDataset(dataset, processor)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {spec!r} is neither 'synthetic[:N]', 'hf:NAME' nor an existing folder.")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        import datasets

        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{spec} has splits {list(dataset)}, not {split!r}.")
            dataset = dataset[split]
        try:
            return HFImageDataset(dataset, processor)
        except ValueError as err:
            raise ValueError(f"{spec}: {err}") from err
    return ImageFolderDataset(path, processor)
