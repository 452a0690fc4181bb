"""Grid reduction tower modes: `pool-K` (average pooling on the VQGAN grid) and `random-K` (k cells per image):
exact token counts, the pooling layout, per-image determinism, batch-invariant answers, and bad k or modes named."""

import pytest
import torch
import torch.nn.functional as F

from dove_vlm.grid_reduction import pool_grid, pool_shape, random_cells, random_grid
from dove_vlm.tower_settings import TowerMode, TowerSettings, TowerSettingsError
from tests.llava.tiny_models import make_llava, make_tower, varied_images


@pytest.fixture(scope="module")
def grid_tower():
    tower = make_tower(mode="grid", query=False)
    tower.dove.set_latent_statistics(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    return tower


@pytest.mark.parametrize("k", [1, 2, 5, 7, 11, 13, 16, 28, 37, 63, 64])
def test_pool_gives_exactly_k_cells_covering_the_grid(k):
    widths = pool_shape(k, 8, 8)
    assert sum(widths) == k and len(widths) <= 8 and max(widths) <= 8 and max(widths) - min(widths) <= 1
    grid = torch.randn(2, 3, 8, 8)
    pooled = pool_grid(grid, k)
    assert pooled.shape == (2, k, 3)
    ones = pool_grid(torch.ones(1, 1, 8, 8), k)
    torch.testing.assert_close(ones, torch.ones_like(ones))  # every cell is a mean


def test_pool_is_adaptive_average_pooling_when_k_factors_within_the_grid():
    grid = torch.randn(2, 4, 8, 8)
    assert pool_shape(16, 8, 8) == [4] * 4 and pool_shape(28, 8, 8) == [7] * 4
    torch.testing.assert_close(pool_grid(grid, 16), F.adaptive_avg_pool2d(grid, (4, 4)).flatten(2).transpose(1, 2))
    torch.testing.assert_close(pool_grid(grid, 64), grid.flatten(2).transpose(1, 2))
    assert pool_shape(13, 8, 8) == [4, 3, 3, 3]  # 13 is prime and wider than the grid: bands of rows


def test_random_cells_are_distinct_sorted_and_seeded():
    cells = random_cells(10, 8, 8, seed=3)
    assert len(set(cells.tolist())) == 10 and cells.tolist() == sorted(cells.tolist())
    assert torch.equal(cells, random_cells(10, 8, 8, seed=3)) and not torch.equal(cells, random_cells(10, 8, 8, 4))


def test_random_grid_depends_on_the_image_not_the_batch():
    grid = torch.randn(3, 2, 8, 8)
    pixels = torch.rand(3, 3, 32, 32)
    together = random_grid(grid, 5, pixels)
    alone = torch.cat([random_grid(grid[i : i + 1], 5, pixels[i : i + 1]) for i in range(3)])
    assert together.shape == (3, 5, 2) and torch.equal(together, alone)


@pytest.mark.parametrize("mode, k", [("pool", 16), ("pool", 13), ("random", 8), ("random", 64)])
def test_tower_token_counts_are_exact(grid_tower, mode, k):
    tower = grid_tower.with_settings(f"{mode}-{k}")
    pixels = varied_images(4)
    out = tower(pixels)
    assert out.lengths.tolist() == [k] * 4 and out.last_hidden_state.shape == (4, k, grid_tower.hidden_size)
    assert tower.num_image_tokens(pixels).tolist() == [k] * 4 and tower.max_tokens == k
    assert not tower.counts_need_a_pass and tower.settings.mode is TowerMode(mode)


@pytest.mark.parametrize("mode", ["pool-13", "random-9"])
def test_answers_are_batch_invariant(grid_tower, mode):
    from dove_vlm.llava.vqa import build_vqa_split, generate_answers

    model, processor = make_llava(grid_tower)
    model.set_vision_tower(grid_tower.with_settings(mode))
    processor.attach_tower(model.model.vision_tower)
    records = build_vqa_split("test", 3, seed=0)[:5]
    one, lengths = generate_answers(model, processor, records, batch_size=1)
    many, _ = generate_answers(model, processor, records, batch_size=5)
    assert one == many and lengths == [int(mode.split("-")[1])] * 5


@pytest.mark.parametrize("spelling, mode, k", [
    ("pool-16", TowerMode.POOL, 16), ("random_8", TowerMode.RANDOM, 8), ("mode=pool,num_tokens=4", TowerMode.POOL, 4),
    ("tower_mode=random-3", TowerMode.RANDOM, 3),
])
def test_settings_spellings_round_trip(spelling, mode, k):
    settings = TowerSettings.parse(spelling)
    assert (settings.mode, settings.num_tokens) == (mode, k)
    assert TowerSettings.parse(settings.to_string()) == settings and settings.to_string() == f"{mode.value}-{k}"


@pytest.mark.parametrize("spelling, message", [
    ("pool-0", "tower mode 'pool-0': k must be a whole number >= 1, got 0"),
    ("random-0", "tower mode 'random-0': k must be a whole number >= 1"),
    ("pool", "mode=pool needs num_tokens=K"),
    ("poolx", "unknown tower mode 'poolx'; choose one of: grid, fixed-K, pool-K, random-K"),
    ("median-4", "unknown tower mode 'median-4'; choose one of:"),
    ("mode=adaptive,num_tokens=4", "num_tokens only applies to mode=fixed, pool or random"),
])
def test_bad_spellings_are_named(spelling, message):
    with pytest.raises(TowerSettingsError, match=message.replace("(", r"\(").replace("+", r"\+")):
        TowerSettings.parse(spelling)


@pytest.mark.parametrize("mode", ["pool-65", "random-100"])
def test_k_larger_than_the_grid_is_named(grid_tower, mode):
    with pytest.raises(ValueError, match=rf"{mode}: k must be a whole number in \[1, 64\] \(the 8x8 grid's cells\)"):
        grid_tower.with_settings(mode)
