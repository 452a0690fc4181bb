"""VQA on the embedded synthetic scenes: the question records, the standard VQA answer normalisation, the
majority-answer baselines and a batched greedy-generation evaluation of a LLaVA model.

Records are plain dicts `{image, question, answer, type, scene}` (`type` is count / colour / shape / position /
existence), so the same code scores the tiny LLaVA and a real `llava-1.5-*-hf` checkpoint.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from dove_vlm.data.synthetic import SPLITS, SyntheticScenes

QUESTION_TYPES = ("count", "colour", "shape", "position", "existence")
DEFAULT_PROMPT = "USER: <image>\n{question} ASSISTANT:"

# --- answer normalisation (the rules of the official VQA evaluation script, vqaEval.py) -------------------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id": "I'd", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "shant": "shan't", "shed": "she'd",
    "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's",
    "someones": "someone's", "somethings": "something's", "thats": "that's", "thered": "there'd",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digits_and_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation: white space, punctuation, lower case, number words → digits,
    articles dropped, contractions restored ("Two." → "2", "the Red circle" → "red circle")."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    return _process_digits_and_articles(_process_punctuation(text)).strip()


def answers_match(prediction: str, answer: str) -> bool:
    """Exact match after `normalize_answer` (one reference answer per question, so VQA accuracy is 0 or 1)."""
    return normalize_answer(prediction) == normalize_answer(answer)


# --- the question records ----------------------------------------------------------------------------------


CAPTION_QUESTION = "describe the image."


def caption_answer(objects: Sequence, image_size: int) -> str:
    """A dense caption of a scene for LLaVA-style alignment turns: every object as "colour shape side", left to
    right ("red circle left, blue square right"); "nothing" for an empty scene."""
    ordered = sorted(objects, key=lambda o: o.center)
    parts = [f"{o.color} {o.shape} {'left' if o.center[0] < image_size / 2 else 'right'}" for o in ordered]
    return ", ".join(parts) or "nothing"


def build_vqa_split(split: str = "test", num_scenes: int = 100, seed: int = 0, image_size: int = 32,
                    questions_per_scene: int | None = None, max_objects: int = 6,
                    captions: bool = False) -> list[dict]:
    """The embedded VQA questions of `num_scenes` synthetic scenes of `(seed, split)`.

    Args:
        split: `train`, `test` or `validation` (different scenes for the same seed).
        num_scenes: scenes to draw; each gives one count question, colour/position/shape questions about
            its unambiguous objects and existence questions (one present pair, one absent pair).
        seed: the scene generator's seed (the same as the tokenizer's `seed`).
        image_size: pixels per side (the tiny preset's DOVE reads 32 px).
        questions_per_scene: keep at most this many questions per scene (drawn deterministically per scene);
            `None` keeps them all. Fewer questions per scene means more distinct images for the same count.
        max_objects: most objects per scene.
        captions: also give each scene a `caption` record ("describe the image." → `caption_answer`), the dense
            alignment data of LLaVA's first stage; it shares the scene's image object (one tower pass).

    Returns:
        a list of `{image: PIL.Image, question, answer, type, scene}` dicts, in scene order.
    """
    if questions_per_scene is not None and questions_per_scene < 1:
        raise ValueError(f"questions_per_scene must be >= 1 or None, got {questions_per_scene}.")
    records = []
    for index, scene in enumerate(SyntheticScenes(num_scenes, image_size=image_size, seed=seed, split=split,
                                                  max_objects=max_objects)):
        items = scene.vqa
        if questions_per_scene is not None and len(items) > questions_per_scene:
            rng = np.random.default_rng([seed, SPLITS[split], index, 7])
            keep = sorted(rng.choice(len(items), questions_per_scene, replace=False).tolist())
            items = [items[i] for i in keep]
        for item in items:
            records.append({"image": scene.image, "question": item["question"], "answer": item["answer"],
                            "type": item["type"], "scene": index})
        if captions:
            # A caption asks about the whole image: Q-DOVE gets the null query, not the words of the request.
            records.append({"image": scene.image, "question": CAPTION_QUESTION, "query": None,
                            "answer": caption_answer(scene.objects, image_size), "type": "caption", "scene": index})
    return records


def record_query(record: dict) -> str | None:
    """The Q-DOVE query of a VQA record: its `query` field when it has one (`None`: the whole image, e.g. a caption
    request, whose words name no region), else its question."""
    return record["query"] if "query" in record else record["question"]


def type_counts(records: Sequence[dict]) -> dict[str, int]:
    counts = Counter(r["type"] for r in records)
    return {t: counts[t] for t in QUESTION_TYPES if counts[t]} | {t: n for t, n in counts.items()
                                                                  if t not in QUESTION_TYPES}


# --- majority-answer baselines ---------------------------------------------------------------------------


def majority_baseline(train_records: Sequence[dict], test_records: Sequence[dict]) -> dict:
    """Accuracy on `test_records` of always answering the most frequent training answer.

    Returns:
        `{"overall": {"answer", "accuracy"}, "per_type": {"answers": {type: answer}, "accuracy",
        "accuracy_by_type": {type: acc}}}`: one answer for every question, and the most frequent answer of each
        question type (the stronger baseline: it knows that colour questions want a colour).
    """
    if not train_records or not test_records:
        raise ValueError("majority_baseline needs non-empty train and test records.")
    answers = Counter(normalize_answer(r["answer"]) for r in train_records)
    overall_answer = answers.most_common(1)[0][0]
    by_type: dict[str, Counter] = {}
    for r in train_records:
        by_type.setdefault(r["type"], Counter())[normalize_answer(r["answer"])] += 1
    type_answers = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
    overall_hits = [normalize_answer(r["answer"]) == overall_answer for r in test_records]
    type_hits = [normalize_answer(r["answer"]) == type_answers.get(r["type"], overall_answer) for r in test_records]
    return {
        "overall": {"answer": overall_answer, "accuracy": float(np.mean(overall_hits))},
        "per_type": {"answers": type_answers, "accuracy": float(np.mean(type_hits)),
                     "accuracy_by_type": _accuracy_by_type(test_records, type_hits)},
    }


def _accuracy_by_type(records: Sequence[dict], hits: Sequence[bool]) -> dict[str, float]:
    grouped: dict[str, list[bool]] = {}
    for r, hit in zip(records, hits):
        grouped.setdefault(r["type"], []).append(bool(hit))
    order = [t for t in QUESTION_TYPES if t in grouped] + [t for t in grouped if t not in QUESTION_TYPES]
    return {t: float(np.mean(grouped[t])) for t in order}


# --- prompts and evaluation ------------------------------------------------------------------------------


def build_prompt(processor, question: str) -> str:
    """The generation prompt for one question about one image: the chat template (the tokenizer's or the
    processor's; the image as a content part, or as the `<image>` marker in the text for text-only templates such
    as a plain LM's ChatML), else LLaVA-1.5's `USER: <image>\\n{question} ASSISTANT:`."""
    from .chat import ChatTemplateError, render, template_owner

    owner = template_owner(processor)
    if owner is not None:
        try:
            return render(owner, [{"role": "user", "text": question, "image": True}], add_generation_prompt=True)
        except ChatTemplateError:
            pass
    return DEFAULT_PROMPT.format(question=question)


def tower_uses_queries(model) -> bool:
    """True when the model's vision tower reads the question (a DOVE tower in `query` mode)."""
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    if tower is None and hasattr(model, "get_base_model"):  # a peft wrapper
        return tower_uses_queries(model.get_base_model())
    return getattr(getattr(tower, "config", None), "mode", None) == "query"


@torch.no_grad()
def generate_answers(model, processor, records: Sequence[dict], batch_size: int = 32, max_new_tokens: int = 4,
                     use_queries: bool | None = None) -> tuple[list[str], list[int]]:
    """Greedy answers (and image-token counts) of `model` for `records`, `batch_size` prompts at a time
    (left-padded, so the batch size does not change the answers)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    use_queries = tower_uses_queries(model) if use_queries is None else use_queries
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    predictions: list[str] = []
    lengths: list[int] = []
    try:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            kwargs = {}
            if use_queries:
                kwargs["image_queries"] = [record_query(r) for r in batch]
            inputs = processor(images=[r["image"] for r in batch], text=[build_prompt(processor, r["question"])
                                                                         for r in batch],
                               return_tensors="pt", padding=True, **kwargs)
            image_lengths = inputs.pop("image_lengths", None)
            queries = inputs.pop("image_queries", None)
            inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            if queries is not None and any(q is not None for q in queries):
                inputs["image_queries"] = list(queries)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            predictions += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            if image_lengths is not None:
                lengths += [int(n) for n in torch.as_tensor(image_lengths).reshape(-1).tolist()]
            else:  # a processor without per-image counts (fixed-length towers): count the placeholders
                image_token = getattr(processor, "image_token_id", None) or model.config.image_token_id
                lengths += (inputs["input_ids"] == image_token).sum(1).tolist()
    finally:
        tokenizer.padding_side = side
    return predictions, lengths


def evaluate_vqa(model, processor, records: Sequence[dict], batch_size: int = 32, max_new_tokens: int = 4,
                 use_queries: bool | None = None, keep_predictions: bool = False) -> dict:
    """Greedy-generation VQA accuracy of a LLaVA model.

    Args:
        model: a `DoveLlavaForConditionalGeneration` (or any LLaVA `generate`-able model, peft-wrapped or not).
        processor: its processor (a `DoveLlavaProcessor` with the tower attached, or a LLaVA processor).
        records: `build_vqa_split` records.
        batch_size: prompts per `generate` call.
        max_new_tokens: answer length limit (the embedded answers are one word).
        use_queries: give each question to the tower as its query; default: when the tower is in `query` mode.
        keep_predictions: also return every `{question, answer, prediction, type, tokens}`.

    Returns:
        `{"num_questions", "accuracy", "accuracy_by_type", "tokens_per_image_mean", "tokens_per_image_std",
        "seconds_per_sample", "batch_size"}` (+ `"predictions"`).
    """
    if not records:
        raise ValueError("evaluate_vqa needs at least one record.")
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    predictions, lengths = generate_answers(model, processor, records, batch_size, max_new_tokens, use_queries)
    seconds = time.perf_counter() - started
    model.train(was_training)
    hits = [answers_match(p, r["answer"]) for p, r in zip(predictions, records)]
    tokens = np.asarray(lengths, dtype=float)
    result = {
        "num_questions": len(records),
        "accuracy": float(np.mean(hits)),
        "accuracy_by_type": _accuracy_by_type(records, hits),
        "tokens_per_image_mean": float(tokens.mean()) if len(tokens) else float("nan"),
        "tokens_per_image_std": float(tokens.std()) if len(tokens) else float("nan"),
        "seconds_per_sample": seconds / len(records),
        "batch_size": batch_size,
    }
    if keep_predictions:
        result["predictions"] = [{"question": r["question"], "answer": r["answer"], "prediction": p, "type": r["type"],
                                  "tokens": n} for r, p, n in zip(records, predictions, lengths)]
    return result
