"""LLaVA-format conversation files (`dove llava-train --data-path`): parsing, Q-DOVE turn splitting, and a clear
error (or a documented skip) for every kind of bad input; a bad sample never trains as an empty one."""

import json
import warnings

import pytest
from PIL import Image

from dove_vlm.data.images import ImageLoadError
from llava_patch.training.conversations import ConversationError, load_conversations, load_record_image


def _good(image="a.png", sid="s0"):
    return {"id": sid, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is the circle?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "is it on the left?"}, {"from": "gpt", "value": "yes"}]}


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp_path


def _write(folder, samples, name="data.json"):
    path = folder / name
    path.write_text(samples if isinstance(samples, str) else json.dumps(samples))
    return path


def test_parses_multi_turn_and_text_only_samples(folder):
    text_only = {"id": "t", "conversations": [{"from": "human", "value": "say hi"}, {"from": "gpt", "value": "hi"}]}
    examples = load_conversations(_write(folder, [_good(), text_only]))
    assert len(examples) == 2
    first, second = examples
    assert [r["question"] for r in first] == ["what colour is the circle?", "is it on the left?"]
    assert [r["answer"] for r in first] == ["red", "yes"] and [r["marker"] for r in first] == [True, False]
    assert first[0]["image"].endswith("a.png") and first[0]["id"] == "s0"
    assert second[0]["image"] is None and second[0]["query"] is None
    assert load_record_image(first[0]).size == (40, 30)


def test_query_mode_splits_turns_with_context(folder):
    examples = load_conversations(_write(folder, [_good()]), split_turns=True)
    assert [len(e) for e in examples] == [1, 2]
    assert [r.get("label") for r in examples[1]] == [False, True]  # the first turn is context only
    assert examples[1][-1]["question"] == "is it on the left?"  # the second example's query


def test_image_folder_is_where_images_start(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("data")
    path = _write(other, [_good()])
    with pytest.raises(ConversationError, match="image file .*a.png.* not found"):
        load_conversations(path)
    assert load_conversations(path, image_folder=folder)[0][0]["image"] == str(folder / "a.png")
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_conversations(path, image_folder=folder / "nope")


BAD = [
    ("not json", "{not json", r"not valid JSON: .* line 1"),
    ("not a list", {"id": 1}, "holds a JSON dict, not a list"),
    ("empty list", [], "holds no samples"),
    ("sample not an object", ["hello"], r"sample 0 is a str"),
    ("no conversations", [{"id": "x", "image": "a.png"}], r"sample 0 \(id 'x'\) has no 'conversations' list"),
    ("turn without value", [{"id": "x", "image": "a.png", "conversations": [{"from": "human"}]}],
     r"turn 0: every turn needs 'from' and 'value'"),
    ("turn without from", [{"id": "x", "conversations": [{"value": "hi"}]}], "every turn needs 'from' and 'value'"),
    ("unknown role", [{"id": "x", "conversations": [{"from": "robot", "value": "hi"}]}], "unknown role 'robot'"),
    ("out of order", [{"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}], "expected a 'human' turn"),
    ("no answer", [{"id": "x", "conversations": [{"from": "human", "value": "hi"}]}], "has no answer"),
    ("empty answer", [{"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                       {"from": "gpt", "value": "  "}]}],
     "empty answer"),
    ("two markers", [dict(_good(), conversations=[{"from": "human", "value": "<image><image> q"},
                                                  {"from": "gpt", "value": "a"}])], "2 <image> markers for 1 image"),
    ("no marker", [dict(_good(), conversations=[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])],
     "0 <image> markers for 1 image"),
    ("marker without image", [{"id": "x", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                            {"from": "gpt", "value": "a"}]}],
     "1 <image> markers for 0 image"),
    ("two images", [dict(_good(), image=["a.png", "a.png"])], "has 2 images"),
    ("missing image", [_good(image="gone.png")], r"sample 0 \(id 's0'\): image file .*gone.png.* not found"),
]


@pytest.mark.parametrize("what, samples, match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(folder, what, samples, match):
    path = _write(folder, samples)
    with pytest.raises(ConversationError, match=match) as err:
        load_conversations(path)
    assert str(path) in str(err.value)  # every message names the file


def test_bad_samples_skip_leaves_them_out_with_warnings(folder):
    samples = [_good(sid="ok"), {"id": "bad1"}, _good(image="gone.png", sid="bad2")]
    with pytest.warns(UserWarning) as caught:
        examples = load_conversations(_write(folder, samples), bad_samples="skip")
    assert [e[0]["id"] for e in examples] == ["ok"]
    text = " ".join(str(w.message) for w in caught)
    assert "'bad1'" in text and "'bad2'" in text and "skipped 2 of 3 samples" in text
    with pytest.raises(ConversationError, match="none of its 1 samples"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_conversations(_write(folder, [{"id": "bad"}]), bad_samples="skip")


def test_corrupt_image_names_the_sample(folder):
    examples = load_conversations(_write(folder, [_good(image="broken.png", sid="c7")]))
    with pytest.raises(ImageLoadError, match=r"id 'c7'.*broken.png"):
        load_record_image(examples[0][0])
