"""Steady-state memory of `encode`: repeated calls must not grow resident memory (figures: benchmarks/memory.py)."""

import ctypes
import sys

import pytest
import torch


def _rss_mib() -> float:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages so RSS shows live memory
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@torch.no_grad()
def test_repeated_encode_calls_do_not_grow_memory(micro_model):
    model = micro_model
    pool = [torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1 for seed in range(4)]
    for i in range(20):  # warm-up: allocator pools and lazily built kernels
        model.encode(pool[i % 4], early_exit=bool(i % 2))
    start = _rss_mib()
    for i in range(150):
        model.encode(pool[i % 4], early_exit=bool(i % 2))
    growth = _rss_mib() - start
    assert growth < 8, f"resident memory grew by {growth:.1f} MiB over 150 encode calls"
