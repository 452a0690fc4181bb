"""benchmarks/throughput.py: its rows run and compute what they claim (timings are printed, never asserted)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import throughput


@torch.no_grad()
def test_encode_rows_compute_the_same_tokens_on_both_vqgan_paths(micro_model, images):
    rows = throughput.encode_rows(micro_model, typical=3)
    latents = rows["VQGAN encoder, per image"](images)
    torch.testing.assert_close(rows["VQGAN encoder, batched call"](images), latents, rtol=0, atol=1e-5)
    for path in ("per-image VQGAN", "batched VQGAN"):
        off = rows[f"DOVE adaptive, early exit off ({path})"](images)
        on = rows[f"DOVE adaptive, early exit on ({path})"](images)
        assert torch.equal(off.lengths, on.lengths)
        assert rows[f"DOVE fixed k=16 ({path})"](images).lengths.tolist() == [16] * 4
        assert rows[f"DOVE early exit at typical k=3 ({path})"](images).lengths.tolist() == [3] * 4
    assert micro_model.config.batch_invariant is True  # restored after the batched-path rows
    assert throughput.reference_of("DOVE fixed k=16 (batched VQGAN)") == "VQGAN encoder, batched call"


def test_interleaved_times_every_row_and_peak_is_measured():
    calls = []
    times = throughput.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert set(times) == {"a", "b"} and calls == ["a", "b"] + ["a", "b"] * 3
    assert throughput.peak_mib(lambda: torch.ones(4 * 2**20)) > 8  # a 16 MiB tensor
