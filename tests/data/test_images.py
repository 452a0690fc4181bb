import numpy as np
import pytest
from PIL import Image

from dove_vlm.data import ImageLoadError, list_image_files, load_image, to_rgb


def test_modes_become_rgb(tmp_path):
    cases = {
        "grey.png": Image.new("L", (10, 8), 100),
        "greyalpha.png": Image.new("LA", (10, 8), (100, 0)),
        "palette.png": Image.new("P", (10, 8), 3),
        "rgba.png": Image.new("RGBA", (10, 8), (255, 0, 0, 0)),
        "cmyk.jpg": Image.new("CMYK", (10, 8), (0, 255, 0, 0)),
        "deep.png": Image.fromarray(np.full((8, 10), 65535, np.uint16)),
        "float.tif": Image.fromarray(np.full((8, 10), 0.5, np.float32)),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        loaded = load_image(tmp_path / name)
        assert loaded.mode == "RGB" and loaded.size == (10, 8), name
    assert load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    assert load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)  # 16-bit full scale
    assert load_image(tmp_path / "float.tif").getpixel((0, 0)) == (128, 128, 128)


def test_bad_files_name_the_input(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ImageLoadError, match="notes.png"):
        load_image(text)
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_arrays():
    assert to_rgb(np.zeros((4, 5), np.uint8)).size == (5, 4)
    assert to_rgb(np.ones((4, 5, 4), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(np.zeros((4, 5), bool)).mode == "RGB"
    with pytest.raises(ImageLoadError, match="NaN"):
        to_rgb(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImageLoadError, match="shape"):
        to_rgb(np.zeros((4, 4, 7)))
    with pytest.raises(ImageLoadError, match="empty"):
        to_rgb(np.zeros((0, 4)))
    with pytest.raises(TypeError):
        to_rgb("not an image")


def test_list_image_files(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "a.PNG")
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in list_image_files(tmp_path)] == ["a.PNG"]
    with pytest.raises(FileNotFoundError):
        list_image_files(tmp_path / "nope")
