"""`dove llava-train`: LLaVA (LoRA + projector) on DOVE / Q-DOVE towers, trained through accelerate."""

from .arguments import LlavaTrainingArguments
from .train import format_llava_report, train_llava

__all__ = ["LlavaTrainingArguments", "format_llava_report", "train_llava"]
