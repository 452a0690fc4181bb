"""LLaVA training examples: conversations about one image, their token ids and answer-only labels."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from dove_vlm.data.synthetic import COLORS, SHAPES
from dove_vlm.llava.vqa import CAPTION_QUESTION, build_vqa_split

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
    """Token ids and answer-only labels of a training example (one or more question/answer turns about one image,
    or a text-only conversation), rendered through the chat template as one conversation (the LM's own template:
    its system prompt once, the image in the turn that carries it). `collate` expands the `<image>` id to each
    image's length, pads on the right and masks everything but the trained answers (with the end-of-turn tokens
    the template puts after them) in `labels`.

    The labels come from the character spans of the answers in the rendered text, mapped onto the tokens of the
    whole text (so the prompt part is exactly what the processor gives at generation time). A tokenizer that
    merges across a turn boundary, or has no offsets, is handled as LLaVA does: each segment tokenized on its own.

    `fit` applies the context limit (`max_length`, default the tokenizer's `model_max_length`): a conversation
    whose tokens plus the tower's most image tokens do not fit is cut after its last whole turn that fits, with a
    warning naming the sample; one whose first trained turn does not fit is left out, with a warning."""

    def __init__(self, processor, max_length: int | None = None):
        from dove_vlm.llava.chat import template_owner

        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = getattr(processor, "image_token", "<image>")
        self.image_token_id = processor.image_token_id
        self.owner = template_owner(processor)
        limit = max_length or getattr(self.tokenizer, "model_max_length", None)
        self.max_length = int(limit) if limit and limit < 10**8 else None
        self._cache: dict[tuple, tuple[list[int], list[int], list[int]]] = {}

    @staticmethod
    def _key(example: list[dict]) -> tuple:
        return tuple((r["question"], r["answer"], _has_marker(example, i), r.get("label", True))
                     for i, r in enumerate(example)) + (example[0].get("image") is not None,)

    def _render(self, turns: list[dict], add_generation_prompt: bool) -> str:
        from dove_vlm.llava.chat import render

        if self.owner is not None:
            return render(self.owner, turns, add_generation_prompt, image_token=self.image_token)
        text = ""  # no chat template anywhere: LLaVA-1.5's format
        for turn in turns:
            if turn["role"] == "user":
                text += "USER: " + (self.image_token + "\n" if turn.get("image") else "") + turn["text"] + " "
            else:
                text += "ASSISTANT: " + turn["text"] + (self.tokenizer.eos_token or "")
        return text + ("ASSISTANT:" if add_generation_prompt else "")

    def _spans(self, example: list[dict]) -> tuple[str, list[tuple[int, int, bool]]]:
        """The whole text and, per turn, `(answer start, answer end, trained)` in characters."""
        has_image = example[0].get("image") is not None
        turns, spans, text = [], [], ""
        for i, r in enumerate(example):
            turns.append({"role": "user", "text": r["question"], "image": has_image and _has_marker(example, i)})
            prompt = self._render(turns, True)
            turns.append({"role": "assistant", "text": r["answer"]})
            full = self._render(turns, False)
            if not prompt.startswith(text) or not full.startswith(prompt):
                raise ValueError("the chat template renders a conversation's earlier turns differently once later "
                                 "turns are added, so answers cannot be located; train one turn per example.")
            # The answer and the end-of-turn token(s) after it; not the whitespace that only separates turns.
            spans.append((len(prompt), len(full.rstrip()), bool(r.get("label", True))))
            text = full
        return text, spans

    def encode(self, example: list[dict]) -> tuple[list[int], list[int], list[int]]:
        """`(input_ids, labels, turn ends)`: one `<image>` id for an image (expanded later), -100 outside the
        trained answers, and the token count up to the end of each turn."""
        key = self._key(example)
        if key not in self._cache:
            text, spans = self._spans(example)
            try:
                encoded = self._by_offsets(text, spans)
            except _Straddles:
                encoded = self._by_segments(text, spans)
            ids = encoded[0]
            expected = 1 if example[0].get("image") is not None else 0
            if ids.count(self.image_token_id) != expected:
                raise ValueError(f"the prompt {text[:200]!r} has {ids.count(self.image_token_id)} image tokens after "
                                 f"tokenization; expected {expected}.")
            self._cache[key] = encoded
        return self._cache[key]

    def _by_offsets(self, text: str, spans) -> tuple[list[int], list[int], list[int]]:
        try:
            enc = self.tokenizer(text, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError) as err:
            raise _Straddles from err
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        labels = [IGNORE_INDEX] * len(ids)
        ends = []
        for start, stop, trained in spans:
            for t, (a, b) in enumerate(offsets):
                if a == b:  # special tokens added around the text
                    continue
                if a < start < b or a < stop < b:
                    raise _Straddles
                if trained and start <= a and b <= stop:
                    labels[t] = ids[t]
            ends.append(next((t for t, (a, b) in enumerate(offsets) if a != b and a >= stop), len(ids)))
        return ids, labels, ends

    def _by_segments(self, text: str, spans) -> tuple[list[int], list[int], list[int]]:
        ids, labels, ends, at = [], [], [], 0
        for start, stop, trained in spans:
            prompt = self.tokenizer(text[at:start], add_special_tokens=not ids)["input_ids"]
            answer = self.tokenizer(text[start:stop], add_special_tokens=False)["input_ids"]
            ids += prompt + answer
            labels += [IGNORE_INDEX] * len(prompt) + (answer if trained else [IGNORE_INDEX] * len(answer))
            ends.append(len(ids))
            at = stop
        return ids, labels, ends

    def fit(self, example: list[dict], max_image_tokens: int) -> list[dict] | None:
        """`example`, cut to the context limit (see the class docstring); `None` when nothing trained fits."""
        if self.max_length is None:
            return example
        ids, _, ends = self.encode(example)
        extra = max_image_tokens - 1 if example[0].get("image") is not None else 0
        if len(ids) + extra <= self.max_length:
            return example
        keep = sum(1 for end in ends if end + extra <= self.max_length)
        name = example[0].get("source") or f"scene {example[0].get('scene')}"
        if keep == 0 or not any(r.get("label", True) for r in example[:keep]):
            warnings.warn(f"{name}: left out: its first turn is {ends[0] + extra} tokens with up to "
                          f"{max_image_tokens} image tokens, over the context of {self.max_length}.", stacklevel=2)
            return None
        warnings.warn(f"{name}: {len(ids) + extra} tokens with up to {max_image_tokens} image tokens, over the "
                      f"context of {self.max_length}; trained on its first {keep} of {len(example)} turns.", stacklevel=2)
        return example[:keep]

    def collate(self, examples: list[list[dict]], lengths: list[int]) -> dict[str, torch.Tensor]:
        rows, label_rows = [], []
        for example, length in zip(examples, lengths):
            ids, labels, _ = self.encode(example)
            if self.image_token_id in ids:
                at = ids.index(self.image_token_id)
                ids = ids[:at] + [self.image_token_id] * int(length) + ids[at + 1:]
                labels = labels[:at] + [IGNORE_INDEX] * int(length) + labels[at + 1:]
            rows.append(ids)
            label_rows.append(labels)
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


class _Straddles(Exception):
    """A token crosses a turn boundary (or the tokenizer gives no offsets)."""


def _has_marker(example: list[dict], index: int) -> bool:
    """Whether turn `index` carries the image: the turn marked so (user data), else the first turn."""
    if any("marker" in r for r in example):
        return bool(example[index].get("marker"))
    return index == 0


@functools.lru_cache(maxsize=4)
def cached_split(split: str, num_scenes: int, seed: int, image_size: int, questions_per_scene: int | None,
                  captions: bool = False) -> list[dict]:
    """`build_vqa_split`, rendered once per process (the demo's stages share their scenes)."""
    return build_vqa_split(split, num_scenes, seed, image_size, questions_per_scene, captions=captions)


