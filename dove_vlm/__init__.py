"""dove-vlm: DOVE / Q-DOVE variable-length visual tokens for multimodal LLMs."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_dove import DoveConfig
from .image_processing_dove import DoveImageProcessor
from .modeling_dove import DoveDecoderOutput, DoveEncoderOutput, DoveModel, DoveModelOutput
from .presets import PRESETS, preset_config, preset_training
from .tower_settings import TowerMode, TowerSettings, TowerSettingsError
from .vision_tower import DoveVisionTower, DoveVisionTowerConfig, DoveVisionTowerOutput
from .encoder_tower import EncoderTower, EncoderTowerConfig  # noqa: E402  (after the DOVE tower it wraps around)

__version__ = "0.1.0"

# Registration in one place: `AutoConfig`/`AutoModel` load DOVE checkpoints without trust_remote_code.
AutoConfig.register(DoveConfig.model_type, DoveConfig, exist_ok=True)
AutoModel.register(DoveConfig, DoveModel, exist_ok=True)
AutoImageProcessor.register(DoveConfig, slow_image_processor_class=DoveImageProcessor, exist_ok=True)
AutoConfig.register(DoveVisionTowerConfig.model_type, DoveVisionTowerConfig, exist_ok=True)
AutoModel.register(DoveVisionTowerConfig, DoveVisionTower, exist_ok=True)
AutoImageProcessor.register(DoveVisionTowerConfig, slow_image_processor_class=DoveImageProcessor, exist_ok=True)
AutoConfig.register(EncoderTowerConfig.model_type, EncoderTowerConfig, exist_ok=True)
AutoModel.register(EncoderTowerConfig, EncoderTower, exist_ok=True)

from . import llava  # noqa: E402  (registers the LLaVA classes with the Auto classes)

__all__ = [
    "DoveConfig",
    "DoveModel",
    "DoveImageProcessor",
    "DoveEncoderOutput",
    "DoveDecoderOutput",
    "DoveModelOutput",
    "DoveVisionTower",
    "DoveVisionTowerConfig",
    "DoveVisionTowerOutput",
    "TowerMode",
    "TowerSettings",
    "TowerSettingsError",
    "PRESETS",
    "preset_config",
    "preset_training",
]
