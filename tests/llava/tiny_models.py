"""Micro DOVE / Q-DOVE towers whose lengths differ across images and questions (random weights, rescaled so that
the EOS head reads the image and the query), images that exercise them, and a tiny LLaVA on top."""

import torch

from dove_vlm import DoveImageProcessor, DoveModel, DoveVisionTower, DoveVisionTowerConfig, preset_config
from dove_vlm.llava import DoveLlavaProcessor, build_text_tokenizer, build_tiny_llava
from dove_vlm.query_tokenizer import default_query_tokenizer
from tests.conftest import MICRO_OVERRIDES

QUESTIONS = [
    "what colour is the circle ?",
    "how many shapes are there ?",
    "is there a red square ?",
    "where is the blue triangle ?",
]
ANSWERS = ["red", "blue", "green", "yes", "no", "two", "three", "left", "right"]


def spread_dove(query: bool = True) -> DoveModel:
    """A micro DOVE (or Q-DOVE with `query=True`) whose lengths vary over `varied_images()` and, for Q-DOVE, with
    the question."""
    overrides = dict(MICRO_OVERRIDES)
    tokenizer = default_query_tokenizer(num_scenes=50) if query else None
    if query:
        overrides.update(query_vocab_size=len(tokenizer), query_max_length=8)
    torch.manual_seed(0)
    model = DoveModel(preset_config("tiny", **overrides))
    if query:
        model.set_query_tokenizer(tokenizer)
    with torch.no_grad():  # seeds picked so that lengths spread (plain: 1..16, Q-DOVE: 4..16)
        torch.manual_seed(3 if query else 1)
        model.eos_head.weight.normal_(0, 1.0)
        model.eos_head.bias.fill_(-1.0)
        model.latent_in.weight.mul_(30)
        model.timestep_in.weight.mul_(0.1)
        if query:
            model.query_embed.weight.mul_(30)
    return model.eval()


def varied_images(count: int = 8) -> torch.Tensor:
    """`(count, 3, 32, 32)` in [-1, 1]: flat-ish images of different brightness and noise levels."""
    generator = torch.Generator().manual_seed(0)
    level = torch.linspace(-0.9, 0.9, 8).view(8, 1, 1, 1)
    noise = torch.tensor([0, 0.1, 0.9, 0.3, 0.05, 0.6, 0.2, 1.0]).view(8, 1, 1, 1)
    images = (level + noise * (torch.rand(8, 3, 32, 32, generator=generator) * 2 - 1)).clamp(-1, 1)
    return images[:count]


def pil_images(count: int = 8):
    """`varied_images` as 8-bit PIL images, and the pixel values the processor makes of them."""
    images = DoveImageProcessor.postprocess(varied_images(count))
    return images, DoveImageProcessor(size=32).preprocess(images)["pixel_values"]


def make_tower(mode: str = "adaptive", query: bool = True, dove: DoveModel | None = None, **config) -> DoveVisionTower:
    dove = dove if dove is not None else spread_dove(query)
    return DoveVisionTower(DoveVisionTowerConfig(dove_config=dove.config, mode=mode, **config), dove=dove)


def text_tokenizer(model_max_length: int = 512):
    return build_text_tokenizer(QUESTIONS + ANSWERS, model_max_length=model_max_length)


def make_llava(tower: DoveVisionTower, model_max_length: int = 512, seed: int = 0):
    """A tiny LLaVA (fp32, eval) and its processor on `tower`."""
    tokenizer = text_tokenizer(model_max_length)
    torch.manual_seed(seed)
    model = build_tiny_llava(tower, tokenizer)
    processor = DoveLlavaProcessor(image_processor=tower.image_processor, tokenizer=tokenizer).attach_tower(tower)
    return model, processor


def prompt(question: str) -> str:
    return f"USER: <image>\n{question} ASSISTANT:"
