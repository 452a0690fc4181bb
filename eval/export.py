"""Local lmms-eval VQA tasks (`dove eval export`): the embedded split or a user VQA file written as json data +
images + a task YAML that includes `eval/tasks/dove_vqa/_default_template_yaml`; records checked one by one; a
moved task folder re-resolved (`materialize_task`)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "tasks" / "dove_vqa" / "_default_template_yaml"
REQUIRED_FIELDS = ("image", "question", "answer")


def _write_task(records: list[dict], output_dir: Path, task_name: str) -> Path:
    """The data file and the task YAML, both with absolute paths (lmms-eval reads them where they were written);
    each record also keeps its image relative to `output_dir` (`image_relative`) where it lies inside it, so that
    `materialize_task` re-resolves a moved or copied task folder."""
    from eval.tasks.dove_vqa.utils import validate_records

    validate_records(records, f"task {task_name}")
    root = output_dir.resolve()
    portable = []
    for r in records:
        image = Path(r["image"]).resolve()
        relative = {"image_relative": str(image.relative_to(root))} if image.is_relative_to(root) else {}
        portable.append(dict(r, image=str(image), **relative))
    data_file = output_dir / f"{task_name}.json"
    data_file.write_text(json.dumps(portable, indent=1))
    return _write_task_yaml(output_dir / "tasks", task_name, data_file.resolve())


def _write_task_yaml(task_dir: Path, task_name: str, data_file: Path) -> Path:
    task_dir.mkdir(parents=True, exist_ok=True)
    task_yaml = task_dir / f"{task_name}.yaml"
    task_yaml.write_text(f"task: {task_name}\ninclude: {TEMPLATE}\ndataset_kwargs:\n  data_files:\n"
                         f"    test: {data_file}\n")
    return task_yaml


def materialize_task(task_yaml: str | os.PathLike, work_dir: str | os.PathLike) -> Path:
    """A copy of an exported task in `work_dir/task/` with every path absolute and resolved now: this
    installation's template, the data file beside the task folder (`tasks/NAME.yaml` → `NAME.json`) and each
    image relative to the data file's folder. A task folder that was moved, copied or exported on another
    machine then still runs. A task YAML not written by `dove eval export` is returned unchanged."""
    task, include = task_of(task_yaml)
    data_file = include.parent / f"{task}.json"
    text = Path(task_yaml).read_text()
    if "_default_template_yaml" not in text or not data_file.is_file():
        return Path(task_yaml)
    records = read_records(data_file)  # relative image paths resolved against the data file's folder
    out = Path(work_dir).resolve() / "task"
    out.mkdir(parents=True, exist_ok=True)
    resolved = out / f"{task}.json"
    resolved.write_text(json.dumps(records, indent=1))
    return _write_task_yaml(out / "tasks", task, resolved)


def export_embedded(output_dir: str | os.PathLike, split: str = "test", num_scenes: int = 250, seed: int = 0,
                    image_size: int = 32, questions_per_scene: int | None = 2, task_name: str | None = None) -> Path:
    """Write the embedded VQA split (`build_vqa_split` with `dove llava-train`'s evaluation defaults, so the
    same questions as its `eval`) as a local lmms-eval task; returns the task YAML."""
    from dove_vlm.llava.vqa import build_vqa_split

    task_name = check_task_name(task_name) if task_name is not None else f"dove_vqa_{split}"
    out = Path(output_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, r in enumerate(build_vqa_split(split, num_scenes, seed, image_size, questions_per_scene)):
        image = out / "images" / f"{split}_{seed}_{image_size}_{r['scene']:05d}.png"
        if not image.exists():  # the name holds everything the picture depends on
            r["image"].save(image)
        records.append({"id": i, "image": str(image), "question": r["question"], "answer": r["answer"],
                        "type": r["type"], "scene": r["scene"]})
    task_yaml = _write_task(records, out, task_name)
    (out / f"{task_name}.export.json").write_text(json.dumps(
        {"split": split, "num_scenes": num_scenes, "seed": seed, "image_size": image_size,
         "questions_per_scene": questions_per_scene}))
    return task_yaml


TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def check_task_name(name: str) -> str:
    """A task name is a file name inside the export folder: a safe identifier (letters, digits, `_`)."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ValueError(f"--task-name {name!r} is not a safe task name: use letters, digits and _ (not starting with "
                         "a digit, at most 100 characters), e.g. my_vqa.")
    return name


def default_task_name(path: str | os.PathLike) -> str:
    """The task name of a user file when none is given: its stem made a safe identifier."""
    name = re.sub(r"\W", "_", Path(path).stem, flags=re.ASCII)[:100] or "task"
    return name if not name[0].isdigit() else f"task_{name}"[:100]


def _plain(value):
    """numpy scalars and arrays (parquet rows) as plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _parse_json_file(path: Path) -> tuple[list, list[str]]:
    """The records of a json list or jsonl file, and where each one is (`line N` / `record N`)."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ValueError(f"VQA file {path} is a folder, not a json/jsonl/parquet file.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {err.start}: {err.reason}); save the file as "
                         "UTF-8.") from None
    if path.suffix == ".jsonl":
        records, where = [], []
        lines = text.split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                cut = " (the line is cut short)" if number == len(lines) or err.pos >= len(line.rstrip()) else ""
                raise ValueError(f"{path}, line {number}: not valid JSON{cut}: {err.msg} (column {err.colno}); every "
                                 "line must be one complete JSON record.") from None
            where.append(f"line {number}")
        return records, where
    try:
        records = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}).") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} holds a JSON {type(records).__name__}; it must hold a list of records "
                         "{image, question, answer}.")
    return records, [f"record {i}" for i in range(len(records))]


def _text_field(record: dict, name: str, where: str, numbers: bool = False) -> str:
    value = record.get(name)
    if numbers and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where} lacks {name}; every record needs {', '.join(REQUIRED_FIELDS)}.")
    if not isinstance(value, str):
        kind = "a string or a number" if numbers else "a string"
        raise ValueError(f"{where}: field {name!r} must be {kind}, got {type(value).__name__} {value!r:.60}.")
    return value


def read_records(path: str | os.PathLike, check_images: bool = True) -> list[dict]:
    """Records of a user VQA file (json list, jsonl or parquet), validated one by one; errors name the file, the
    line (jsonl) or record, and the field. `question` is a string, `answer` a string or a number (kept as text),
    `image` a path: absolute, or relative to the file's folder and inside it. With `check_images`, every image is
    decoded (a text file, a truncated image or one over the pixel limit is refused here, not when scored)."""
    from dove_vlm.data.images import load_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"VQA file {str(path)!r} does not exist.")
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            records = [{k: _plain(v) for k, v in r.items()} for r in pd.read_parquet(path).to_dict("records")]
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} cannot be read as parquet ({err}).") from err
        except Exception as err:  # pyarrow's own error types for corrupt files
            if type(err).__module__.split(".")[0] != "pyarrow":
                raise
            raise ValueError(f"{path} cannot be read as parquet ({err}).") from err
        where = [f"row {i}" for i in range(len(records))]
    else:
        records, where = _parse_json_file(path)
    folder = Path(os.path.abspath(path.parent))
    out, ids = [], {}
    for i, (r, at) in enumerate(zip(records, where)):
        at = f"{path}, {at}"
        if not isinstance(r, dict):
            raise ValueError(f"{at} is a JSON {type(r).__name__}, not a record {{image, question, answer}}.")
        r = dict(r)
        r.setdefault("id", i)
        if isinstance(r["id"], bool) or not isinstance(r["id"], (int, str)):
            raise ValueError(f"{at}: field 'id' must be an integer or a string, got {type(r['id']).__name__}.")
        if r["id"] in ids:
            raise ValueError(f"{at}: id {r['id']!r} is also the id of {ids[r['id']]}; ids must be unique.")
        ids[r["id"]] = at
        at = f"{at} (id {r['id']!r})"
        r["question"] = _text_field(r, "question", at)
        r["answer"] = _text_field(r, "answer", at, numbers=True)
        image = _text_field(r, "image", at)
        if "type" in r and r["type"] is not None and not isinstance(r["type"], str):
            raise ValueError(f"{at}: field 'type' must be a string, got {type(r['type']).__name__}.")
        if not os.path.isabs(os.path.expanduser(image)):
            resolved = Path(os.path.normpath(folder / image))
            if folder not in resolved.parents:
                raise ValueError(f"{at}: image {image!r} points outside the file's folder {folder}; relative image "
                                 "paths must stay inside it (or give an absolute path).")
            image = str(resolved)
        r["image"] = os.path.expanduser(image)
        moved = r.pop("image_relative", None)  # an exported task folder that was moved or copied
        if moved and isinstance(moved, str) and not os.path.isfile(r["image"]):
            resolved = Path(os.path.normpath(folder / moved))
            if folder in resolved.parents:
                r["image"] = str(resolved)
        if not os.path.isfile(r["image"]):
            raise FileNotFoundError(f"{at} names image {r['image']!r}, which does not exist.")
        if check_images:
            try:
                load_image(r["image"])
            except (ValueError, OSError) as err:  # not an image, truncated, over the pixel limit, unreadable
                raise ValueError(f"{at}: {err}") from err
        out.append(r)
    return out


def export_file(path: str | os.PathLike, output_dir: str | os.PathLike, task_name: str | None = None) -> Path:
    """A user VQA file (same format as the exported one) as a local lmms-eval task; returns the task YAML."""
    task_name = check_task_name(task_name) if task_name is not None else default_task_name(path)
    records = read_records(path)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return _write_task(records, out, task_name)


def task_of(task_yaml: str | os.PathLike) -> tuple[str, Path]:
    """`(task name, include dir)` of a task YAML written by an export."""
    path = Path(task_yaml)
    if not path.is_file():
        raise FileNotFoundError(f"task file {str(path)!r} does not exist; write one with `dove eval export`.")
    for line in path.read_text().splitlines():
        if line.startswith("task:"):
            return line.split(":", 1)[1].strip().strip("'\""), path.parent.resolve()
    raise ValueError(f"{path} has no `task:` line.")


def task_data_file(task_yaml: str | os.PathLike, recorded: str) -> str:
    """Where a task's data file is now: as recorded in its YAML, or, for an exported task folder that was moved or
    copied, the file of that name beside the `tasks/` folder (`materialize_task` then resolves its images)."""
    if os.path.isfile(recorded):
        return recorded
    moved = Path(task_yaml).resolve().parent.parent / Path(recorded).name
    return str(moved) if moved.is_file() else recorded


def check_task_data(task_yaml: str | os.PathLike) -> None:
    """Refuse a task whose local data files are missing before lmms-eval starts (it would try the hub)."""
    import yaml

    try:
        config = yaml.safe_load(Path(task_yaml).read_text()) or {}
    except yaml.YAMLError:  # `!function` tags etc.: leave the checks to lmms-eval
        return
    files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
    for name in files.values() if isinstance(files, dict) else [files]:
        for f in [name] if isinstance(name, str) else name:
            if "://" not in f and not Path(task_data_file(task_yaml, f)).is_file():
                raise FileNotFoundError(f"the data file {f} of task {task_yaml} does not exist; write it with "
                                        "`dove eval export`.")
