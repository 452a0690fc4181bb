"""Loading user images robustly: every failure names the file and says what to do instead, and every
common mode (grey, grey+alpha, palette, RGBA, CMYK, 16-bit, float) becomes 8-bit RGB the same way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageLoadError(ValueError):
    """An input could not be read as an image (the message names it)."""


# PIL's own default (about 89.5 megapixels, e.g. 9459 x 9459): a decompression-bomb guard for untrusted files.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(limit: int | None) -> None:
    """The largest image (width x height) any loader here opens; `None` lifts the limit (trusted files only).
    Also PIL's `Image.MAX_IMAGE_PIXELS`, so images opened elsewhere in the process (e.g. by `datasets`) obey it."""
    global _max_pixels
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"the image pixel limit must be an integer >= 1 (or None for no limit), got {limit!r}.")
    _max_pixels = limit
    Image.MAX_IMAGE_PIXELS = limit


def max_image_pixels() -> int | None:
    return _max_pixels


def _too_large(name: str, width: int | None = None, height: int | None = None) -> ImageLoadError:
    size = f" is {width}x{height} = {width * height:,} pixels," if width and height else ""
    return ImageLoadError(f"{name}{size} over the limit of {_max_pixels:,} pixels (a guard against decompression "
                          "bombs); if the file is trusted, raise the limit with --max-image-pixels N.")


def check_image_pixels(image: Image.Image, name: str) -> None:
    """Refuse an opened (not yet decoded) image over the pixel limit, naming it."""
    if _max_pixels is not None and image.width * image.height > _max_pixels:
        raise _too_large(name, image.width, image.height)


def _open_error(path: Path, err: BaseException) -> Exception:
    """The real cause of a failure to open or decode `path`, as one clear error naming it."""
    if isinstance(err, Image.DecompressionBombError):
        return _too_large(str(path))
    if isinstance(err, PermissionError):
        return PermissionError(f"cannot read the image {path}: permission denied.")
    if isinstance(err, FileNotFoundError):
        return FileNotFoundError(f"image file not found: {path}")
    if isinstance(err, IsADirectoryError):
        return ImageLoadError(f"{path} is a directory, not an image file.")
    if isinstance(err, UnidentifiedImageError):
        return ImageLoadError(f"{path} is not an image file PIL can read; pass a PNG/JPEG/... image.")
    if isinstance(err, OSError) and err.errno is not None:  # an I/O error of the file system, not of the data
        return OSError(err.errno, f"cannot read the image {path}: {err.strerror}")
    return ImageLoadError(f"{path} is a corrupt or truncated image ({err}); re-export or remove it.")


@contextmanager
def _own_size_check():
    """PIL's bomb check off while a file opens here: `check_image_pixels` then refuses it with its size."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """The image file at `path`, opened and under the pixel limit; any error while it is open (in the caller's
    block too: decoding, conversion) becomes an `ImageLoadError` naming the file and the cause."""
    if path.is_dir():
        raise ImageLoadError(f"{path} is a directory, not an image file.")
    try:
        with _own_size_check(), Image.open(path) as image:
            check_image_pixels(image, str(path))
            yield image
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _open_error(path, err) from err


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """`(width, height)` of an image file from its header (nothing decoded), with `load_image`'s errors."""
    with _opened(Path(path)) as image:
        return image.size


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open `path` as an 8-bit RGB PIL image, fully decoded (so truncation is caught here, not later). Errors name
    the file and the cause: missing, permission denied, not an image, over the pixel limit, corrupt or truncated."""
    with _opened(Path(path)) as image:
        image.load()
        return to_rgb(image, name=str(path))


def to_rgb(image: Image.Image | np.ndarray, name: str = "image") -> Image.Image:
    """Convert a PIL image or an array to 8-bit RGB.

    Transparency is composited over white; 16-bit and 32-bit integer images are scaled from their full
    range; float images are read as [0, 1] (or [0, 255] when their maximum is above 1). NaN or infinite
    pixels are an error rather than a silent black patch."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_to_uint8(image, name))
    if not isinstance(image, Image.Image):
        raise TypeError(f"{name}: expected a PIL image or a numpy array, got {type(image).__name__}.")
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"{name}: the image is empty ({image.width}x{image.height} pixels).")
    try:
        return _pil_to_rgb(image, name)
    except (ValueError, OSError) as err:
        if isinstance(err, ImageLoadError):
            raise
        raise ImageLoadError(f"{name}: PIL cannot convert mode {image.mode!r} to RGB ({err}); convert the image to "
                             "RGB first.") from err


def _pil_to_rgb(image: Image.Image, name: str) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_array_to_uint8(np.asarray(image), name, mode=image.mode))
    return image.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV, 1


def _array_to_uint8(array: np.ndarray, name: str, mode: str | None = None) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {array.shape}.")
    if array.size == 0:
        raise ImageLoadError(f"{name}: the image is empty (shape {array.shape}).")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(f"{name}: the image has NaN or infinite pixels; clean it before encoding.")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        if mode is not None and mode.startswith("I;16") or array.dtype == np.uint16:
            bits = 16
        else:
            bits = 16 if array.max() <= 65535 and array.max() > 255 else (8 if array.max() <= 255 else 32)
        array = (np.clip(array.astype(np.float64), 0, 2**bits - 1) / (2**bits - 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 4:  # composite over white
        alpha = array[..., 3:4].astype(np.float64) / 255.0
        array = (array[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return np.ascontiguousarray(array)


def list_image_files(root: str | os.PathLike) -> list[Path]:
    """All image files under `root` (recursively, sorted, by extension)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
