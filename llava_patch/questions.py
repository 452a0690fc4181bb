"""The question each image is asked about, read back from LLaVA's prompts (what Q-DOVE takes as its query).

LLaVA's scripts put the image at the start of the user's turn (`"<image>\\n" + question`; training data are
rewritten that way by `preprocess_multimodal`), and `tokenizer_image_token` turns `<image>` into
`IMAGE_TOKEN_INDEX`. So the question of an image is the text after its image token, up to the start of the
assistant's turn. The end-of-turn markers are collected from LLaVA's own conversation templates, so every
template (vicuna_v1, llava_llama_2, chatml/mistral, mpt, v0 `###`) is cut at the right place. Templates whose
image sits in a turn of its own (the `*_mmtag` ones) give the null query.
"""

from __future__ import annotations

import functools

import torch

# The same values as `llava.constants` (checked by the tests when `llava` is importable); kept here so the
# helpers work on token ids without importing `llava`.
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100

# Image placeholders and tags that may sit next to the image token (mm_use_im_start_end, mmtag templates).
_IMAGE_TAGS = ("<image>", "<im_start>", "<im_end>", "<im_patch>", "<Image>", "</Image>")
# Turn ends that hold whatever templates are installed: LLaVA's usual assistant roles, and the markers that
# LLAMA_2 (`[/INST]`) and chatml (`<|im_end|>`) prompts write themselves.
_BASE_MARKERS = ("ASSISTANT:", "Assistant:", "[/INST]", "[INST]", "<|im_end|>", "<|im_start|>", "</s>", "###")


def assistant_markers() -> tuple[str, ...]:
    """Strings that end the user's turn in LLaVA's conversation templates (`llava.conversation.conv_templates`):
    the assistant role as the template writes it (`"ASSISTANT:"`, `"### Assistant"`...) and the non-blank
    separators. Without `llava`, the usual ones."""
    try:
        from llava.conversation import conv_templates
    except ImportError:
        return _BASE_MARKERS
    return _template_markers(id(conv_templates))


@functools.lru_cache(maxsize=1)
def _template_markers(_templates_id: int) -> tuple[str, ...]:
    from llava.conversation import SeparatorStyle, conv_templates

    markers = set(_BASE_MARKERS)
    for conv in conv_templates.values():
        role = conv.roles[1] if len(conv.roles) > 1 else ""
        if role and conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.TWO):
            markers.add(role + ":")
        elif role.strip() and conv.sep_style == SeparatorStyle.MPT:
            markers.add(role.strip())
        for sep in (conv.sep, conv.sep2):
            if sep and sep.strip():
                markers.add(sep.strip())
    return tuple(sorted(markers, key=len, reverse=True))


def question_from_text(text: str) -> str | None:
    """The user's question in the prompt text that follows an image: cut at the first end-of-turn marker,
    image tags removed, stripped. `None` (the null query: the whole image) when nothing is left."""
    cut = len(text)
    for marker in assistant_markers():
        index = text.find(marker)
        if 0 <= index < cut:
            cut = index
    question = text[:cut]
    for tag in _IMAGE_TAGS:
        question = question.replace(tag, " ")
    question = " ".join(question.split())
    return question or None


def question_from_prompt(prompt: str) -> str | None:
    """The question asked about the (first) image of a LLaVA prompt string, e.g. `conv.get_prompt()`."""
    _, found, tail = prompt.partition("<image>")
    return question_from_text(tail) if found else None


def image_questions(
    input_ids: torch.Tensor,
    tokenizer,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> list[str | None]:
    """One query per image slot of a LLaVA batch, in the order LLaVA's merge consumes image features.

    Args:
        input_ids (`(B, T)`): prompts as `tokenizer_image_token` makes them (`IMAGE_TOKEN_INDEX` per image).
        tokenizer: the language model's tokenizer (decodes the text after each image token).
        attention_mask (`(B, T)`, *optional*): padding positions are skipped, as LLaVA does.
        labels (`(B, T)`, *optional*): in training, the answer starts at the first supervised label; the
            question never reaches past it.

    Returns:
        A list with one entry per image token, and one `None` for a sample without an image token (LLaVA
        consumes one image, a dummy in training, for such a sample too).
    """
    queries: list[str | None] = []
    for row in range(input_ids.shape[0]):
        keep = attention_mask[row].bool() if attention_mask is not None else slice(None)
        ids = input_ids[row][keep]
        row_labels = labels[row][keep] if labels is not None else None
        positions = torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist()
        if not positions:
            queries.append(None)
            continue
        for k, start in enumerate(positions):
            end = positions[k + 1] if k + 1 < len(positions) else ids.shape[0]
            if row_labels is not None:
                supervised = torch.where(row_labels[start + 1 : end] != IGNORE_INDEX)[0]
                if len(supervised):
                    end = start + 1 + int(supervised[0])
            segment = [i for i in ids[start + 1 : end].tolist() if i >= 0]
            text = tokenizer.decode(segment, skip_special_tokens=False) if segment else ""
            queries.append(question_from_text(text))
    return queries
