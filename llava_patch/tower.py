"""`DoveLlavaVisionTower`: a [`DoveVisionTower`] shaped like LLaVA's `CLIPVisionTower`, so that the original
LLaVA code base (`llava.model.multimodal_encoder`) builds, loads, moves and calls it like its own towers.

Tower names: `dove:PATH` or `dove:PATH?key=value&...` (PATH a tower folder or a `dove train` checkpoint; the
optional query string sets tower config fields such as `mode=query`, `eos_threshold=0.3`, `mode=fixed&num_tokens=32`),
or the bare path of a folder that holds a DOVE checkpoint. The name is stored in LLaVA's config
(`mm_vision_tower`), so a saved LLaVA model rebuilds the same tower.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from dove_vlm.configuration_dove import DoveConfig
from dove_vlm.image_processing_dove import DoveImageProcessor
from dove_vlm.checkpoints import local_model_type
from dove_vlm.tower_settings import TowerSettings, TowerSettingsError
from dove_vlm.vision_tower import DoveVisionTower, DoveVisionTowerConfig, TowerProperties

DOVE_PREFIX = "dove:"
DOVE_MODEL_TYPES = (DoveConfig.model_type, DoveVisionTowerConfig.model_type)


class LlavaDoveImageProcessor(DoveImageProcessor):
    """[`DoveImageProcessor`] plus the fields LLaVA's scripts read from a CLIP processor: `image_mean` (the
    padding colour of `image_aspect_ratio="pad"`: mid-grey, which is 0 in DOVE's [-1, 1] pixels), `image_std`
    and `crop_size` (the size of the blank image LLaVA's training gives text-only samples)."""

    @property
    def image_mean(self) -> list[float]:
        return [0.5, 0.5, 0.5]

    @property
    def image_std(self) -> list[float]:
        return [0.5, 0.5, 0.5]

    @property
    def crop_size(self) -> dict[str, int]:
        return {"height": self.size, "width": self.size}


def parse_tower_name(name) -> tuple[str, dict] | None:
    """`"dove:PATH?mode=query"` → `(PATH, {"mode": "query"})`; a folder holding a DOVE checkpoint → `(folder, {})`;
    anything else (CLIP names, other folders) → `None`, i.e. not a DOVE tower."""
    if not isinstance(name, str):
        return None
    if name.startswith(DOVE_PREFIX):
        path, _, query = name[len(DOVE_PREFIX):].partition("?")
        try:
            overrides = TowerSettings.parse(query).to_dict()
        except TowerSettingsError as err:
            raise ValueError(f"bad DOVE tower option in {name!r}: {err}") from None
        if not path:
            raise ValueError(f"{name!r} names no DOVE checkpoint; use dove:PATH (a tower folder or a `dove train` folder).")
        return os.path.expanduser(path), overrides
    if os.path.isdir(name) and local_model_type(name, strict=False) in DOVE_MODEL_TYPES:
        return name, {}
    return None


def tower_config(path: str, overrides: dict) -> DoveVisionTowerConfig:
    """The tower config of a tower folder or a plain DOVE checkpoint, with `overrides`, without loading weights."""
    model_type = local_model_type(path, strict=False)
    if model_type == DoveConfig.model_type:
        return DoveVisionTowerConfig(dove_config=DoveConfig.from_pretrained(path), **overrides)
    if model_type == DoveVisionTowerConfig.model_type:
        config = DoveVisionTowerConfig.from_pretrained(path)
        for key, value in overrides.items():
            setattr(config, key, value)
        config.validate_tower()
        return config
    raise ValueError(f"{path!r} is not a DOVE checkpoint folder (no config.json with model_type "
                     f"{' or '.join(map(repr, DOVE_MODEL_TYPES))}); train one with `dove train` or save a DoveVisionTower.")


class DoveLlavaVisionTower(TowerProperties, nn.Module):
    """LLaVA-side adapter of a [`DoveVisionTower`]: the attributes and methods LLaVA's code uses on a vision tower
    (`is_loaded`, `load_model`, `image_processor`, `hidden_size`, `config`, `device`, `dtype`, `num_patches`,
    `dummy_feature`, `forward(images)`), with `forward(images, queries=None)` returning one `(L_i, D)` tensor per
    image (a list, not a padded tensor).

    Args:
        vision_tower (`str`): the tower name (`dove:PATH[?options]` or a DOVE folder), see the module doc.
        args: LLaVA's model arguments / config (its `mm_vision_select_*` fields do not apply to DOVE).
        delay_load (`bool`): read only the config now and the weights in `load_model()`, as LLaVA does when it
            rebuilds a saved model inside `from_pretrained`.
    """

    def __init__(self, vision_tower: str, args=None, delay_load: bool = False):
        super().__init__()
        parsed = parse_tower_name(vision_tower)
        if parsed is None:
            raise ValueError(f"{vision_tower!r} is not a DOVE vision tower; use dove:PATH.")
        self.vision_tower_name = vision_tower
        self.path, self.overrides = parsed
        self.is_loaded = False
        if delay_load:
            self.cfg_only = tower_config(self.path, self.overrides)
        else:
            self.load_model()

    def load_model(self, device_map=None) -> None:
        """Load the DOVE weights (frozen). `device_map` as LLaVA passes it: `"auto"` puts the tower on the GPU when
        there is one (as the CLIP tower's `device_map="auto"` does), a device or `{"": device}` puts it there."""
        if self.is_loaded:
            print(f"{self.vision_tower_name} is already loaded, `load_model` called again, skipping.")
            return
        self.vision_tower = DoveVisionTower.from_pretrained(self.path, **self.overrides)
        self.vision_tower.requires_grad_(False)
        if isinstance(device_map, dict) and len(set(device_map.values())) == 1:
            device_map = next(iter(device_map.values()))
        if str(device_map) == "auto":
            device_map = "cuda" if torch.cuda.is_available() else None
        if isinstance(device_map, (str, int, torch.device)):
            self.vision_tower.to(device_map)
        self.is_loaded = True

    @torch.no_grad()
    def forward(self, images, queries=None) -> list[torch.Tensor]:
        """`images`: `(B, 3, H, W)` or a list of `(3, H, W)` / `(1, 3, H, W)`; `queries`: `None`, one string, or one
        string/None per image (mode "query" only). Returns B tensors `(L_i, D)` in the dtype of `images`."""
        if isinstance(images, (list, tuple)):
            dtype = images[0].dtype
            pixels = torch.cat([x.unsqueeze(0) if x.ndim == 3 else x for x in images])
        else:
            dtype, pixels = images.dtype, images
        output = self.vision_tower(pixels.to(device=self.device, dtype=self.dtype), queries=queries)
        return [feature.to(dtype) for feature in output.features]

    @property
    def supports_queries(self) -> bool:
        return self.config.mode == "query"

    @property
    def image_processor(self) -> LlavaDoveImageProcessor:
        return LlavaDoveImageProcessor(size=self.config.image_size)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype if self.is_loaded else torch.float32

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device if self.is_loaded else torch.device("cpu")

    @property
    def config(self) -> DoveVisionTowerConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def num_patches(self) -> int:
        """The most features one image can give (LLaVA's workers budget the context with it)."""
        return self.max_tokens
