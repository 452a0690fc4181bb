"""Conversations through a chat template, whatever content format the template wants.

Multimodal templates (llava-1.5-hf's, the tiny tokenizer's) read a message's content as a list of parts
(`{"type": "image"}`, `{"type": "text", ...}`); text-only templates of plain language models (SmolLM2's ChatML,
Llama's) want a string, so the image is written into the text as the `<image>` marker, where LLaVA puts it.
`render` tries the parts first and falls back to the string when the template fails on them or drops the
image; the choice is remembered per template.
"""

from __future__ import annotations

from collections.abc import Sequence

from jinja2 import TemplateError

IMAGE_TOKEN = "<image>"
_FORMATS: dict[str, str] = {}  # chat template text -> "parts" | "string"
_SENTINEL = "\u2063QUESTION\u2063"


class ChatTemplateError(ValueError):
    """The chat template cannot render a conversation (the message names what failed)."""


def template_owner(processor):
    """What renders the chat template: the tokenizer when it has one, else the processor (llava-1.5-hf keeps its
    template on the processor), else `None`."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    if getattr(processor, "chat_template", None):
        return processor
    return None


def _messages(turns: Sequence[dict], form: str, image_token: str) -> list[dict]:
    out = []
    for turn in turns:
        text, image = turn["text"], turn.get("image", False)
        if form == "parts":
            content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
        else:
            content = f"{image_token}\n{text}" if image else text
        out.append({"role": turn["role"], "content": content})
    return out


def render(owner, turns: Sequence[dict], add_generation_prompt: bool = False, image_token: str = IMAGE_TOKEN) -> str:
    """The text of a conversation through `owner`'s chat template.

    Args:
        owner: a tokenizer or processor with a chat template ([`template_owner`]).
        turns: `{"role": "system" | "user" | "assistant", "text": str, "image": bool}` dicts (`image`: this turn
            carries the image).
        add_generation_prompt: end with the assistant's prompt (for generation, or to find where an answer starts).
    """
    template = owner.chat_template
    images = sum(bool(t.get("image")) for t in turns)
    forms = [_FORMATS[template]] if template in _FORMATS else ["parts", "string"]
    errors = []
    for form in forms:
        try:
            text = owner.apply_chat_template(_messages(turns, form, image_token), add_generation_prompt=add_generation_prompt,
                                             tokenize=False)
        except (TemplateError, TypeError, ValueError, KeyError) as err:
            errors.append(f"{form}: {err}")
            continue
        if isinstance(text, list):
            text = text[0]
        if text.count(image_token) == images and all(t["text"].strip() in text for t in turns):
            _FORMATS[template] = form
            return text
        errors.append(f"{form}: the rendered text lost the image marker or a message")
    raise ChatTemplateError("the chat template cannot render this conversation (" + "; ".join(errors) + ").")


def chat_markers(owner) -> tuple[str, str]:
    """`(user prefix, end of the user turn)` of a chat template, as `DoveLlavaProcessor` finds a user's turn
    (the Q-DOVE query) in a prompt: the last non-empty line before a user message's text and the first after it
    ("USER:" / "ASSISTANT:" for LLaVA-1.5's format, "<|im_start|>user" / "<|im_end|>" for ChatML)."""
    text = render(owner, [{"role": "user", "text": _SENTINEL}], add_generation_prompt=True)
    before, _, after = text.partition(_SENTINEL)
    user = next((line.strip() for line in reversed(before.splitlines()) if line.strip()), "")
    end = next((line.strip() for line in after.splitlines() if line.strip()), "")
    return user, end


__all__ = ["ChatTemplateError", "chat_markers", "render", "template_owner"]
