"""LLaVA training examples: conversations about one image, their token ids and answer-only labels."""

from __future__ import annotations

import functools

import numpy as np
import torch

from dove_vlm.data.synthetic import COLORS, SHAPES
from dove_vlm.llava.vqa import CAPTION_QUESTION, build_prompt, build_vqa_split

IGNORE_INDEX = -100



def vqa_texts() -> list[str]:
    """Every question and answer the embedded scenes can produce (the tiny tokenizer's vocabulary)."""
    texts = [str(n) for n in range(10)] + ["yes", "no", "left", "right", "how many objects are there?",
                                            CAPTION_QUESTION, "nothing", ","]
    for shape in SHAPES:
        texts += [f"what colour is the {shape}?", f"is the {shape} on the left or the right?", shape]
    for color in COLORS:
        texts += [f"what shape is the {color} object?", color] + [f"is there a {color} {s}?" for s in SHAPES]
    return texts


def group_examples(records: list[dict], turns_per_image: int, seed: int) -> list[list[dict]]:
    """Training examples: lists of records about one image. `turns_per_image=1` gives one question per example;
    more gives multi-turn conversations (LLaVA-style) of up to that many of a scene's questions, in a
    deterministic shuffled order, so one pass over the image tokens trains several answers."""
    if turns_per_image == 1:
        return [[r] for r in records]
    by_scene: dict[int, list[dict]] = {}
    for r in records:
        by_scene.setdefault(r["scene"], []).append(r)
    examples = []
    for scene, items in by_scene.items():
        order = np.random.default_rng([seed, scene, 11]).permutation(len(items))
        items = [items[i] for i in order]
        examples += [items[i : i + turns_per_image] for i in range(0, len(items), turns_per_image)]
    return examples


class PromptEncoder:
    """Token ids and answer-only labels of a conversation about one image (one or more question/answer turns),
    from the processor's chat template (or LLaVA-1.5's prompt format); `collate` expands the `<image>` id to
    each image's length, pads on the right and masks everything but the answers (and their end-of-sequence
    tokens) in `labels`."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = processor.image_token_id
        self._cache: dict[tuple, tuple[list[int], list[int]]] = {}
        self._prompts: dict[str, str] = {}  # rendering the chat template dominated collate time

    def _render(self, turns: list[tuple[str, str]], upto: int, with_answer: bool) -> str:
        """The text of the first `upto` turns (the last one with or without its answer)."""
        eos = self.tokenizer.eos_token or ""
        text = ""
        for i, (question, answer) in enumerate(turns[:upto]):
            prompt = self._prompts.get(question)
            if prompt is None:
                prompt = self._prompts[question] = build_prompt(self.processor, question)
            if i > 0:  # later turns: the same format without the image
                prompt = prompt.replace(self.processor.image_token, "").replace("\n", "", 1)
            text += prompt
            if i < upto - 1 or with_answer:
                text += " " + answer + eos
        return text

    def encode(self, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """`(input_ids, labels)` with one `<image>` id (expanded later) and -100 outside the answers."""
        key = tuple(turns)
        if key not in self._cache:
            full = self._render(turns, len(turns), True)
            ids = self.tokenizer(full)["input_ids"]
            labels = [IGNORE_INDEX] * len(ids)
            for i in range(1, len(turns) + 1):
                start = len(self.tokenizer(self._render(turns, i, False))["input_ids"])
                upto = self.tokenizer(self._render(turns, i, True))["input_ids"]
                stop = len(upto)
                if ids[:stop] != upto:
                    raise ValueError("the tokenizer does not split the conversation at turn boundaries; use one "
                                     "question per image (--turns-per-image 1).")
                labels[start:stop] = ids[start:stop]
            if ids.count(self.image_token_id) != 1:
                raise ValueError(f"the prompt {full!r} has {ids.count(self.image_token_id)} image tokens after "
                                 "tokenization; expected exactly one.")
            self._cache[key] = (ids, labels)
        return self._cache[key]

    def collate(self, examples: list[list[dict]], lengths: list[int]) -> dict[str, torch.Tensor]:
        rows, label_rows = [], []
        for example, length in zip(examples, lengths):
            ids, labels = self.encode([(r["question"], r["answer"]) for r in example])
            at = ids.index(self.image_token_id)
            rows.append(ids[:at] + [self.image_token_id] * int(length) + ids[at + 1:])
            label_rows.append(labels[:at] + [IGNORE_INDEX] * int(length) + labels[at + 1:])
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(rows, label_rows)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@functools.lru_cache(maxsize=4)
def cached_split(split: str, num_scenes: int, seed: int, image_size: int, questions_per_scene: int | None,
                  captions: bool = False) -> list[dict]:
    """`build_vqa_split`, rendered once per process (the demo's stages share their scenes)."""
    return build_vqa_split(split, num_scenes, seed, image_size, questions_per_scene, captions=captions)


