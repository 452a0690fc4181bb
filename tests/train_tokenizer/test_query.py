import pytest
import torch

from train_tokenizer.losses import ReconstructionLoss
from train_tokenizer.query import GroundingTrainingSet, box_mask, boxes_to_pixels, query_loss


@pytest.fixture
def mse_loss():
    return ReconstructionLoss(lpips_weight=0.0, gan_weight=0.0)


def test_query_loss_counts_the_box_and_barely_the_outside(mse_loss):
    target = torch.zeros(3, 3, 32, 32)
    recon = target.clone()
    recon[:, :, 20:, 20:] = 1.0  # error only in the bottom-right corner
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[20.0, 20.0, 32.0, 32.0]]), None]
    loss = query_loss(mse_loss, recon, target, boxes, outside_weight=1e-10, crop_size=32)
    assert loss[0].item() < 1e-9  # in-box perfect; the outside error is weighted by 1e-10
    assert loss[1].item() == pytest.approx(1.0, abs=0.05)
    assert loss[2].item() == 0.0  # a null-query sample has no query loss
    heavy = query_loss(mse_loss, recon, target, boxes[:1], outside_weight=1.0, crop_size=32)
    assert heavy[0].item() > 0.1


def test_query_loss_averages_over_several_boxes(mse_loss):
    target = torch.zeros(1, 3, 32, 32)
    recon = target.clone()
    recon[:, :, :8, :8] = 1.0
    two = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [16.0, 16.0, 24.0, 24.0]])]
    assert query_loss(mse_loss, recon, target, two, 0.0, 16)[0].item() == pytest.approx(0.5, abs=0.05)


def test_box_mask_on_the_latent_grid():
    mask = box_mask([torch.tensor([[4.0, 4.0, 12.0, 8.0]]), None], image_size=32, grid_size=8)
    assert mask.shape == (2, 1, 8, 8)
    assert mask[0, 0].nonzero().tolist() == [[1, 1], [1, 2]]
    assert mask[1].all()
    assert boxes_to_pixels([(0.0, 0.0, 0.0, 0.5)], 32).tolist() == [[0.0, 0.0, 1.0, 16.0]]


def test_grounding_set_samples_deterministically_with_null_queries():
    data = GroundingTrainingSet.synthetic(40, 32, seed=0)
    indices = list(range(40))
    queries, boxes = data.sample_queries(indices, null_prob=0.5, seed=0, step=3)
    assert (queries, [None if b is None else b.tolist() for b in boxes]) == (
        lambda q, b: (q, [None if x is None else x.tolist() for x in b]))(*data.sample_queries(indices, 0.5, 0, 3))
    nulls = sum(q is None for q in queries)
    assert 5 < nulls < 35
    for q, b in zip(queries, boxes):
        assert q is not None or b is None
        if b is not None:
            assert b.shape[1] == 4 and (b[:, 2] > b[:, 0]).all()
    # A question about an absent object (or the count of an empty scene) is a query without boxes: its target is
    # the whole image.
    unboxed = {text for options in data.groundings for text, b in options if b is None}
    assert unboxed and all(t.startswith("is there a ") or t == "how many objects are there?" for t in unboxed)
    always = data.sample_queries(indices, null_prob=0.0, seed=0, step=3)[0]
    empty_scenes = sum(not g for g in data.groundings)
    assert sum(q is None for q in always) == empty_scenes
