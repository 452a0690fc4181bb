import numpy as np
import pytest
import torch
from PIL import Image

from dove_vlm import DoveImageProcessor


def test_output_range_shape_and_dtype():
    processor = DoveImageProcessor(size=32)
    out = processor([Image.new("RGB", (32, 32), (255, 0, 0)), np.zeros((32, 32, 3), np.uint8)])["pixel_values"]
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert out[0, 0].eq(1).all() and out[0, 1].eq(-1).all() and out[1].eq(-1).all()


def test_center_crop_and_squash():
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, 20:40] = 255  # white middle third: after a centre crop the whole image is white
    crop = DoveImageProcessor(size=16)(image)["pixel_values"]
    assert crop.shape == (1, 3, 16, 16) and crop.mean() > 0.9
    squash = DoveImageProcessor(size=16, resize_mode="squash")(image)["pixel_values"]
    assert squash.mean() < 0


def test_no_resize_rejects_other_sizes():
    processor = DoveImageProcessor(size=32, do_resize=False)
    assert processor(Image.new("RGB", (32, 32)))["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="image 0 is 40x30 but the model takes 32x32"):
        processor(Image.new("RGB", (40, 30)))


def test_tensor_round_trip_and_postprocess():
    processor = DoveImageProcessor(size=8)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    restored = processor(processor.postprocess(x)[0])["pixel_values"]
    assert torch.allclose(restored, x, atol=1 / 127.5 + 1e-6)
    assert torch.allclose(processor(x[0])["pixel_values"], restored, atol=1e-6)


def test_save_load_and_auto(tmp_path):
    from transformers import AutoImageProcessor

    from dove_vlm import preset_config

    DoveImageProcessor(size=32, resize_mode="squash").save_pretrained(tmp_path)
    preset_config("tiny").save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, DoveImageProcessor) and loaded.size == 32 and loaded.resize_mode == "squash"


def test_bad_arguments():
    with pytest.raises(ValueError, match="resize_mode"):
        DoveImageProcessor(resize_mode="pad")
    with pytest.raises(ValueError, match="size"):
        DoveImageProcessor(size=0)
    with pytest.raises(ValueError, match="no images"):
        DoveImageProcessor()([])
    with pytest.raises(ValueError, match="NaN"):
        DoveImageProcessor(size=8)(np.full((8, 8), np.inf, np.float32))
