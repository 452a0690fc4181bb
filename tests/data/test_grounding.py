import csv
import json

import pytest
from PIL import Image

from dove_vlm import DoveImageProcessor
from dove_vlm.data import SyntheticScenes
from dove_vlm.data.grounding import clean_box, load_open_images, load_visual_genome, synthetic_grounding, union_box


def test_clean_box_normalises_clips_and_drops():
    assert clean_box((10, 20, 30, 40), 100, 50) == (0.1, 0.4, 0.3, 0.8)
    assert clean_box((30, 40, 10, 20), 100, 50) == (0.1, 0.4, 0.3, 0.8)  # corners in any order
    assert clean_box((-10, -10, 50, 25), 100, 50) == (0.0, 0.0, 0.5, 0.5)  # partly outside: clipped
    assert clean_box((10, 10, 10, 30), 100, 50) is None  # zero area
    assert clean_box((120, 10, 150, 30), 100, 50) is None  # entirely outside
    assert union_box([(0.1, 0.2, 0.3, 0.4), (0.2, 0.1, 0.5, 0.3)]) == (0.1, 0.1, 0.5, 0.4)


def test_synthetic_grounding_has_phrases_and_questions_with_boxes():
    samples = synthetic_grounding(SyntheticScenes(20, seed=0))
    kinds = {s.kind for s in samples}
    assert kinds == {"phrase", "question"}
    for sample in samples:
        assert sample.boxes and all(0 <= v <= 1 for box in sample.boxes for v in box)
        assert sample.kind != "question" or sample.answer
    with_absent = synthetic_grounding(SyntheticScenes(20, seed=0), unboxed=True)
    absent = [s for s in with_absent if not s.boxes]
    assert absent and all(s.kind == "question" and s.answer in ("no", "0") for s in absent)
    assert len(with_absent) == len(samples) + len(absent)


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (200, 100), "white").save(folder / "1.jpg")
    Image.new("RGB", (50, 50), "black").save(folder / "2.jpg")
    return folder


def test_visual_genome_regions_and_questions(tmp_path, image_dir):
    regions = [
        {"id": 1, "regions": [
            {"image_id": 1, "phrase": "a red ball", "x": 10, "y": 20, "width": 40, "height": 30},
            {"image_id": 1, "phrase": "zero area", "x": 10, "y": 20, "width": 0, "height": 30},
            {"image_id": 1, "phrase": "off the image", "x": 500, "y": 20, "width": 10, "height": 10},
            {"image_id": 1, "phrase": "  ", "x": 1, "y": 1, "width": 10, "height": 10},
        ]},
        {"id": 2, "regions": [{"image_id": 2, "phrase": "the sky", "x": -5, "y": 0, "width": 30, "height": 60}]},
    ]
    qas = [{"id": 1, "qas": [
        {"image_id": 1, "question": "What colour is the ball?", "answer": "Red",
         "a_objects": [{"x": 10, "y": 20, "w": 40, "h": 30}], "q_objects": []},
        {"image_id": 1, "question": "Is it sunny?", "answer": "yes", "a_objects": [], "q_objects": []},
    ]}]
    (tmp_path / "regions.json").write_text(json.dumps(regions))
    (tmp_path / "qa.json").write_text(json.dumps(qas))
    with pytest.warns(UserWarning, match="dropped 2 boxes"):
        samples = load_visual_genome(tmp_path / "regions.json", image_dir, tmp_path / "qa.json")
    texts = [s.text for s in samples]
    assert texts == ["a red ball", "the sky", "What colour is the ball?"]
    assert samples[0].boxes == [(0.05, 0.2, 0.25, 0.5)]
    assert samples[1].boxes == [(0.0, 0.0, 0.5, 1.0)]  # clipped
    assert samples[2].kind == "question" and samples[2].answer == "Red"


def test_visual_genome_bad_files(tmp_path, image_dir):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_visual_genome(tmp_path / "nope.json", image_dir)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_visual_genome(tmp_path / "bad.json", image_dir)
    (tmp_path / "missing.json").write_text(json.dumps([{"id": 3, "regions": [
        {"image_id": 3, "phrase": "x", "x": 0, "y": 0, "width": 5, "height": 5}]}]))
    with pytest.raises(FileNotFoundError, match="3.jpg"):
        load_visual_genome(tmp_path / "missing.json", image_dir)
    (tmp_path / "noregions.json").write_text(json.dumps([{"id": 1}]))
    with pytest.raises(ValueError, match="no regions field"):
        load_visual_genome(tmp_path / "noregions.json", image_dir)


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def test_open_images_boxes_and_relationships(tmp_path, image_dir):
    _write_csv(tmp_path / "classes.csv", None, [["/m/1", "Man"], ["/m/2", "Table"]])
    _write_csv(tmp_path / "boxes.csv", ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax"],
               [["1", "x", "/m/1", "1", "0.1", "0.4", "0.2", "0.9"], ["1", "x", "/m/2", "1", "0.5", "0.5", "0.1", "0.2"]])
    _write_csv(tmp_path / "rel.csv", ["ImageID", "LabelName1", "LabelName2", "XMin1", "XMax1", "YMin1", "YMax1",
                                      "XMin2", "XMax2", "YMin2", "YMax2", "RelationshipLabel"],
               [["1", "/m/1", "/m/2", "0.1", "0.4", "0.2", "0.9", "0.3", "0.8", "0.5", "0.7", "at"]])
    with pytest.warns(UserWarning, match="dropped 1 boxes"):
        samples = load_open_images(tmp_path / "classes.csv", image_dir, tmp_path / "boxes.csv", tmp_path / "rel.csv")
    assert [s.text for s in samples] == ["the man", "man at table"]
    assert samples[1].boxes == [(0.1, 0.2, 0.8, 0.9)]  # the two boxes merged
    _write_csv(tmp_path / "short.csv", ["ImageID", "LabelName"], [["1", "/m/1"]])
    with pytest.raises(ValueError, match="misses the field"):
        load_open_images(tmp_path / "classes.csv", image_dir, tmp_path / "short.csv")
    _write_csv(tmp_path / "unknown.csv", ["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"],
               [["1", "/m/9", "0.1", "0.2", "0.1", "0.2"]])
    with pytest.raises(ValueError, match="not in the class descriptions"):
        load_open_images(tmp_path / "classes.csv", image_dir, tmp_path / "unknown.csv")


def test_processor_maps_boxes_through_the_centre_crop():
    processor = DoveImageProcessor(size=32)
    # 200x100 → 64x32, crop columns 16..48: a box on the left third is cut, the centre survives.
    boxes = processor.transform_boxes([(0.0, 0.0, 0.1, 1.0), (0.25, 0.0, 0.75, 0.5)], (200, 100))
    assert boxes.tolist() == [[0.0, 0.0, 32.0, 16.0]]
    squash = DoveImageProcessor(size=32, resize_mode="squash").transform_boxes([(0.5, 0.5, 1.0, 1.0)], (200, 100))
    assert squash.tolist() == [[16.0, 16.0, 32.0, 32.0]]


def write_visual_genome(root, with_image_data=True):
    """Visual Genome's own layout: images split over VG_100K and VG_100K_2, image_data.json, region descriptions."""
    for folder, image_id, size in (("VG_100K", 1, (200, 100)), ("VG_100K_2", 2, (60, 80))):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, "white").save(root / folder / f"{image_id}.jpg")
    image_data = [{"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg", "width": 200,
                   "height": 100},
                  {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg", "width": 60,
                   "height": 80}]
    if with_image_data:
        (root / "image_data.json").write_text(json.dumps(image_data))
    regions = [{"id": 1, "regions": [{"image_id": 1, "phrase": "a red ball", "x": 10, "y": 20, "width": 40,
                                      "height": 30}]},
               {"id": 2, "regions": [{"image_id": 2, "phrase": "the sky", "x": 0, "y": 0, "width": 30, "height": 40}]}]
    (root / "region_descriptions.json").write_text(json.dumps(regions))
    return root


@pytest.mark.parametrize("with_image_data", [True, False])
def test_visual_genome_in_its_own_layout(tmp_path, with_image_data):
    from dove_vlm.data.grounding import visual_genome_files

    files = visual_genome_files(write_visual_genome(tmp_path, with_image_data))
    samples = load_visual_genome(files["region_descriptions"], files["image_dir"], files["question_answers"],
                                 image_data=files["image_data"])
    assert [s.text for s in samples] == ["a red ball", "the sky"]
    assert samples[0].image.endswith("VG_100K/1.jpg") and samples[1].image.endswith("VG_100K_2/2.jpg")
    assert samples[1].meta["size"] == (60, 80) and samples[1].boxes == [(0.0, 0.0, 0.5, 0.5)]
    with pytest.raises(FileNotFoundError, match="neither region_descriptions.json"):
        visual_genome_files(tmp_path / "VG_100K")


def test_open_images_is_relationships_name_attributes_and_the_folder_is_found(tmp_path, image_dir):
    from dove_vlm.data.grounding import open_images_files

    root = tmp_path / "oi"
    (root / "train").mkdir(parents=True)
    Image.new("RGB", (50, 50), "black").save(root / "train" / "1.jpg")
    _write_csv(root / "oidv7-class-descriptions-boxable.csv", ["LabelName", "DisplayName"], [["/m/2", "Table"]])
    _write_csv(root / "oidv6-attributes-description.csv", None, [["/m/w", "Wooden"]])
    _write_csv(root / "oidv6-train-annotations-vrd.csv", ["ImageID", "LabelName1", "LabelName2", "XMin1", "XMax1",
                                                           "YMin1", "YMax1", "XMin2", "XMax2", "YMin2", "YMax2",
                                                           "RelationshipLabel"],
               [["1", "/m/2", "/m/w", "0.1", "0.5", "0.1", "0.5", "0.1", "0.5", "0.1", "0.5", "is"]])
    files = open_images_files(root)
    assert files["image_dir"] == root / "train" and files["boxes"] is None
    samples = load_open_images(files["class_descriptions"], files["image_dir"], files["boxes"], files["relationships"],
                               attributes=files["attributes"])
    assert [s.text for s in samples] == ["table is wooden"]
    with pytest.raises(ValueError, match="attribute descriptions CSV"):
        load_open_images(files["class_descriptions"], files["image_dir"], None, files["relationships"])
    with pytest.raises(FileNotFoundError, match="Open Images' CSV files"):
        open_images_files(root / "train")
