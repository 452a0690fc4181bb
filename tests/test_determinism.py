"""Determinism in fp32 on CPU: the same seed and inputs give bit-identical tokens across processes, and an image's
tokens do not depend on which other images share its batch, their order or their queries."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dove_vlm import DoveModel, preset_config
from tests.conftest import MICRO_OVERRIDES
from tests.llava.tiny_models import varied_images

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["the blue triangle", None, "what colour is the square?", "the red circle", "", "is there a green cross?",
           "circle"]

ENCODE_SCRIPT = """
import hashlib, torch
from dove_vlm import DoveModel, preset_config
from tests.conftest import MICRO_OVERRIDES
torch.manual_seed(0)
model = DoveModel(preset_config("tiny", **MICRO_OVERRIDES)).eval()
images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
with torch.no_grad():
    out = model.encode(images)
print(hashlib.sha256(out.tokens.numpy().tobytes() + out.lengths.numpy().tobytes()).hexdigest())
"""


def _fingerprint(out) -> str:
    return hashlib.sha256(out.tokens.numpy().tobytes() + out.lengths.numpy().tobytes()).hexdigest()


def test_same_seed_gives_bit_identical_tokens_across_processes():
    torch.manual_seed(0)
    model = DoveModel(preset_config("tiny", **MICRO_OVERRIDES)).eval()
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        here = _fingerprint(model.encode(images))
        assert _fingerprint(model.encode(images)) == here
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run([sys.executable, "-c", ENCODE_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == here


@pytest.fixture(scope="module")
def models():
    from tests.llava.tiny_models import spread_dove

    return {"plain": spread_dove(query=False), "query": spread_dove(query=True)}


@torch.no_grad()
@pytest.mark.parametrize("which", ["plain", "query"])
@pytest.mark.parametrize("max_tokens", [None, 1, 5])
def test_tokens_do_not_depend_on_the_batch(models, which, max_tokens):
    model = models[which]
    images = varied_images(len(QUERIES))
    queries = QUERIES if which == "query" else [None] * len(QUERIES)
    alone = [model.encode(images[i : i + 1], queries=[queries[i]], max_tokens=max_tokens) for i in range(len(QUERIES))]
    assert len({int(a.lengths[0]) for a in alone}) > 1 or max_tokens == 1  # the lengths really vary
    generator = torch.Generator().manual_seed(3)
    compositions = [list(range(len(QUERIES)))] + [torch.randperm(len(QUERIES), generator=generator)[:size].tolist()
                                                 for size in (2, 3, 4, 5, 6, 7, 7)]
    for rows in compositions:
        out = model.encode(images[rows], queries=[queries[i] for i in rows], max_tokens=max_tokens)
        for position, row in enumerate(rows):
            single = alone[row]
            assert torch.equal(out.lengths[position], single.lengths[0]), (rows, row)
            assert torch.equal(out.tokens[position, : single.tokens.shape[1]], single.tokens[0]), (rows, row)
            assert torch.equal(out.p_eos[position], single.p_eos[0]), (rows, row)
            assert not out.tokens[position, single.tokens.shape[1] :].any()


@torch.no_grad()
def test_grouped_query_batches_keep_every_output_field(models):
    model = models["query"]
    images = varied_images(4)
    queries = ["the blue triangle", None, "circle", "what colour is the square?"]
    out = model.encode(images, queries=queries, output_hidden_states=True, num_tokens=torch.tensor([0, 3, 0, 2]))
    assert out.lengths[1] == 3 and out.lengths[3] == 2
    assert out.hidden_states.shape[:2] == out.tokens.shape[:2] == out.attention_mask.shape
    torch.testing.assert_close(out.latents, model.encode_latents(images), rtol=0, atol=0)
    fast = model.encode(images, queries=queries, early_exit=True)
    assert torch.equal(fast.lengths, model.encode(images, queries=queries).lengths)


@torch.no_grad()
def test_batch_invariant_off_uses_one_batched_vqgan_call_with_the_same_latents(models):
    model = models["plain"]
    images = varied_images(6)
    calls = []
    hook = model.vqgan.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        exact = model.encode_latents(images)
        assert calls == [1] * 6  # the default: one image at a time
        calls.clear()
        with model.batch_invariance(False):
            fast = model.encode_latents(images)
        assert calls == [6] and model.config.batch_invariant  # restored after the block
        with pytest.raises(RuntimeError), model.batch_invariance(False):
            raise RuntimeError("interrupted")
        assert model.config.batch_invariant  # restored after an error too
    finally:
        hook.remove()
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-5)
