"""benchmarks/paper_preset.py: its rows run and compute what they claim (timings are printed, never asserted)."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import paper_preset

from dove_vlm.presets import PAPER_MICRO_OVERRIDES

CPU = torch.device("cpu")


def test_training_step_runs_in_fp32_and_bf16_and_updates_the_weights():
    for precision in ("no", "bf16"):
        model = paper_preset.build(PAPER_MICRO_OVERRIDES, CPU)
        assert model.config.vqgan_config["lookup_from_codebook"] and model.config.downsample_factor == 16
        before = model.token_head.weight.detach().clone()
        step = paper_preset.training_step(model, 2, CPU, precision)
        assert math.isfinite(step())
        assert not torch.equal(model.token_head.weight, before)
        assert all(p.grad is None for p in model.vqgan.parameters())  # the VQGAN stays frozen


@torch.no_grad()
def test_encode_rows_compute_what_they_name():
    model = paper_preset.build(PAPER_MICRO_OVERRIDES, CPU).eval()
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    rows = paper_preset.encode_rows(model, images, batch=2)
    n = model.config.max_tokens
    assert set(rows) == {f"{name} ({p})" for p in ("fp32", "bf16")
                         for name in ("VQGAN encoder", f"DOVE k={n}", f"DOVE k={n // 4}, early exit")}
    latents = torch.cat(rows["VQGAN encoder (fp32)"]())
    assert latents.shape == (3, 8, 4, 4)
    assert all(out.lengths.tolist() == [n] * len(out.lengths) for out in rows[f"DOVE k={n} (fp32)"]())
    assert all(out.lengths.tolist() == [n // 4] * len(out.lengths)
               for out in rows[f"DOVE k={n // 4}, early exit (bf16)"]())
    assert paper_preset.loader_rows(None) == {}
