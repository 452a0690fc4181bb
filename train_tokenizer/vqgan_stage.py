"""Stage 0 of the tiny recipe: train a small VQGAN (diffusers `VQModel`) on the data, then freeze it.

No pretrained VQGAN can be loaded offline, so the tiny preset makes its own. DOVE reads the continuous
(pre-quantization) latents, so the loss is mainly the MSE of decoding those, plus a smaller VQ-VAE term
(quantised decode + commitment) that keeps the codebook meaningful."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import VQModel
from tqdm.auto import tqdm

from dove_vlm.vqgan import decode_continuous

from .data import to_pixel_values

VQGAN_DIR = "vqgan"
SETTINGS_FILE = "dove_vqgan_stage.json"


def stage_settings(vqgan: VQModel, **recipe) -> dict:
    """Everything the trained VQGAN depends on: its config and the recipe (steps, batch size, learning rate, seed,
    data), as JSON values."""
    config = {k: v for k, v in dict(vqgan.config).items() if not k.startswith("_")}
    return json.loads(json.dumps({**recipe, "vqgan_config": config}, default=str))


def check_reusable(target: Path, settings: dict) -> None:
    """Refuse to reuse a VQGAN stage trained with other settings (a changed `--vqgan-steps`, data or seed)."""
    path = target / SETTINGS_FILE
    if not path.is_file():
        print(f"note: {target} records no training settings (written by an older dove); reusing it as it is. "
              "Delete it to train the VQGAN again.", flush=True)
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable ({err}); delete {target} to train the VQGAN again.") from err
    diff = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in settings.items() if saved.get(key) != value]
    if diff:
        shown = "; ".join(d if len(d) < 120 else d[:117] + "..." for d in diff)
        raise ValueError(f"the VQGAN stage in {target} was trained with other settings ({shown}). Rerun with "
                         "the same settings to reuse it, or start again with --overwrite (or another --output-dir).")


def load_trained_vqgan(vqgan: VQModel, output_dir: str | os.PathLike, settings: dict | None = None) -> bool:
    """Load the VQGAN stage's result from `output_dir/vqgan` into `vqgan` (frozen) if it is there; with
    `settings`, only when it was trained with them (else a `ValueError` lists the differences)."""
    target = Path(output_dir) / VQGAN_DIR
    if not (target / "config.json").is_file():
        return False
    if settings is not None:
        check_reusable(target, settings)
        print(f"reusing the VQGAN stage in {target} (trained with the same settings)", flush=True)
    vqgan.load_state_dict(VQModel.from_pretrained(target, use_safetensors=True).state_dict())
    vqgan.eval().requires_grad_(False)
    return True


def train_vqgan(
    vqgan: VQModel,
    batches: Iterator[dict],
    output_dir: str | os.PathLike,
    steps: int,
    learning_rate: float,
    seed: int,
    device: torch.device,
    quantized_weight: float = 0.1,
    settings: dict | None = None,
) -> VQModel:
    """Train `vqgan` in place for `steps` on `batches` (`{"pixels"}` uint8 dicts) and save it to
    `output_dir/vqgan` (atomically). If that folder is already there (a resumed run), load it instead of
    training again. In a multi-process run only the main process calls this (the others wait, then load)."""
    if load_trained_vqgan(vqgan, output_dir, settings):
        return vqgan
    target = Path(output_dir) / VQGAN_DIR
    torch.manual_seed(seed)
    vqgan.train().requires_grad_(True).to(device)
    optimizer = torch.optim.Adam(vqgan.parameters(), lr=learning_rate, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=learning_rate * 0.05)
    progress = tqdm(range(steps), desc="VQGAN", dynamic_ncols=True)
    for step in progress:
        images = to_pixel_values(next(batches)["pixels"].to(device))
        latents = vqgan.encode(images).latents
        quantized = vqgan.decode(latents)
        continuous = decode_continuous(vqgan, latents)
        mse = torch.nn.functional.mse_loss(continuous, images)
        # DOVE reads the continuous latents, so their reconstruction dominates; the quantised path keeps the
        # codebook meaningful (the VQGAN stays a usable VQGAN) at a tenth of the weight.
        quantized_loss = torch.nn.functional.mse_loss(quantized.sample, images) + quantized.commit_loss.mean()
        loss = mse + quantized_weight * quantized_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 10 == 0:
            progress.set_postfix(mse=f"{mse.item():.4f}")
    vqgan.eval().requires_grad_(False)
    tmp = target.with_name(VQGAN_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    vqgan.save_pretrained(tmp)
    if settings is not None:
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
    os.replace(tmp, target)
    return vqgan
