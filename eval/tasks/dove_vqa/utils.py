"""Prompt building and scoring of the local DOVE VQA tasks (`_default_template_yaml`).

A data file is a json list (or parquet table) of records `{"id", "image", "question", "answer"[, "type"]}`;
`image` is a path (absolute, or relative to the folder given at export time; `dove eval export` writes absolute
paths). Answers are compared after the VQA normalisation (`dove_vlm.llava.vqa.normalize_answer`: case, punctuation,
articles, number words), one reference answer per question, so a question scores 0 or 1.
"""

from __future__ import annotations

import os

REQUIRED_FIELDS = ("image", "question", "answer")


def validate_records(records, source: str = "the task data") -> None:
    """Raise `ValueError` for an empty set or a record without the required fields, `FileNotFoundError` for a
    missing image; each message names the record."""
    if len(records) == 0:
        raise ValueError(f"{source} is empty: a VQA task needs at least one question.")
    for i, record in enumerate(records):
        missing = [f for f in REQUIRED_FIELDS if record.get(f) in (None, "")]
        if missing:
            raise ValueError(f"{source}: record {i} (id {record.get('id', i)!r}) lacks {', '.join(missing)}; every "
                             f"record needs {', '.join(REQUIRED_FIELDS)}.")
        for name in ("image", "question"):
            if not isinstance(record[name], str):
                raise ValueError(f"{source}: record {i} (id {record.get('id', i)!r}): field {name!r} must be a string, "
                                 f"got {type(record[name]).__name__}.")
        if isinstance(record["answer"], (bool, list, dict)):
            raise ValueError(f"{source}: record {i} (id {record.get('id', i)!r}): field 'answer' must be a string or "
                             f"a number, got {type(record['answer']).__name__}.")
        if not os.path.isfile(record["image"]):
            raise FileNotFoundError(f"{source}: record {i} (id {record.get('id', i)!r}) names image "
                                    f"{record['image']!r}, which does not exist.")


def dove_vqa_process_docs(dataset):
    validate_records(dataset.remove_columns([c for c in dataset.column_names if c not in REQUIRED_FIELDS + ("id",)]),
                     "the dove_vqa task data")
    return dataset


def dove_vqa_doc_to_visual(doc):
    from PIL import Image

    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def dove_vqa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def dove_vqa_process_results(doc, results):
    from dove_vlm.llava.vqa import answers_match

    prediction = results[0] if results else ""
    return {"vqa_accuracy": 100.0 * float(answers_match(prediction, str(doc["answer"])))}
