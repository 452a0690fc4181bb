"""Configuration of LLaVA on a DOVE / Q-DOVE vision tower."""

from __future__ import annotations

from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.llava.configuration_llava import LlavaConfig


class DoveLlavaConfig(LlavaConfig):
    r"""[`LlavaConfig`] whose vision tower is a [`DoveVisionTower`] (variable-length image features).

    Same fields and defaults as `LlavaConfig` (so that a llava-1.5 `config.json` means the same), except the default
    vision tower:

    Args:
        vision_config (`DoveVisionTowerConfig` or `dict`, *optional*): the tower; any registered vision config is
            accepted too (e.g. the CLIP tower of a llava-1.5 checkpoint, before `set_vision_tower` swaps in DOVE).
        text_config (`PretrainedConfig` or `dict`, *optional*): any causal LM config (Llama by default).
        image_token_id (`int`): the id of the `<image>` placeholder token (alias of `image_token_index`).
        vision_feature_layer, vision_feature_select_strategy: used by CLIP-style towers only; a DOVE tower gives its
            features directly (`set_vision_tower` sets them to -1 / "full").
        image_seq_length (`int`): an upper bound on the features per image (informational; each image has its own).
    """

    model_type = "dove_llava"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="dove_vision_tower"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    def __post_init__(self, **kwargs):
        # A llava-1.5 config.json says model_type "llava"; keep ours, so that the weight-name conversions registered
        # for "dove_llava" apply and a re-saved checkpoint loads as DoveLlava.
        kwargs.pop("model_type", None)
        super().__post_init__(**kwargs)


__all__ = ["DoveLlavaConfig"]
