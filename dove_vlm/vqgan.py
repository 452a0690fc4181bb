"""The frozen VQGAN (a diffusers `VQModel`) as DOVE uses it: continuous latents decoded for any VQGAN config,
optional gradient checkpointing of its decoder, and the check that a pretrained VQGAN fits a DOVE config.

`VQModel.decode(h, force_not_quantize=True)` does not skip the codebook for every config: with
`lookup_from_codebook=True` (aMUSEd's VQGAN) it reads `h` as codebook indices. DOVE's latents are continuous, so
they go through `post_quant_conv` and the decoder directly (the same two calls `VQModel.decode` makes after
quantising)."""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from diffusers import VQModel

# The `VQModel` arguments that shape its weights or change what the encoder/decoder compute. `scaling_factor`,
# `sample_size` and `force_upcast` are not read by DOVE (its latent statistics normalise the latents), and
# `lookup_from_codebook` only changes `VQModel.decode`'s index path, which DOVE never takes.
ARCHITECTURE_KEYS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                     "layers_per_block", "act_fn", "latent_channels", "num_vq_embeddings", "norm_num_groups",
                     "vq_embed_dim", "norm_type", "mid_block_add_attention")


def decode_continuous(vqgan: VQModel, latents: torch.Tensor) -> torch.Tensor:
    """Pixels `(B, 3, H, W)` (unclamped) of continuous latents `(B, C, h, w)`: `post_quant_conv` + decoder, the
    codebook skipped whatever `lookup_from_codebook` says. A spatial-norm VQGAN conditions its decoder on the
    latents, as `VQModel.decode` does."""
    hidden = vqgan.post_quant_conv(latents)
    return vqgan.decoder(hidden, latents if vqgan.config.norm_type == "spatial" else None)


def set_decoder_checkpointing(vqgan: VQModel, enabled: bool = True) -> VQModel:
    """Gradient checkpointing of the VQGAN decoder only (diffusers' own switch, on `vqgan.decoder`): the frozen
    decoder's activations are recomputed in the backward pass instead of stored, which is most of the activation
    memory of a DOVE training step at 256 px. The encoder is frozen and runs without gradients, so it is left as is."""
    for module in vqgan.decoder.modules():
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = enabled
            if enabled:
                module._gradient_checkpointing_func = _checkpoint
    return vqgan


def _checkpoint(module, *args):
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def decoder_checkpointing(vqgan: VQModel) -> bool:
    return bool(getattr(vqgan.decoder, "gradient_checkpointing", False))


def check_vqgan_config(found: dict[str, Any], expected: dict[str, Any], source: str) -> None:
    """A clear error when the pretrained VQGAN at `source` (its config, `found`) is not the one the DOVE config
    (`expected`, its `vqgan_config`) was built for."""
    def norm(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    differ = [key for key in ARCHITECTURE_KEYS if key in found and key in expected
              and norm(found[key]) != norm(expected[key])]
    if differ:
        detail = "; ".join(f"{key}: the VQGAN has {found[key]!r}, the preset {expected[key]!r}" for key in differ[:4])
        raise ValueError(
            f"the VQGAN at {source!r} does not match this model's vqgan_config ({detail}); use the preset made for "
            "that VQGAN (`paper` for amused/amused-256), or build the model with its config, e.g. "
            "--model-overrides '{\"vqgan_config\": {...its config.json...}}'."
        )
