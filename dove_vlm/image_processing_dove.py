"""`DoveImageProcessor`: images of any size and mode → `pixel_values` in [-1, 1] at the model's size.

Documented resize behaviour: by default the shorter side is resized to `size` and the centre is cropped to
a square (`resize_mode="center_crop"`); `resize_mode="squash"` resizes without cropping; `do_resize=False`
accepts only images that already have the model's size and raises a clear error otherwise."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .data.images import ImageLoadError, to_rgb

RESIZE_MODES = ("center_crop", "squash")


class DoveImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, size: int = 256, do_resize: bool = True, resize_mode: str = "center_crop",
                 resample: int = int(Image.Resampling.BICUBIC), **kwargs):
        if isinstance(size, dict):  # transformers-style {"height": h, "width": w}
            size = size.get("height", size.get("shortest_edge"))
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}.")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {resize_mode!r}; choose one of: {', '.join(RESIZE_MODES)}.")
        super().__init__(**kwargs)
        self.size, self.do_resize, self.resize_mode, self.resample = size, do_resize, resize_mode, int(resample)

    def preprocess(self, images, return_tensors: str | None = "pt", do_resize: bool | None = None) -> BatchFeature:
        """`images`: one image or a list of PIL images, `(H, W[, C])` arrays or `(C, H, W)` tensors."""
        do_resize = self.do_resize if do_resize is None else do_resize
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given to DoveImageProcessor.")
        arrays = []
        for index, image in enumerate(images):
            rgb = to_rgb(_as_pil_or_array(image, index), name=f"image {index}")
            if do_resize:
                rgb = self.resize(rgb)
            elif rgb.size != (self.size, self.size):
                raise ValueError(
                    f"image {index} is {rgb.size[0]}x{rgb.size[1]} but the model takes {self.size}x{self.size}; "
                    "pass do_resize=True (centre crop) or resize it yourself."
                )
            arrays.append(np.asarray(rgb, dtype=np.float32))
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div(127.5).sub(1.0).contiguous()
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt'.")
        return BatchFeature({"pixel_values": pixels}, tensor_type=None)

    def resize(self, image: Image.Image) -> Image.Image:
        if image.size == (self.size, self.size):
            return image
        if self.resize_mode == "squash":
            return image.resize((self.size, self.size), self.resample)
        width, height = image.size
        scale = self.size / min(width, height)
        new_w, new_h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
        image = image.resize((new_w, new_h), self.resample)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def transform_boxes(self, boxes, original_size: tuple[int, int]) -> torch.Tensor:
        """Normalised xyxy boxes of an image of `original_size` (width, height) → `(K, 4)` pixel boxes in the
        processed image (after the same resize/crop), clipped; boxes cropped away entirely are dropped."""
        width, height = original_size
        out = []
        for x0, y0, x1, y1 in boxes:
            if self.resize_mode == "squash" or not self.do_resize:
                sx, sy, left, top = self.size, self.size, 0.0, 0.0
            else:
                scale = self.size / min(width, height)
                new_w, new_h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
                sx, sy = new_w, new_h
                left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
            box = [x0 * sx - left, y0 * sy - top, x1 * sx - left, y1 * sy - top]
            box = [min(max(v, 0.0), float(self.size)) for v in box]
            if box[2] - box[0] > 0 and box[3] - box[1] > 0:
                out.append(box)
        return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)

    @staticmethod
    def postprocess(pixel_values: torch.Tensor) -> list[Image.Image]:
        """`(B, 3, H, W)` in [-1, 1] → 8-bit RGB PIL images."""
        if pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        array = ((pixel_values.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
        return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]


def _as_pil_or_array(image, index: int):
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.is_floating_point() and array.dtype not in (torch.float16, torch.float32, torch.float64):
            array = array.float()  # bfloat16 / float8 have no numpy dtype
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.permute(1, 2, 0)  # (C, H, W) → (H, W, C)
        array = array.numpy()
        if array.dtype.kind == "f" and array.min() < 0:  # assume [-1, 1] model space
            array = (array + 1) / 2
        return array
    if isinstance(image, np.ndarray):
        return image
    raise ImageLoadError(f"image {index}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}.")
