"""dove-vlm: DOVE / Q-DOVE variable-length visual tokens for multimodal LLMs."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_dove import DoveConfig
from .image_processing_dove import DoveImageProcessor
from .modeling_dove import DoveDecoderOutput, DoveEncoderOutput, DoveModel, DoveModelOutput
from .presets import PRESETS, preset_config, preset_training

__version__ = "0.1.0"

# Registration in one place: `AutoConfig`/`AutoModel` load DOVE checkpoints without trust_remote_code.
AutoConfig.register(DoveConfig.model_type, DoveConfig, exist_ok=True)
AutoModel.register(DoveConfig, DoveModel, exist_ok=True)
AutoImageProcessor.register(DoveConfig, slow_image_processor_class=DoveImageProcessor, exist_ok=True)

__all__ = [
    "DoveConfig",
    "DoveModel",
    "DoveImageProcessor",
    "DoveEncoderOutput",
    "DoveDecoderOutput",
    "DoveModelOutput",
    "PRESETS",
    "preset_config",
    "preset_training",
]
