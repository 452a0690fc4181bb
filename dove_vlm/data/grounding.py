"""Grounding data for Q-DOVE: (image, text query, boxes) samples from the embedded scenes, Visual Genome
(region descriptions, question-answer pairs with object boxes) and Open Images (boxes and relationship
annotations turned into text), all read from local files.

Boxes are stored normalised, `(x0, y0, x1, y1)` in [0, 1] of the original image, so they survive any resize.
Documented handling of bad boxes: a box with zero or negative area is dropped; a box partly outside the image
is clipped to it; a box entirely outside is dropped. Samples left without boxes are skipped, and a warning
says how many boxes and samples were dropped and from which file."""

from __future__ import annotations

import csv
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .images import image_size
from .synthetic import SyntheticScenes


@dataclass
class GroundingSample:
    image: Image.Image | str  # a PIL image or a path, opened lazily
    text: str
    boxes: list[tuple[float, float, float, float]]  # normalised xyxy
    kind: str = "phrase"  # "phrase" | "question"
    answer: str | None = None
    meta: dict = field(default_factory=dict)


def clean_box(box, width: float = 1.0, height: float = 1.0) -> tuple[float, float, float, float] | None:
    """Normalise and clip an `(x0, y0, x1, y1)` box given in pixels of a `width`×`height` image; `None` when
    it has no area inside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, min(x0, x1) / width), min(1.0, max(x0, x1) / width)
    y0, y1 = max(0.0, min(y0, y1) / height), min(1.0, max(y0, y1) / height)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return (x0, y0, x1, y1)


def union_box(boxes) -> tuple[float, float, float, float]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


class _DropCounter:
    def __init__(self, source: str):
        self.source, self.boxes, self.samples = source, 0, 0

    def report(self) -> None:
        if self.boxes or self.samples:
            warnings.warn(f"{self.source}: dropped {self.boxes} boxes with no area inside the image and "
                          f"{self.samples} samples left without boxes.", stacklevel=3)


def synthetic_grounding(scenes: SyntheticScenes, kinds: tuple[str, ...] = ("phrase", "question"),
                        unboxed: bool = False) -> list[GroundingSample]:
    """Every phrase and every question with boxes of the embedded scenes (scenes are rendered here). With
    `unboxed`, also the questions about something the scene does not hold ("is there a purple cross?" when
    there is none), with no boxes: their query names no region, so the whole image is the target."""
    samples = []
    size = scenes.image_size
    for index in range(len(scenes)):
        scene = scenes[index]
        entries = []
        if "phrase" in kinds:
            entries += [("phrase", p["text"], p["boxes"], None) for p in scene.phrases]
        if "question" in kinds:
            entries += [("question", q["question"], q["boxes"], q["answer"]) for q in scene.vqa]
        for kind, text, boxes, answer in entries:
            cleaned = [b for b in (clean_box(b, size, size) for b in boxes) if b is not None]
            if cleaned or (unboxed and kind == "question" and not boxes):
                samples.append(GroundingSample(scene.image, text, cleaned, kind, answer, {"scene": index}))
    return samples


def _image_size(path: Path) -> tuple[int, int]:
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"image file not found: {path} (referenced by the annotations).")
    return image_size(path)


VG_IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")


class _VisualGenomeImages:
    """Where a Visual Genome image is, and its size. With `image_data.json`, its `url` names the folder
    (`VG_100K` or `VG_100K_2`) and it gives the size (no image is opened); otherwise `<id>.jpg` is looked for in
    `image_dir`, then `image_dir/VG_100K`, then `image_dir/VG_100K_2`, and its size read from the file header."""

    def __init__(self, image_dir: str | os.PathLike, image_data: str | os.PathLike | None = None):
        self.root = Path(image_dir)
        self.folders = [self.root] + [self.root / name for name in VG_IMAGE_FOLDERS if (self.root / name).is_dir()]
        self.known: dict[str, tuple[Path, tuple[int, int]]] = {}
        for entry in _read_json(image_data) if image_data is not None else []:
            image_id = str(entry.get("image_id", entry.get("id")))
            folder = str(entry.get("url", "")).rstrip("/").split("/")[-2:-1]
            base = self.root / folder[0] if folder and (self.root / folder[0]).is_dir() else self.root
            if entry.get("width") and entry.get("height"):
                self.known[image_id] = (base / f"{image_id}.jpg", (int(entry["width"]), int(entry["height"])))

    def locate(self, image_id) -> tuple[Path, tuple[int, int]]:
        if str(image_id) in self.known:
            return self.known[str(image_id)]
        for folder in self.folders:
            path = folder / f"{image_id}.jpg"
            if path.is_file():
                self.known[str(image_id)] = (path, _image_size(path))
                return self.known[str(image_id)]
        tried = ", ".join(str(f) for f in self.folders)
        raise FileNotFoundError(f"image file not found: {image_id}.jpg (referenced by the annotations; looked in {tried}).")


def visual_genome_files(root: str | os.PathLike) -> dict:
    """The files of a Visual Genome folder in its own layout: `region_descriptions.json`, `question_answers.json`
    (optional), `image_data.json` (optional, recommended) and the images in `VG_100K/` and `VG_100K_2/`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Visual Genome folder not found: {root}")
    found = {name: root / f"{name}.json" for name in ("region_descriptions", "question_answers", "image_data")}
    found = {name: path if path.is_file() else None for name, path in found.items()}
    if found["region_descriptions"] is None and found["question_answers"] is None:
        raise FileNotFoundError(f"{root} holds neither region_descriptions.json nor question_answers.json (Visual "
                                "Genome's layout: those JSON files, image_data.json, VG_100K/ and VG_100K_2/).")
    return {"region_descriptions": found["region_descriptions"], "question_answers": found["question_answers"],
            "image_data": found["image_data"], "image_dir": root}


def load_visual_genome(region_descriptions: str | os.PathLike | None, image_dir: str | os.PathLike,
                       question_answers: str | os.PathLike | None = None, max_images: int | None = None,
                       image_data: str | os.PathLike | None = None) -> list[GroundingSample]:
    """Visual Genome from its own JSON files: `region_descriptions.json` (phrase + x/y/width/height) and
    `question_answers.json` (questions whose `q_objects`/`a_objects` carry x/y/w/h boxes); images are
    `<image_id>.jpg` under `image_dir` or its `VG_100K`/`VG_100K_2` folders (`image_data.json`, when given, says
    which and gives the sizes). Questions without object boxes are skipped (they cannot drive Q-DOVE). Images
    are not opened (only their headers, without `image_data`); each sample's `meta["size"]` is its image's size."""
    images = _VisualGenomeImages(image_dir, image_data)
    samples: list[GroundingSample] = []
    for path, kind in ((region_descriptions, "phrase"), (question_answers, "question")):
        if path is None:
            continue
        counter = _DropCounter(str(path))
        entries = _read_json(path)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of per-image entries, got {type(entries).__name__}.")
        for e, entry in enumerate(entries[:max_images]):
            field_name = "regions" if kind == "phrase" else "qas"
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: entry {e} is a JSON {type(entry).__name__}, not an object with {field_name}.")
            items = entry.get(field_name)
            if not isinstance(items, list):
                raise ValueError(f"{path}: entry {e} has no {field_name} field holding a list (keys: {sorted(entry)}).")
            for r, item in enumerate(items):
                where = f"{path}: entry {e}, {field_name}[{r}]"
                if not isinstance(item, dict):
                    raise ValueError(f"{where} is a JSON {type(item).__name__}, not an object.")
                image_id = item.get("image_id", entry.get("id", entry.get("image_id")))
                if not isinstance(image_id, (int, str)) or isinstance(image_id, bool) or not str(image_id).strip():
                    raise ValueError(f"{where} has no image_id (nor has its entry an id).")
                if isinstance(image_id, str) and (os.sep in image_id or "/" in image_id or image_id.startswith(".")):
                    raise ValueError(f"{where}: image_id {image_id!r} is not a plain name; images are "
                                     f"{image_dir}/<image_id>.jpg.")
                if kind == "phrase":
                    x, y, w, h = _numbers(item, ("x", "y", "width", "height"), where)
                    text, raw, answer = item.get("phrase", ""), [(x, y, x + w, y + h)], None
                else:
                    text, answer = item.get("question", ""), item.get("answer")
                    objects = list(item.get("q_objects") or []) + list(item.get("a_objects") or [])
                    raw = []
                    for o, obj in enumerate(objects):
                        size = tuple(k if k in obj else alt for k, alt in (("w", "width"), ("h", "height"))) \
                            if isinstance(obj, dict) else ("w", "h")
                        x, y, w, h = _numbers(obj, ("x", "y") + size, f"{where}, object {o}")
                        raw.append((x, y, x + w, y + h))
                    if not raw:
                        continue
                if not isinstance(text, str):
                    raise ValueError(f"{where}: {'phrase' if kind == 'phrase' else 'question'} must be a string, got "
                                     f"{type(text).__name__}.")
                if not text.strip():
                    counter.samples += 1
                    continue
                image_path, (width, height) = images.locate(image_id)
                boxes = [clean_box(b, width, height) for b in raw]
                counter.boxes += sum(b is None for b in boxes)
                boxes = [b for b in boxes if b is not None]
                if not boxes:
                    counter.samples += 1
                    continue
                samples.append(GroundingSample(str(image_path), text.strip(), boxes, kind, answer,
                                               {"image_id": image_id, "size": (width, height)}))
        counter.report()
    return samples


def load_open_images(class_descriptions: str | os.PathLike, image_dir: str | os.PathLike,
                     boxes: str | os.PathLike | None = None, relationships: str | os.PathLike | None = None,
                     max_rows: int | None = None, attributes: str | os.PathLike | None = None) -> list[GroundingSample]:
    """Open Images from its CSV files: class descriptions (`LabelName,DisplayName`, with or without a
    header), bounding boxes (`ImageID,...,LabelName,...,XMin,XMax,YMin,YMax`, normalised) → "the <class>", and
    visual relationships (`ImageID,LabelName1,LabelName2,XMin1,...,RelationshipLabel`) → "<a> <relation> <b>"
    with the two boxes merged into one; for the "is" relationship, LabelName2 is an attribute, named by the
    attribute descriptions (`attributes`, same format: "the table is wooden"). Images are `image_dir/<ImageID>.jpg`."""
    names = _read_class_names(class_descriptions)
    if attributes is not None:
        names = {**_read_class_names(attributes), **names}
    image_dir = Path(image_dir)
    samples: list[GroundingSample] = []

    def add(rows_path, make):
        counter = _DropCounter(str(rows_path))
        with open(rows_path, newline="") as handle:
            for n, row in enumerate(csv.DictReader(handle)):
                if max_rows is not None and n >= max_rows:
                    break
                text, raw = make(row, rows_path)
                box = clean_box(raw)
                if box is None:
                    counter.boxes += 1
                    counter.samples += 1
                    continue
                image_id = row["ImageID"]
                samples.append(GroundingSample(str(image_dir / f"{image_id}.jpg"), text, [box], "phrase", None,
                                               {"image_id": image_id}))
        counter.report()

    def name_of(label, path):
        if label not in names:
            raise ValueError(f"{path}: label {label!r} is not in the class descriptions {class_descriptions}.")
        return names[label].lower()

    def from_box(row, path):
        _require(row, ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"), path)
        return f"the {name_of(row['LabelName'], path)}", (row["XMin"], row["YMin"], row["XMax"], row["YMax"])

    def from_relationship(row, path):
        keys = ("ImageID", "LabelName1", "LabelName2", "RelationshipLabel") + tuple(
            f"{c}{i}" for i in (1, 2) for c in ("XMin", "XMax", "YMin", "YMax"))
        _require(row, keys, path)
        first = (row["XMin1"], row["YMin1"], row["XMax1"], row["YMax1"])
        second = (row["XMin2"], row["YMin2"], row["XMax2"], row["YMax2"])
        relation = row["RelationshipLabel"].replace("_", " ")
        if relation == "is" and row["LabelName2"] not in names:
            raise ValueError(f"{path}: attribute {row['LabelName2']!r} of an 'is' relationship is in neither the class "
                             "nor the attribute descriptions; pass the attribute descriptions CSV "
                             "(oidv6-attributes-description.csv).")
        text = f"{name_of(row['LabelName1'], path)} {relation} {name_of(row['LabelName2'], path)}"
        return text, union_box([tuple(map(float, first)), tuple(map(float, second))])

    if boxes is not None:
        add(boxes, from_box)
    if relationships is not None:
        add(relationships, from_relationship)
    return samples


def _numbers(item, keys, where: str) -> tuple[float, ...]:
    """The numeric fields `keys` of an annotation object, or a ValueError naming the object and the field."""
    if not isinstance(item, dict):
        raise ValueError(f"{where} is a JSON {type(item).__name__}, not an object with {', '.join(keys)}.")
    values = []
    for key in keys:
        value = item.get(key)
        if value is None:
            raise ValueError(f"{where} has no {key!r} (a box needs {', '.join(keys)}).")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
            raise ValueError(f"{where}: {key!r} must be a finite number, got {value!r}.")
        values.append(float(value))
    return tuple(values)


def open_images_files(root: str | os.PathLike) -> dict:
    """The files of an Open Images folder, found by their official names: `*class-descriptions*.csv`,
    `*attributes-description*.csv` (optional), `*annotations-bbox*.csv` and/or `*annotations-vrd*.csv`
    (relationships); the images in `train/`, `images/` or the folder itself."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Open Images folder not found: {root}")

    def first(*patterns):
        for pattern in patterns:
            found = sorted(root.glob(pattern))
            if found:
                return found[0]
        return None

    files = {"class_descriptions": first("*class-descriptions*.csv", "*class_descriptions*.csv"),
             "attributes": first("*attributes-description*.csv", "*attribute_descriptions*.csv"),
             "boxes": first("*annotations-bbox*.csv", "*bbox*.csv"),
             "relationships": first("*annotations-vrd*.csv", "*relationship*.csv")}
    if files["class_descriptions"] is None or (files["boxes"] is None and files["relationships"] is None):
        raise FileNotFoundError(f"{root} does not hold Open Images' CSV files (looked for *class-descriptions*.csv and "
                                "*annotations-bbox*.csv / *annotations-vrd*.csv); pass them explicitly as "
                                "oi:IMAGE_DIR:CLASSES_CSV:BOXES_CSV[:RELATIONSHIPS_CSV[:ATTRIBUTES_CSV]].")
    files["image_dir"] = next((root / n for n in ("train", "images") if (root / n).is_dir()), root)
    return files


def _require(row: dict, keys, path) -> None:
    missing = [k for k in keys if k not in row or row[k] in (None, "")]
    if missing:
        raise ValueError(f"{path}: a row misses the field(s) {missing}.")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a JSON annotation file.") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from err


def _read_class_names(path) -> dict[str, str]:
    names = {}
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            if len(row) >= 2 and row[0] not in ("LabelName", "label"):
                names[row[0]] = row[1]
    if not names:
        raise ValueError(f"{path}: no class descriptions (expected rows 'LabelName,DisplayName').")
    return names
