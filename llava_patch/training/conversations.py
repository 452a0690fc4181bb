"""The user's training data in LLaVA's conversation format (`dove llava-train --data-path FILE.json`).

A JSON list of samples:

    {"id": "000042", "image": "coco/000042.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                       {"from": "gpt", "value": "A red cup."},
                       {"from": "human", "value": "What colour is the wall?"},
                       {"from": "gpt", "value": "White."}]}

`image` is relative to `--image-folder` (default: the file's folder); a sample without `image` is text-only.
Turns alternate `human` (or `user`) and `gpt` (or `assistant`), starting with a human turn. A sample with an
image has exactly one `<image>` marker, in a human turn; a text-only sample has none.

Each sample becomes one training example: a list of turn records `{image, question, answer, type, id, ...}`,
like the embedded VQA records, with the marker removed from the question and `marker: True` on the turn that
carries the image. For a Q-DOVE tower in query mode (`split_turns=True`) a K-turn sample becomes K examples: the
k-th holds turns 1..k, its image encoded with the k-th human turn as the query, and only the k-th answer is
trained (the earlier turns are context, `label: False`).

Bad input is a `ConversationError` that names the file and the sample (index and id): a file that is not JSON or
not a list, a sample that is not an object or has no `conversations` list, a turn without `from` / `value` or
with an unknown role, turns out of order or a question without an answer, an empty answer, more or fewer
`<image>` markers than images, a missing image file. With `bad_samples="skip"` such samples are left out
instead, with one warning naming each (and the count); a file without a single usable sample is still an error.
A corrupt image is found when it is first decoded (`ImageLoadError`, naming the file and the sample).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from dove_vlm.data.images import load_image

IMAGE_MARKER = "<image>"
HUMAN, GPT = ("human", "user"), ("gpt", "assistant")
BAD_SAMPLES = ("error", "skip")


class ConversationError(ValueError):
    """A conversation file or sample that cannot be trained on (the message names the file and the sample)."""


def _sample_name(path: Path, index: int, sample) -> str:
    sid = sample.get("id") if isinstance(sample, dict) else None
    return f"{path}: sample {index}" + (f" (id {sid!r})" if sid is not None else "")


def _turns(sample: dict, name: str) -> list[tuple[str, str]]:
    """`(question, answer)` pairs of a sample, checked."""
    conversations = sample.get("conversations")
    if not isinstance(conversations, list):
        raise ConversationError(f"{name} has no 'conversations' list.")
    if not conversations:
        raise ConversationError(f"{name} has an empty 'conversations' list.")
    pairs = []
    for t, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"{name}, turn {t}: every turn needs 'from' and 'value' (got "
                                    f"{turn if not isinstance(turn, dict) else sorted(turn)!r}).")
        role, value = str(turn["from"]).lower(), turn["value"]
        if not isinstance(value, str):
            raise ConversationError(f"{name}, turn {t}: 'value' must be text, got {type(value).__name__}.")
        expected = HUMAN if t % 2 == 0 else GPT
        if role not in HUMAN + GPT:
            raise ConversationError(f"{name}, turn {t}: unknown role {turn['from']!r}; use 'human' and 'gpt'.")
        if role not in expected:
            raise ConversationError(f"{name}, turn {t}: expected a {expected[0]!r} turn, got {turn['from']!r} "
                                    "(turns alternate human, gpt, starting with human).")
        if role in GPT:
            if not value.strip():
                raise ConversationError(f"{name}, turn {t}: empty answer; a sample with nothing to learn is refused "
                                        "rather than trained as an empty one.")
            if IMAGE_MARKER in value:
                raise ConversationError(f"{name}, turn {t}: the answer holds an {IMAGE_MARKER} marker; only human "
                                        "turns carry the image.")
            pairs[-1] = (pairs[-1][0], value.strip())
        else:
            pairs.append((value, None))
    if pairs[-1][1] is None:
        raise ConversationError(f"{name}: the last human turn has no answer.")
    return pairs


def _image_of(sample: dict, name: str, image_folder: Path) -> str | None:
    image = sample.get("image")
    if image is None or image == "":
        return None
    if isinstance(image, list):
        if len(image) != 1:
            raise ConversationError(f"{name} has {len(image)} images; dove llava-train takes one image per sample.")
        image = image[0]
    if not isinstance(image, str):
        raise ConversationError(f"{name}: 'image' must be a file name, got {type(image).__name__}.")
    path = Path(image) if os.path.isabs(image) else image_folder / image
    if not path.is_file():
        raise ConversationError(f"{name}: image file {str(path)!r} not found (image folder {str(image_folder)!r}).")
    return str(path)


def parse_sample(sample, index: int, path: Path, image_folder: Path) -> list[dict]:
    """The turn records of one sample (see the module docstring); a `ConversationError` names what is wrong."""
    name = _sample_name(path, index, sample)
    if not isinstance(sample, dict):
        raise ConversationError(f"{name} is a {type(sample).__name__}, not an object with 'conversations'.")
    pairs = _turns(sample, name)
    image = _image_of(sample, name, image_folder)
    markers = [q.count(IMAGE_MARKER) for q, _ in pairs]
    wanted = 1 if image is not None else 0
    if sum(markers) != wanted:
        raise ConversationError(f"{name} has {sum(markers)} {IMAGE_MARKER} markers for {wanted} image(s); a sample "
                                f"with an image needs exactly one marker, a text-only sample none.")
    sid = sample.get("id", index)
    records = []
    for t, ((question, answer), count) in enumerate(zip(pairs, markers)):
        text = " ".join(question.replace(IMAGE_MARKER, " ").split()) if count else question.strip()
        records.append({"image": image, "question": text, "answer": answer, "type": "user", "id": sid,
                        "source": name, "marker": bool(count), "turn": t})
    if image is None:
        for r in records:
            r["query"] = None
    return records


def load_conversations(data_path: str | os.PathLike, image_folder: str | os.PathLike | None = None,
                       bad_samples: str = "error", split_turns: bool = False) -> list[list[dict]]:
    """Training examples (lists of turn records) of a LLaVA-format conversation file.

    Args:
        data_path: the JSON file (a list of samples).
        image_folder: where the samples' `image` paths start (default: the file's folder).
        bad_samples: `error` (default) stops at the first bad sample; `skip` leaves bad samples out with a warning.
        split_turns: one example per human turn (turns 1..k, only the k-th answer trained; for Q-DOVE queries).
    """
    if bad_samples not in BAD_SAMPLES:
        raise ValueError(f"bad_samples must be one of {', '.join(BAD_SAMPLES)}, got {bad_samples!r}.")
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file {str(path)!r} does not exist.")
    folder = Path(image_folder) if image_folder else path.parent
    if image_folder and not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist.")
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConversationError(f"{path} is not a text file ({err}).") from None
    except json.JSONDecodeError as err:
        raise ConversationError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}. "
                                "LLaVA's format is one JSON list of samples.") from None
    if not isinstance(samples, list):
        raise ConversationError(f"{path} holds a JSON {type(samples).__name__}, not a list of samples "
                                "[{\"id\", \"image\", \"conversations\": [...]}, ...].")
    if not samples:
        raise ConversationError(f"{path} holds no samples (an empty list).")
    examples, skipped = [], []
    for index, sample in enumerate(samples):
        try:
            records = parse_sample(sample, index, path, folder)
        except ConversationError as err:
            if bad_samples == "error":
                raise
            skipped.append(str(err))
            continue
        if split_turns and len(records) > 1:
            for k in range(len(records)):
                turn = [dict(r, label=(i == k)) for i, r in enumerate(records[: k + 1])]
                examples.append(turn)
        else:
            examples.append(records)
    for message in skipped:
        warnings.warn(f"skipped: {message}", stacklevel=2)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} of {len(samples)} samples (--bad-samples skip).", stacklevel=2)
    if not examples:
        raise ConversationError(f"{path}: none of its {len(samples)} samples can be trained on.")
    return examples


def load_record_image(record: dict):
    """The record's image as a PIL image (decoding a path on first use; a corrupt file names the sample)."""
    from dove_vlm.data.images import ImageLoadError

    image = record["image"]
    if not isinstance(image, (str, os.PathLike)):
        return image
    try:
        return load_image(image)
    except ImageLoadError as err:
        raise ImageLoadError(f"{record.get('source', 'a training sample')}: {err}") from None
