"""The embedded VQA set: records, the VQA answer normalisation, majority baselines, batched greedy evaluation."""

import pytest
import torch

from dove_vlm.llava.vqa import (
    QUESTION_TYPES,
    answers_match,
    build_prompt,
    CAPTION_QUESTION,
    build_vqa_split,
    caption_answer,
    evaluate_vqa,
    majority_baseline,
    normalize_answer,
)


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("two.", "2"), ("  The Red circle ", "red circle"), ("yes!", "yes"), ("a square", "square"),
    ("none", "0"), ("10", "10"), ("Left,", "left"), ("3,000", "3000"), ("dont", "don't"), ("an  apple\n", "apple"),
])
def test_normalize_answer_follows_the_vqa_evaluation(raw, expected):
    assert normalize_answer(raw) == expected


def test_answers_match_after_normalisation():
    assert answers_match("Three.", "3") and answers_match("the red", "red") and not answers_match("right", "left")


def test_build_vqa_split_is_deterministic_and_covers_every_type():
    records = build_vqa_split("test", 30, seed=0)
    again = build_vqa_split("test", 30, seed=0)
    assert [(r["question"], r["answer"]) for r in records] == [(r["question"], r["answer"]) for r in again]
    assert {r["type"] for r in records} == set(QUESTION_TYPES)
    assert all(set(r) == {"image", "question", "answer", "type", "scene"} for r in records)
    assert records[0]["image"].size == (32, 32)
    train = build_vqa_split("train", 30, seed=0)
    assert [r["image"].tobytes() for r in train[:3]] != [r["image"].tobytes() for r in records[:3]]


def test_questions_per_scene_limits_and_keeps_order():
    records = build_vqa_split("test", 40, seed=1, questions_per_scene=2)
    per_scene = {}
    for r in records:
        per_scene.setdefault(r["scene"], []).append(r)
    assert len(per_scene) == 40 and all(1 <= len(v) <= 2 for v in per_scene.values())
    full = build_vqa_split("test", 40, seed=1)
    full_questions = {(r["scene"], r["question"]) for r in full}
    assert all((r["scene"], r["question"]) in full_questions for r in records)
    with pytest.raises(ValueError, match="questions_per_scene"):
        build_vqa_split("test", 2, questions_per_scene=0)


def test_captions_list_every_object_left_to_right_and_share_the_image():
    from dove_vlm.data import SyntheticScenes

    records = build_vqa_split("train", 12, seed=2, questions_per_scene=2, captions=True)
    captions = [r for r in records if r["type"] == "caption"]
    assert len(captions) == 12 and all(r["question"] == CAPTION_QUESTION for r in captions)
    scenes = SyntheticScenes(12, image_size=32, seed=2, split="train")
    for record in captions:
        scene = scenes[record["scene"]]
        parts = record["answer"].split(", ") if scene.objects else []
        assert len(parts) == scene.num_objects
        for part, obj in zip(parts, sorted(scene.objects, key=lambda o: o.center)):
            assert part == f"{obj.color} {obj.shape} {'left' if obj.center[0] < 16 else 'right'}"
        same_scene = [r for r in records if r["scene"] == record["scene"]]
        assert all(r["image"] is record["image"] for r in same_scene)  # one tower pass per scene
    assert caption_answer([], 32) == "nothing"
    assert not any(r["type"] == "caption" for r in build_vqa_split("train", 12, seed=2))


def _rec(answer, kind):
    return {"question": "q", "answer": answer, "type": kind}


def test_majority_baselines_overall_and_per_type():
    train = [_rec("no", "existence")] * 5 + [_rec("red", "colour")] * 3 + [_rec("blue", "colour")] * 2 + \
            [_rec("2", "count")] * 2
    test = [_rec("no", "existence"), _rec("yes", "existence"), _rec("red", "colour"), _rec("blue", "colour"),
            _rec("two", "count")]
    base = majority_baseline(train, test)
    assert base["overall"] == {"answer": "no", "accuracy": pytest.approx(1 / 5)}
    assert base["per_type"]["answers"] == {"existence": "no", "colour": "red", "count": "2"}
    assert base["per_type"]["accuracy"] == pytest.approx(3 / 5)
    assert base["per_type"]["accuracy_by_type"] == {"count": 1.0, "colour": 0.5, "existence": 0.5}
    with pytest.raises(ValueError):
        majority_baseline([], test)


def test_prompt_uses_the_chat_template():
    from tests.llava.tiny_models import make_llava, make_tower

    _, processor = make_llava(make_tower("adaptive", query=False))
    assert build_prompt(processor, "how many objects are there?") == \
        "USER: <image>\nhow many objects are there? ASSISTANT:"


@pytest.fixture(scope="module")
def records():
    return build_vqa_split("test", 16, seed=0, questions_per_scene=1)  # the micro towers' lengths vary on these


def _model(path_dir, mode):
    from dove_vlm.llava import build_text_tokenizer, build_tiny_llava
    from dove_vlm.llava.saved import build_processor
    from dove_vlm.vision_tower import DoveVisionTower
    from llava_patch.training.data import vqa_texts

    tower = DoveVisionTower.from_pretrained(path_dir, mode=mode)
    tokenizer = build_text_tokenizer(vqa_texts())
    torch.manual_seed(0)
    model = build_tiny_llava(tower, tokenizer, hidden_size=32, intermediate_size=64)
    return model, build_processor(tower, tokenizer)


def test_evaluate_vqa_reports_accuracy_tokens_and_time(dove_dir, records):
    model, processor = _model(dove_dir, "adaptive")
    result = evaluate_vqa(model, processor, records, batch_size=4, keep_predictions=True)
    assert result["num_questions"] == len(records)
    assert 0.0 <= result["accuracy"] <= 1.0 and set(result["accuracy_by_type"]) <= set(QUESTION_TYPES)
    tower = model.model.vision_tower
    pixels = tower.image_processor([r["image"] for r in records], return_tensors="pt")["pixel_values"]
    lengths = tower.num_image_tokens(pixels).float()
    assert result["tokens_per_image_mean"] == pytest.approx(lengths.mean().item())
    assert result["tokens_per_image_std"] == pytest.approx(lengths.std(unbiased=False).item(), abs=1e-6)
    assert result["seconds_per_sample"] > 0
    hits = [answers_match(p["prediction"], p["answer"]) for p in result["predictions"]]
    assert result["accuracy"] == pytest.approx(sum(hits) / len(hits))


@pytest.mark.parametrize("mode", ["adaptive", "query"])
def test_batch_size_does_not_change_answers(dove_dir, qdove_dir, records, mode):
    model, processor = _model(dove_dir if mode == "adaptive" else qdove_dir, mode)
    one = evaluate_vqa(model, processor, records, batch_size=1, keep_predictions=True)
    many = evaluate_vqa(model, processor, records, batch_size=5, keep_predictions=True)
    assert len({p["tokens"] for p in one["predictions"]}) > 1  # lengths differ, so the batches are padded
    assert [p["prediction"] for p in one["predictions"]] == [p["prediction"] for p in many["predictions"]]
    assert [p["tokens"] for p in one["predictions"]] == [p["tokens"] for p in many["predictions"]]


def test_query_mode_gives_each_question_to_the_tower(qdove_dir, records):
    model, processor = _model(qdove_dir, "query")
    tower = model.model.vision_tower
    seen = []
    original = tower.forward

    def spy(pixel_values, queries=None, **kwargs):
        seen.extend(queries if isinstance(queries, list) else [queries])
        return original(pixel_values, queries=queries, **kwargs)

    tower.forward = spy
    evaluate_vqa(model, processor, records[:4], batch_size=2)
    assert {r["question"] for r in records[:4]} <= set(seen)
