"""The parts of a training run's set-up that a preset decides, kept out of the loop in `train.py`: seeded random
inits, the reconstruction loss (LPIPS trunk policy, discriminator), and device settings (TF32 on CUDA, gradient
checkpointing of the frozen VQGAN decoder)."""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Callable

import torch

from dove_vlm.vqgan import set_decoder_checkpointing

from .config import TrainingArguments
from .losses import ReconstructionLoss


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one named random init of a run: a pure function of (`seed`, `stream`)."""
    return (int(seed) * 1_000_003 + zlib.crc32(stream.encode())) % 2**63


@contextmanager
def seeded(seed: int, stream: str):
    """Inside the block the CPU generator is seeded by (`seed`, `stream`); outside it is untouched (forked and
    restored). Each random init (the query embedding, the discriminator, a random LPIPS trunk) then follows `--seed`
    and does not depend on what was drawn before it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, stream))
        yield


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (the fp32 parts of a bf16 step: the frozen VQGAN decoder, LPIPS, the
    losses); nothing changes on other devices (fp32 on the CPU)."""
    if torch.device(device).type != "cuda":
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "tf32"
        conv.fp32_precision = "tf32"
    else:  # torch before the fp32_precision switches
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def configure_training(model, args: TrainingArguments, device: torch.device) -> None:
    """Device settings and the optional gradient checkpointing of the frozen VQGAN decoder (`model.vqgan`)."""
    configure_device(device)
    set_decoder_checkpointing(model.vqgan, args.vqgan_gradient_checkpointing)


def build_reconstruction_loss(args: TrainingArguments, log: Callable[[str], None] = print) -> ReconstructionLoss:
    """The run's `ReconstructionLoss`, its random inits (discriminator, a random LPIPS trunk) seeded by `--seed`.
    LPIPS uses the real trunk when one is found; a random one is refused where the preset requires the real one
    (paper) unless `--allow-random-lpips`, and is said in a log line where it is allowed."""
    import warnings

    with seeded(args.seed, "reconstruction_loss"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LPIPS uses a random")  # said once below instead
        loss = ReconstructionLoss(
            mse_weight=args.mse_weight, lpips_weight=args.lpips_weight, gan_weight=args.gan_weight,
            lpips_trunk_weights=args.lpips_trunk, use_gan=args.gan_weight > 0,
            allow_random_lpips=args.random_lpips_allowed,
        )
    if loss.lpips is not None:
        if loss.lpips.trunk_source:
            log(f"LPIPS: AlexNet trunk from {loss.lpips.trunk_source}")
        else:
            why = "--allow-random-lpips" if args.allow_random_lpips else f"the {args.preset} preset allows it"
            log(f"LPIPS: random AlexNet trunk (a random-feature loss; {why}; --lpips-trunk FILE for the real one)")
    return loss
