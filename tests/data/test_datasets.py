import pytest
from PIL import Image

from dove_vlm import DoveImageProcessor
from dove_vlm.data import HFImageDataset, ImageFolderDataset, ImageLoadError, SceneImageDataset, build_image_dataset


@pytest.fixture
def processor():
    return DoveImageProcessor(size=32)


def test_synthetic_spec(processor):
    dataset = build_image_dataset("synthetic:7", processor)
    assert isinstance(dataset, SceneImageDataset) and len(dataset) == 7
    x = dataset[0]["pixel_values"]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_image_folder(processor, tmp_path):
    for i, size in enumerate([(40, 30), (32, 32), (100, 20)]):
        Image.new("RGB", size, "red").save(tmp_path / f"{i}.png")
    dataset = build_image_dataset(str(tmp_path), processor)
    assert isinstance(dataset, ImageFolderDataset) and len(dataset) == 3
    assert all(dataset[i]["pixel_values"].shape == (3, 32, 32) for i in range(3))
    (tmp_path / "3.png").write_text("corrupt")
    with pytest.raises(ImageLoadError, match="3.png"):
        ImageFolderDataset(tmp_path, processor)[3]


def test_empty_folder_and_missing_path(processor, tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        build_image_dataset(str(tmp_path), processor)
    with pytest.raises(FileNotFoundError, match="neither"):
        build_image_dataset(str(tmp_path / "nope"), processor)


def test_saved_hf_dataset(processor, tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"img": [Image.new("RGB", (20, 20), "blue")] * 2, "label": [0, 1]})
    ds = ds.cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    dataset = build_image_dataset(str(tmp_path / "ds"), processor)
    assert isinstance(dataset, HFImageDataset) and dataset.image_column == "img"
    assert dataset[1]["pixel_values"].shape == (3, 32, 32)
    no_images = datasets.Dataset.from_dict({"label": [0]})
    with pytest.raises(ValueError, match="no image column"):
        HFImageDataset(no_images, processor)


def test_unreachable_hub_dataset_is_a_clear_error(processor):
    with pytest.raises(ValueError, match="save_to_disk"):
        build_image_dataset("hf:nobody/does-not-exist", processor)
