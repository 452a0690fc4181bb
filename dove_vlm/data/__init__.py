"""Data: the embedded synthetic scenes, robust image loading, complexity, and image data sets."""

from .complexity import laplacian_variance
from .datasets import HFImageDataset, ImageFolderDataset, SceneImageDataset, build_image_dataset
from .images import IMAGE_EXTENSIONS, ImageLoadError, list_image_files, load_image, to_rgb
from .synthetic import COLORS, SHAPES, Scene, SceneObject, SyntheticScenes

__all__ = [
    "COLORS", "SHAPES", "IMAGE_EXTENSIONS", "HFImageDataset", "ImageFolderDataset", "ImageLoadError", "Scene",
    "SceneImageDataset", "SceneObject", "SyntheticScenes", "build_image_dataset", "laplacian_variance",
    "list_image_files", "load_image", "to_rgb",
]
