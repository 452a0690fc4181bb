"""LLaVA with per-image variable-length image features (DOVE / Q-DOVE towers).

Subclasses transformers' `LlavaModel` / `LlavaForConditionalGeneration` at their two seams: `get_image_features`
returns one `(L_i, text_hidden)` tensor per image (tower features → projector), and the merge step scatters their
concatenation into the `<image>` placeholder positions (packed: no padding reaches the LM). Q-DOVE towers get
`image_queries` (one text or None per image); `generate` passes pixels and queries on the prefill step only.
A llava-1.5 style checkpoint (CLIP tower) loads through the same classes; `set_vision_tower` then swaps in DOVE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaMultiModalProjector,
    LlavaPreTrainedModel,
)
from transformers.utils.deprecation import deprecate_kwarg

from ..modeling_dove import QUERY_TOKENIZER_DIR
from ..query_tokenizer import load_saved_query_tokenizer
from ..encoder_tower import TOWERS
from ..vision_tower import DoveVisionTower
from .configuration_dove_llava import DoveLlavaConfig


@dataclass
class DoveImageFeaturesOutput(BaseModelOutputWithPooling):
    """Output of [`DoveLlavaModel.get_image_features`] with a DOVE tower.

    Args:
        pooler_output (`list` of `(L_i, text_hidden)` tensors): projected features, one tensor per image (what the
            LM receives; transformers' multimodal convention, also used by `generate`).
        last_hidden_state (`(B, L, D)`): the tower's features before the projector, zero-padded.
        lengths (`(B,)` long): L_i per image.
    """

    lengths: torch.LongTensor | None = None


class DoveLlavaModel(LlavaModel):
    """[`LlavaModel`] whose images each contribute their own number of features."""

    config: DoveLlavaConfig
    config_class = DoveLlavaConfig

    @property
    def has_dove_tower(self) -> bool:
        return isinstance(self.vision_tower, TOWERS)  # a DOVE tower or the pretrained encoder tower

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_queries=None,
        image_lengths: torch.LongTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        tower_outputs=None,
        **kwargs,
    ) -> DoveImageFeaturesOutput | BaseModelOutputWithPooling:
        """Pixels → per-image projected features.

        Args:
            pixel_values (`(B, 3, H, W)`): images in [-1, 1] at the tower's size.
            image_queries: Q-DOVE queries, one string or None per image (or None); only for a query-mode tower.
            image_lengths (`(B,)`, *optional*): the counts the processor expanded `<image>` to; checked against the
                tower's lengths (a mismatch means the processor used another tower or length knob).
            tower_outputs ([`DoveVisionTowerOutput`], *optional*): this tower's output for these pixels and queries,
                as computed by [`DoveLlavaProcessor`] to count the tokens; used instead of running the tower again.
        Returns:
            [`DoveImageFeaturesOutput`] whose `pooler_output` is a list of `(L_i, text_hidden)` tensors. With a
            non-DOVE tower (e.g. CLIP), `LlavaModel.get_image_features` unchanged.
        """
        if not self.has_dove_tower:
            if image_queries is not None and any(isinstance(q, str) and q.strip() for q in _as_list(image_queries)):
                raise ValueError("image_queries need a Q-DOVE vision tower; this model has a "
                                 f"{type(self.vision_tower).__name__}. Swap one in with set_vision_tower(...).")
            return super().get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                **kwargs,
            )
        tower = self.vision_tower
        if tower_outputs is not None:
            out = _checked_tower_outputs(tower, tower_outputs, pixel_values)
        else:
            out = tower(pixel_values.to(tower.dtype), queries=image_queries)
        if image_lengths is not None:
            expected = torch.as_tensor(image_lengths).reshape(-1).to(out.lengths.device)
            if expected.shape != out.lengths.shape or not torch.equal(expected, out.lengths):
                raise ValueError(f"the processor expanded the images to {expected.tolist()} tokens but the vision tower "
                                 f"gives {out.lengths.tolist()}; use the same tower (attach_tower) and queries in the "
                                 "processor and the model.")
        weight = self.multi_modal_projector.linear_1.weight
        packed = torch.cat(out.features, dim=0).to(device=weight.device, dtype=weight.dtype)  # one projector call
        projected = self.multi_modal_projector(packed)
        per_image = list(torch.split(projected, out.lengths.tolist(), dim=0))
        return DoveImageFeaturesOutput(last_hidden_state=out.last_hidden_state, pooler_output=per_image,
                                       lengths=out.lengths)

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features):
        """`(B, T, 1)` mask of the `<image>` placeholder positions; a count that differs from the number of image
        features raises a `ValueError` naming both."""
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.full((), self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embed).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        n_tokens = int(mask.sum())
        n_features = image_features.shape[0] if image_features.ndim == 2 else image_features.shape[0] * image_features.shape[1]
        if n_tokens != n_features:
            raise ValueError(f"the text has {n_tokens} image placeholder tokens but the images give {n_features} "
                             "features; expand each <image> with DoveLlavaProcessor using the same tower and queries.")
        return mask.unsqueeze(-1).to(inputs_embeds.device)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        image_queries=None,
        image_lengths: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        tower_outputs=None,
        **kwargs,
    ):
        """`LlavaModel.forward` plus `image_queries` (Q-DOVE), `image_lengths` (checked against the tower) and
        `tower_outputs` (the processor's tower pass, reused)."""
        self._check_context(input_ids if input_ids is not None else inputs_embeds, cache)
        if pixel_values is not None and self.has_dove_tower:
            if mm_encoder_outputs is not None and mm_encoder_outputs.get("image") is not None:
                raise ValueError("pass either pixel_values or precomputed image features (mm_encoder_outputs), not both.")
            mm_encoder_outputs = dict(mm_encoder_outputs or {})
            mm_encoder_outputs["image"] = self.get_image_features(
                pixel_values, image_queries=image_queries, image_lengths=image_lengths, tower_outputs=tower_outputs
            )
            pixel_values = None
        elif pixel_values is not None and image_queries is not None:
            if any(isinstance(q, str) and q.strip() for q in _as_list(image_queries)):
                raise ValueError("image_queries need a Q-DOVE vision tower; swap one in with set_vision_tower(...).")
        return super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )

    def _check_context(self, tokens: torch.Tensor | None, cache) -> None:
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if tokens is None or limit is None:
            return
        total = tokens.shape[1] + (cache.get_seq_length() if cache is not None else 0)
        if total > limit:
            raise ValueError(f"the sequence is {total} tokens (text plus image tokens) but the language model's context "
                             f"is {limit} (text_config.max_position_embeddings); shorten the prompt or use fewer tokens "
                             "per image.")

    def set_vision_tower(self, tower: torch.nn.Module) -> None:
        """Swap in another vision tower (e.g. grid → DOVE, or CLIP → DOVE). The projector is rebuilt (freshly
        initialised) when the feature width changes, and kept otherwise."""
        old_width = self.multi_modal_projector.linear_1.in_features
        self.vision_tower = tower
        self.config.vision_config = tower.config
        if isinstance(tower, TOWERS):
            # CLIP feature-layer settings do not apply to DOVE features (and a list would widen the projector).
            self.config.vision_feature_layer = -1
            self.config.vision_feature_select_strategy = "full"
            self.config.image_seq_length = tower.max_tokens
        new_width = self.config.vision_config.hidden_size
        if new_width != old_width:
            reference = self.multi_modal_projector.linear_1.weight
            projector = LlavaMultiModalProjector(self.config)
            for module in projector.modules():
                self._init_weights(module)
            self.multi_modal_projector = projector.to(device=reference.device, dtype=reference.dtype)


class DoveLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """[`LlavaForConditionalGeneration`] on a DOVE / Q-DOVE tower: per-image variable-length features, `image_queries`
    threaded through `forward` and `generate` (prefill only). Saved and loaded with `save_pretrained` /
    `from_pretrained` (or `AutoModelForImageTextToText`), no `trust_remote_code`."""

    config: DoveLlavaConfig
    config_class = DoveLlavaConfig

    def __init__(self, config: DoveLlavaConfig):
        LlavaPreTrainedModel.__init__(self, config)  # LlavaForConditionalGeneration.__init__ with a DoveLlavaModel
        self.model = DoveLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def set_vision_tower(self, tower: torch.nn.Module) -> None:
        """See [`DoveLlavaModel.set_vision_tower`]."""
        self.model.set_vision_tower(tower)

    def get_image_features(self, pixel_values: torch.Tensor, image_queries=None, **kwargs):
        """See [`DoveLlavaModel.get_image_features`]: `.pooler_output` is the list of per-image features."""
        return self.model.get_image_features(pixel_values=pixel_values, image_queries=image_queries, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        image_queries=None,
        image_lengths: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        tower_outputs=None,
        **kwargs,
    ):
        """`LlavaForConditionalGeneration.forward` plus `image_queries` (one text or None per image, for a Q-DOVE
        tower), `image_lengths` (the processor's counts, checked against the tower) and `tower_outputs` (the
        processor's tower pass over these images, reused instead of a second one)."""
        return super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            mm_encoder_outputs=mm_encoder_outputs,
            image_queries=image_queries,
            image_lengths=image_lengths,
            tower_outputs=tower_outputs,
            **kwargs,
        )

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            inputs.pop("image_queries", None)  # the image features live in the cache after prefill
            inputs.pop("image_lengths", None)
            inputs.pop("tower_outputs", None)
        return inputs

    # Saving and loading -----------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """Weights and config, plus a Q-DOVE tower's query tokenizer in `query_tokenizer/`."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        tower = self.model.vision_tower
        if isinstance(tower, DoveVisionTower) and tower.dove.query_tokenizer is not None:
            tower.dove.query_tokenizer.save_pretrained(os.path.join(save_directory, QUERY_TOKENIZER_DIR))
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a DOVE tower comes back frozen with its query tokenizer."""
        kwargs.setdefault("use_safetensors", True)  # never unpickle a `pytorch_model.bin` someone handed over
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        tower = loaded.model.vision_tower
        if isinstance(tower, TOWERS):
            tower.freeze()
        if isinstance(tower, DoveVisionTower):
            tokenizer = load_saved_query_tokenizer(pretrained_model_name_or_path, **kwargs) \
                if tower.dove.supports_queries else None
            if tokenizer is not None:
                tower.dove.set_query_tokenizer(tokenizer)
        return model


def _checked_tower_outputs(tower: DoveVisionTower, outputs, pixel_values: torch.Tensor | None):
    """The processor's tower output, checked against this tower and batch (it must come from the same tower)."""
    lengths, features = getattr(outputs, "lengths", None), getattr(outputs, "features", None)
    if lengths is None or features is None:
        raise TypeError(f"tower_outputs must be a DoveVisionTowerOutput (from DoveLlavaProcessor), got "
                        f"{type(outputs).__name__}.")
    if pixel_values is not None and lengths.shape[0] != pixel_values.shape[0]:
        raise ValueError(f"tower_outputs hold {lengths.shape[0]} images but pixel_values {pixel_values.shape[0]}; "
                         "pass the processor's outputs for this batch unchanged.")
    if any(f.shape[-1] != tower.hidden_size for f in features):
        raise ValueError(f"tower_outputs have {features[0].shape[-1]}-wide features but this model's tower gives "
                         f"{tower.hidden_size}; attach the model's own tower to the processor (attach_tower).")
    return outputs


def _as_list(queries) -> list:
    if queries is None:
        return []
    return [queries] if isinstance(queries, str) else list(queries)


# llava-1.5 checkpoints (legacy `language_model.model.*` keys) load through these classes as through Llava's.
register_checkpoint_conversion_mapping(DoveLlavaConfig.model_type, get_checkpoint_conversion_mapping("llava"), overwrite=True)
register_checkpoint_conversion_mapping(DoveLlavaModel.__name__, get_checkpoint_conversion_mapping("LlavaModel"), overwrite=True)

__all__ = ["DoveLlavaModel", "DoveLlavaForConditionalGeneration", "DoveImageFeaturesOutput"]
