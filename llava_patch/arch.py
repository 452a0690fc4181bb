"""The seams of the original LLaVA code base that `apply()` replaces, each delegating to LLaVA's own function
unless the model's vision tower is a DOVE tower.

- `build_vision_tower(cfg, **kwargs)`: DOVE names build a [`DoveLlavaVisionTower`]; everything else goes to
  LLaVA's builder (CLIP stays CLIP).
- `encode_images(images, queries=None)`: DOVE features (one `(L_i, D)` tensor per image) through the projector,
  packed: the projector runs on their concatenation, no padding.
- `prepare_inputs_labels_for_multimodal(..., image_queries=None)`: computes the DOVE features (with each image's
  question for a query-mode tower) and hands them, as a list, to LLaVA's own merge, which indexes
  `image_features[i]` and reads each `.shape[0]`: variable lengths need nothing else.
- `initialize_vision_tokenizer` (training) and `load_pretrained_model` (inference): also record the LLM
  tokenizer on the model ([`attach_tokenizer`]), which Q-DOVE needs to read the question back from the ids.
"""

from __future__ import annotations

import warnings

import torch

from .questions import image_questions
from .tower import DoveLlavaVisionTower, parse_tower_name

TOKENIZER_ATTRIBUTE = "dove_text_tokenizer"
ORIGINALS: dict[str, object] = {}  # LLaVA's functions, filled by `apply()`


def _unwrap(model):
    """The LLaVA model inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def attach_tokenizer(model, tokenizer) -> None:
    """Give a LLaVA model its language tokenizer, so that a Q-DOVE tower gets each image's question.
    LLaVA's training (`initialize_vision_tokenizer`) and `load_pretrained_model` do this once patched; call it
    yourself when you build the model and tokenizer another way."""
    setattr(_unwrap(model), TOKENIZER_ATTRIBUTE, tokenizer)


class EncodedImages:
    """Image features already made by the DOVE tower (one tensor per image slot), passed through LLaVA's merge in
    place of the images: the merge hands them to `encode_images`, which returns them unchanged."""

    ndim = 4  # LLaVA's merge takes its single-batch branch for a 4-D `images`

    def __init__(self, features: list[torch.Tensor]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)


def build_vision_tower(vision_tower_cfg, **kwargs):
    """LLaVA's `build_vision_tower`, plus DOVE towers (`dove:PATH[?options]` or a DOVE checkpoint folder)."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if parse_tower_name(name) is not None:
        return DoveLlavaVisionTower(name, args=vision_tower_cfg, **kwargs)
    return ORIGINALS["build_vision_tower"](vision_tower_cfg, **kwargs)


def _dove_tower(model):
    tower = model.get_model().get_vision_tower()
    return tower if isinstance(tower, DoveLlavaVisionTower) else None


def project_features(projector, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run LLaVA's projector once on the concatenated `(L_i, D)` features; split back per image."""
    parameter = next(projector.parameters(), None)
    packed = torch.cat(features)
    if parameter is not None:
        packed = packed.to(device=parameter.device, dtype=parameter.dtype)
    return list(torch.split(projector(packed), [f.shape[0] for f in features]))


def encode_images(self, images, queries=None):
    """`LlavaMetaForCausalLM.encode_images` with the question: for a DOVE tower, a list of `(L_i, hidden)` tensors
    (`queries`: None, one string, or one string/None per image); other towers: LLaVA's own code."""
    if isinstance(images, EncodedImages):
        return images.features
    tower = _dove_tower(self)
    if tower is None:
        if queries is not None and any(q for q in ([queries] if isinstance(queries, str) else queries)):
            raise ValueError("this LLaVA model's vision tower takes no text query; pass queries=None.")
        return ORIGINALS["encode_images"](self, images)
    features = tower(images, queries=queries)  # a non-query tower raises on a non-null query
    return project_features(self.get_model().mm_projector, features)


def _slot_queries(self, tower, input_ids, attention_mask, labels, num_slots):
    if not tower.supports_queries:
        return None
    tokenizer = getattr(self, TOKENIZER_ATTRIBUTE, None)
    if tokenizer is None:
        if not getattr(self, "_dove_warned_tokenizer", False):
            warnings.warn("the Q-DOVE tower gets null queries: the model has no tokenizer to read the questions "
                          "with; call llava_patch.attach_tokenizer(model, tokenizer).", stacklevel=3)
            self._dove_warned_tokenizer = True
        return None
    queries = image_questions(input_ids, tokenizer, attention_mask=attention_mask, labels=labels)
    if len(queries) != num_slots:
        raise ValueError(f"the batch has {num_slots} images but its prompts have {len(queries)} image slots "
                         "(one per <image> token, one for each sample without an image).")
    return queries


def prepare_inputs_labels_for_multimodal(
    self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None,
    image_queries=None,
):
    """LLaVA's `prepare_inputs_labels_for_multimodal`; for a DOVE tower the image features are a list of
    per-image `(L_i, hidden)` tensors spliced into the sequence at their own lengths.

    `images`: `(N, 3, H, W)`, or a list / 5-D tensor with one `(k, 3, H, W)` stack of views per image slot (their
    features are concatenated). `image_queries` (*optional*): one question (or None) per image slot; by default
    a query-mode tower reads them from `input_ids` with the attached tokenizer ([`attach_tokenizer`])."""
    original = ORIGINALS["prepare_inputs_labels_for_multimodal"]
    tower = _dove_tower(self)
    if tower is None or images is None or input_ids.shape[1] == 1:
        return original(self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes)
    merge = getattr(self.config, "mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ValueError(f"mm_patch_merge_type={merge!r} arranges CLIP patches on a grid; DOVE features have no "
                         "grid, use mm_patch_merge_type='flat'.")
    if isinstance(images, (list, tuple)) or images.ndim == 5:
        slots = [x.unsqueeze(0) if x.ndim == 3 else x for x in images]
    else:
        slots = [x.unsqueeze(0) for x in images]
    views = [len(slot) for slot in slots]
    if image_queries is None:
        image_queries = _slot_queries(self, tower, input_ids, attention_mask, labels, len(slots))
    elif isinstance(image_queries, str) or len(image_queries) != len(slots):
        raise ValueError(f"image_queries must be a list with one entry per image slot ({len(slots)}).")
    queries = None if image_queries is None else [q for q, n in zip(image_queries, views) for _ in range(n)]
    features = self.encode_images(torch.cat(slots), queries=queries)
    per_slot, start = [], 0
    for n in views:
        per_slot.append(torch.cat(features[start : start + n]))
        start += n
    return original(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                    EncodedImages(per_slot), image_sizes)


def initialize_vision_tokenizer(self, model_args, tokenizer):
    """LLaVA's `initialize_vision_tokenizer` (training), which also records the tokenizer for Q-DOVE."""
    attach_tokenizer(self, tokenizer)
    return ORIGINALS["initialize_vision_tokenizer"](self, model_args, tokenizer)


def load_pretrained_model(*args, **kwargs):
    """LLaVA's `load_pretrained_model` (inference scripts), which also records the tokenizer for Q-DOVE."""
    tokenizer, model, image_processor, context_len = ORIGINALS["load_pretrained_model"](*args, **kwargs)
    attach_tokenizer(model, tokenizer)
    return tokenizer, model, image_processor, context_len
