"""LLaVA on DOVE / Q-DOVE towers (transformers path): config, model, processor and tiny builders.

Importing this package (done by `import dove_vlm`) registers `DoveLlavaConfig` with `AutoConfig`,
`DoveLlavaForConditionalGeneration` with `AutoModelForImageTextToText`, `DoveLlavaModel` with `AutoModel` and
`DoveLlavaProcessor` with `AutoProcessor`, so saved models load without `trust_remote_code`."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from ..image_processing_dove import DoveImageProcessor
from .configuration_dove_llava import DoveLlavaConfig
from .modeling_dove_llava import DoveImageFeaturesOutput, DoveLlavaForConditionalGeneration, DoveLlavaModel
from .processing_dove_llava import DoveLlavaProcessor
from .tiny import build_text_tokenizer, build_tiny_llava

AutoConfig.register(DoveLlavaConfig.model_type, DoveLlavaConfig, exist_ok=True)
AutoModel.register(DoveLlavaConfig, DoveLlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(DoveLlavaConfig, DoveLlavaForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(DoveLlavaConfig, slow_image_processor_class=DoveImageProcessor, exist_ok=True)
AutoProcessor.register(DoveLlavaConfig, DoveLlavaProcessor, exist_ok=True)

__all__ = [
    "DoveLlavaConfig",
    "DoveLlavaModel",
    "DoveLlavaForConditionalGeneration",
    "DoveImageFeaturesOutput",
    "DoveLlavaProcessor",
    "build_text_tokenizer",
    "build_tiny_llava",
]
