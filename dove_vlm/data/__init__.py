"""Data: the embedded synthetic scenes, robust image loading, complexity, and image data sets."""

from .complexity import laplacian_variance
from .datasets import HFImageDataset, ImageFolderDataset, SceneImageDataset, build_image_dataset
from .images import (DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, ImageLoadError, image_size, list_image_files, load_image,
                     max_image_pixels, set_max_image_pixels, to_rgb)
from .synthetic import COLORS, SHAPES, Scene, SceneObject, SyntheticScenes

__all__ = [
    "COLORS", "DEFAULT_MAX_IMAGE_PIXELS", "SHAPES", "IMAGE_EXTENSIONS", "HFImageDataset", "ImageFolderDataset", "ImageLoadError", "Scene",
    "SceneImageDataset", "SceneObject", "SyntheticScenes", "build_image_dataset", "laplacian_variance",
    "image_size", "list_image_files", "load_image", "max_image_pixels", "set_max_image_pixels", "to_rgb",
]
