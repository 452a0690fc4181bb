import math

import pytest
import torch

from train_tokenizer.losses import (
    DifficultyQuantiles,
    DynamicThreshold,
    EosWeightSchedule,
    PatchDiscriminator,
    ReconstructionLoss,
    detail_error,
    eos_loss,
)


def test_eos_loss_too_lossy_branch_is_p_eos_at_the_end():
    p = torch.tensor([[0.1, 0.2, 0.7, 0.9]], requires_grad=True)
    loss = eos_loss(p, torch.tensor([3]), torch.tensor([0.5]), threshold=0.2)
    assert loss.item() == pytest.approx(0.7)
    loss.sum().backward()
    assert p.grad.tolist() == [[0.0, 0.0, 1.0, 0.0]]  # descent lowers p_eos(m): the end moves later


def test_eos_loss_good_enough_branch_pulls_earlier_positions_up():
    p = torch.tensor([[0.1, 0.3, 0.7, 0.9]], requires_grad=True)
    loss = eos_loss(p, torch.tensor([3]), torch.tensor([0.1]), threshold=0.2)
    assert loss.item() == pytest.approx(-(0.1 + 0.3) / 2)
    loss.sum().backward()
    assert p.grad.tolist() == [[-0.5, -0.5, 0.0, 0.0]]  # descent raises p_eos(i < m): the end moves earlier


def test_eos_loss_length_one_good_enough_is_zero_and_equal_counts_as_good():
    p = torch.tensor([[0.8, 0.1], [0.2, 0.6]])
    loss = eos_loss(p, torch.tensor([1, 2]), torch.tensor([0.3, 0.3]), threshold=0.3)
    assert loss.tolist() == pytest.approx([0.0, -0.2])


def test_eos_loss_batch_mixes_branches_and_checks_shapes():
    p = torch.rand(3, 5)
    loss = eos_loss(p, torch.tensor([5, 2, 1]), torch.tensor([1.0, 0.0, 1.0]), threshold=0.5)
    assert loss.tolist() == pytest.approx([p[0, 4].item(), -p[1, 0].item(), p[2, 0].item()])
    with pytest.raises(ValueError, match="expected p_eos"):
        eos_loss(p, torch.tensor([1, 2]), torch.tensor([1.0, 0.0]), 0.5)


def test_dynamic_threshold_window():
    threshold = DynamicThreshold(window=3)
    assert threshold.value(0.7) == 0.7  # no history yet: the current loss
    for v in [1.0, 2.0, 3.0, 4.0]:
        threshold.update(v)
    assert threshold.value(100.0) == pytest.approx(3.0)  # mean of the last 3
    threshold.update(float("nan"))  # non-finite values are ignored
    restored = DynamicThreshold(window=50)
    restored.load_state_dict(threshold.state_dict())
    assert restored.window == 3 and restored.value(0) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        DynamicThreshold(window=0)


def test_detail_error_ignores_a_palette_shift_and_sees_lost_texture():
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    shifted = target + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)  # a colour cast: large MSE, no detail lost
    assert (shifted - target).pow(2).mean() > 0.01
    assert detail_error(shifted, target).max().item() < 1e-10
    smooth = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2, count_include_pad=False)
    lost = detail_error(smooth, target)
    assert lost.shape == (2,) and (lost > 0.05).all()  # blurring away the texture is what it measures
    assert (detail_error(smooth[:1], target[:1]) == lost[:1]).all()  # per image


def test_difficulty_quantiles_hold_each_length_to_its_quantile():
    quantiles = DifficultyQuantiles(window=2)
    lengths = torch.tensor([1, 2, 4])
    assert quantiles.thresholds([], lengths, 4).tolist() == [math.inf] * 3  # nothing seen: never too lossy
    assert quantiles.thresholds([0.0, 1.0, 2.0, 3.0, 4.0], lengths, 4).tolist() == pytest.approx([1.0, 2.0, 4.0])
    quantiles.update([10.0, 20.0, float("nan")])
    quantiles.update([30.0])
    quantiles.update([40.0, 50.0])  # the window keeps the last two steps: 30, 40, 50
    assert quantiles.thresholds([0.0], torch.tensor([2, 4]), 4).tolist() == pytest.approx([40.0, 50.0])
    restored = DifficultyQuantiles(window=9)
    restored.load_state_dict(quantiles.state_dict())
    assert restored.window == 2 and restored.thresholds([], torch.tensor([4]), 4).tolist() == [50.0]
    with pytest.raises(ValueError):
        DifficultyQuantiles(window=0)


def test_eos_weight_schedule():
    schedule = EosWeightSchedule(start=1e-3, end=1.0, warmup_steps=10, ramp_steps=30)
    assert schedule(0) == schedule(9) == 1e-3
    assert schedule(25) == pytest.approx(math.sqrt(1e-3))  # geometric midpoint
    assert schedule(40) == schedule(10_000) == 1.0
    values = [schedule(s) for s in range(50)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    linear = EosWeightSchedule(start=0.0, end=1.0, warmup_steps=0, ramp_steps=4, kind="linear")
    assert [linear(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="exponential"):
        EosWeightSchedule(start=0.0)
    with pytest.raises(ValueError, match="kind"):
        EosWeightSchedule(kind="cosine")


def test_reconstruction_loss_terms():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    mse_only = ReconstructionLoss(lpips_weight=0.0, gan_weight=0.0)
    assert mse_only.discriminator is None and mse_only.lpips is None
    out = mse_only(target.clone(), target)
    assert out.loss.item() == 0.0 and out.per_sample.shape == (2,)
    noisy = target + 0.1 * torch.randn_like(target)
    assert mse_only(noisy, target).mse.item() == pytest.approx(((noisy - target) ** 2).mean().item(), rel=1e-5)

    with pytest.warns(UserWarning, match="random alex backbone"):
        full = ReconstructionLoss(mse_weight=1.0, lpips_weight=0.1, gan_weight=0.5)
    out = full(noisy.requires_grad_(), target)
    assert out.lpips is not None and out.lpips.item() > 0 and out.gan is not None
    expected = out.mse + 0.1 * out.lpips + 0.5 * out.gan
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    assert noisy.grad is not None and all(not p.requires_grad for p in full.lpips.parameters())
    d_loss = full.discriminator_loss(noisy.detach(), target)
    assert d_loss.item() > 0
    with pytest.raises(ValueError, match="differ"):
        mse_only(target[:, :, :16], target)
    with pytest.raises(RuntimeError, match="no discriminator"):
        mse_only.discriminator_loss(noisy, target)


def test_patch_discriminator_gives_a_map():
    assert PatchDiscriminator(width=8)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 4, 4)


def test_lpips_trunk_weights_are_loaded(tmp_path):
    torchvision = pytest.importorskip("torchvision")

    from train_tokenizer.losses import build_lpips

    alexnet = torchvision.models.alexnet(weights=None)
    torch.save(alexnet.state_dict(), tmp_path / "alex.pth")
    model = build_lpips("alex", str(tmp_path / "alex.pth"))
    assert torch.equal(model.net.slice1[0].weight, alexnet.features[0].weight)
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not hold"):
        build_lpips("alex", str(tmp_path / "bad.pth"))
