"""`DoveLlavaProcessor`: images + prompts → LLaVA inputs, each `<image>` expanded to that image's own token count."""

from __future__ import annotations

import re

import torch
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from ..vision_tower import DoveVisionTower


class DoveLlavaProcessor(ProcessorMixin):
    r"""Turns images and prompts into inputs for [`DoveLlavaForConditionalGeneration`].

    Every `<image>` marker in a prompt is replaced by as many `<image>` tokens as that image has features: the
    counts come from `image_lengths` or from the tower given to [`attach_tower`] (the tower is not saved with the
    processor). Images are matched to markers in order, across the batch (as in `LlavaProcessor`). When the tower
    has to run to count (adaptive and query modes), its output is returned as `tower_outputs`, and the model reuses
    it instead of running the tower again (`model.generate(**inputs)` runs the tower once per image).

    Args:
        image_processor ([`DoveImageProcessor`]): at the tower's image size.
        tokenizer ([`PreTrainedTokenizerFast`]): with the `image_token` as a special token.
        chat_template (`str`, *optional*): defaults to the tokenizer's.
        image_token (`str`, defaults to `"<image>"`): the placeholder.
        user_prefix / assistant_prefix (`str`): the role markers of the prompt format ("USER:" / "ASSISTANT:"),
            used to find the user's turn for `image_queries="auto"`.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token: str = "<image>",
                 user_prefix: str = "USER:", assistant_prefix: str = "ASSISTANT:", **kwargs):
        self.image_token = image_token
        self.user_prefix = user_prefix
        self.assistant_prefix = assistant_prefix
        if chat_template is None and tokenizer is not None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.tower: DoveVisionTower | None = None
        ids = tokenizer.convert_tokens_to_ids([image_token]) if tokenizer is not None else [None]
        if tokenizer is not None and (ids[0] is None or ids[0] == tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {image_token!r} token; add it as a special token.")
        self.image_token_id = ids[0]

    def attach_tower(self, tower: DoveVisionTower) -> DoveLlavaProcessor:
        """Use `tower` to count the tokens of each image (it must be the model's tower, with the same settings)."""
        if not hasattr(tower, "num_image_tokens"):
            raise TypeError(f"expected a DoveVisionTower, got {type(tower).__name__}.")
        self.tower = tower
        return self

    # Queries ----------------------------------------------------------------------------------------------
    def user_turn(self, text: str, marker_index: int = 0) -> str | None:
        """The user's text around the `marker_index`-th `<image>` of `text`: from the last `user_prefix` before
        it to the next `assistant_prefix` after it (the whole text when they are absent), with `<image>` markers
        removed and whitespace stripped; `None` when nothing is left."""
        positions = [m.start() for m in re.finditer(re.escape(self.image_token), text)]
        at = positions[marker_index] if positions else 0
        start = text.rfind(self.user_prefix, 0, at + 1) if self.user_prefix else -1
        start = 0 if start < 0 else start + len(self.user_prefix)
        stop = text.find(self.assistant_prefix, at) if self.assistant_prefix else -1
        stop = len(text) if stop < 0 else stop
        turn = " ".join(text[start:stop].replace(self.image_token, " ").split())
        return turn or None

    def _resolve_queries(self, image_queries, texts, markers, num_images):
        if isinstance(image_queries, str) and image_queries == "auto":
            if self.tower is None or not self.tower.supports_queries or texts is None:
                return [None] * num_images
            return [self.user_turn(texts[sample], index) for sample, index in markers]
        if image_queries is None:
            return [None] * num_images
        queries = [image_queries] * num_images if isinstance(image_queries, str) else list(image_queries)
        if len(queries) != num_images:
            raise ValueError(f"got {len(queries)} image_queries for {num_images} images; pass one (or None) per image.")
        for i, query in enumerate(queries):
            if query is not None and not isinstance(query, str):
                raise TypeError(f"image query {i} is a {type(query).__name__}, not a string or None.")
        return [q.strip() if q and q.strip() else None for q in queries]

    # Main entry -------------------------------------------------------------------------------------------
    def __call__(self, images=None, text=None, image_queries="auto", image_lengths=None, return_tensors="pt",
                 padding=True, truncation=None, **kwargs) -> BatchFeature:
        """Process a batch.

        Args:
            images: one image or a list (PIL, arrays or `(C, H, W)` tensors), in the order of the `<image>` markers
                across the batch; a list of lists (one per prompt) is flattened.
            text (`str` or `list[str]`): prompts with `<image>` markers.
            image_queries: `"auto"` (for a query-mode tower: each image's user turn without the markers, empty →
                None; otherwise None), `None`, one string, or one string/None per image.
            image_lengths (*optional*): token count per image; computed with the attached tower when omitted.
            return_tensors (`str`): only `"pt"`.
            padding, truncation, kwargs: passed to the tokenizer (truncation that would cut image tokens is refused).
        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask` (when text is given), `pixel_values`, `image_lengths`
            (`(N,)` long), `image_queries` (a list of str/None, not a tensor) and, when the attached tower ran to
            count the tokens, `tower_outputs` (its `DoveVisionTowerOutput` for these images and queries, which
            [`DoveLlavaForConditionalGeneration`] uses instead of a second tower pass).
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt'.")
        if images is None and text is None:
            raise ValueError("DoveLlavaProcessor needs images, text or both.")
        texts = [text] if isinstance(text, str) else (list(text) if text is not None else None)
        if texts is not None and not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a string or a list of strings.")
        image_list = _flatten_images(images)
        markers = [(s, i) for s, t in enumerate(texts or []) for i in range(t.count(self.image_token))]
        if texts is not None and len(markers) != len(image_list):
            raise ValueError(f"the text has {len(markers)} {self.image_token} markers but {len(image_list)} images "
                             "were given; use one marker per image.")

        data = {}
        queries: list = []
        lengths = None
        if image_list:
            pixel_values = self.image_processor.preprocess(image_list, return_tensors="pt")["pixel_values"]
            queries = self._resolve_queries(image_queries, texts, markers, len(image_list))
            lengths, tower_outputs = self._lengths(pixel_values, queries, image_lengths)
            data.update(pixel_values=pixel_values, image_lengths=lengths)
            if tower_outputs is not None:
                data["tower_outputs"] = tower_outputs
        elif image_lengths is not None:
            raise ValueError("image_lengths were given without images.")
        data["image_queries"] = queries

        if texts is not None:
            counts = iter(lengths.tolist() if lengths is not None else [])
            expanded = [re.sub(re.escape(self.image_token), lambda _: self.image_token * next(counts), t) for t in texts]
            encoded = self.tokenizer(expanded, padding=padding, truncation=truncation, return_tensors="pt", **kwargs)
            self._check_encoded(encoded["input_ids"], lengths)
            data.update(encoded)
        return BatchFeature(data, tensor_type=None)

    def _lengths(self, pixel_values, queries, image_lengths):
        """`(counts (N,) long, the tower's output or None)`: given counts are checked; otherwise the attached tower
        gives them (grid and fixed towers without a pass; other modes with one forward, whose output is kept)."""
        count = pixel_values.shape[0]
        if image_lengths is not None:
            lengths = torch.as_tensor(image_lengths, dtype=torch.long).reshape(-1)
            if lengths.numel() != count:
                raise ValueError(f"got {lengths.numel()} image_lengths for {count} images.")
            if (lengths < 1).any():
                raise ValueError(f"image_lengths must be positive, got {lengths.tolist()}.")
            return lengths, None
        if self.tower is None:
            raise ValueError("the processor needs the vision tower to count each image's tokens: call "
                             "processor.attach_tower(model.vision_tower) (or pass image_lengths).")
        tower_queries = queries if self.tower.supports_queries else None
        if not self.tower.counts_need_a_pass:
            return self.tower.num_image_tokens(pixel_values, tower_queries).cpu().long(), None
        with torch.no_grad():
            out = self.tower(pixel_values.to(self.tower.device), queries=tower_queries)
        return out.lengths.cpu().long(), out

    def _check_encoded(self, input_ids: torch.Tensor, lengths) -> None:
        expected = int(lengths.sum()) if lengths is not None else 0
        found = int((input_ids == self.image_token_id).sum())
        if found != expected:
            raise ValueError(f"after tokenization the batch has {found} image tokens but the images need {expected}; "
                             "the prompt was truncated (or the tokenizer splits the image token).")
        limit = getattr(self.tokenizer, "model_max_length", None)
        if limit is not None and limit < 10**9 and input_ids.shape[1] > limit:
            raise ValueError(f"the prompt is {input_ids.shape[1]} tokens with its image tokens ({expected}) but the "
                             f"language model's context is {limit}; shorten the question or use fewer tokens per image.")

    def to_dict(self):
        tower = self.__dict__.pop("tower", None)  # a model: neither serialised nor deep-copied
        try:
            return super().to_dict()
        finally:
            self.tower = tower

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_lengths", "image_queries", "tower_outputs"]


def _flatten_images(images) -> list:
    if images is None:
        return []
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    if not isinstance(images, (list, tuple)):
        return [images]
    flat = []
    for item in images:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    return flat


__all__ = ["DoveLlavaProcessor"]
