"""The step objective's pieces: `(loss, logs)` out, thresholds as run state, the GAN term's gradients."""

import types

import pytest
import torch

from tests.train_tokenizer.test_train import micro_args
from train_tokenizer.distributed import Ranks
from train_tokenizer.draws import StepBatch
from train_tokenizer.losses import ReconstructionLoss, detail_error
from train_tokenizer.objectives import DoveObjective, null_query_distillation


def one_process():
    return Ranks(types.SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu")))


def test_null_query_distillation_is_the_per_image_bce():
    student, teacher = torch.tensor([[0.2, 0.9]]), torch.tensor([[0.1, 0.5]])
    expected = -(0.1 * torch.log(student[0, 0]) + 0.9 * torch.log(1 - student[0, 0])
                 + 0.5 * torch.log(student[0, 1]) + 0.5 * torch.log(1 - student[0, 1]))
    assert null_query_distillation(student, teacher).item() == pytest.approx(expected.item(), rel=1e-5)


def test_objective_gives_loss_and_logs_and_keeps_its_thresholds(micro_model, images, tmp_path):
    args = micro_args(tmp_path, threshold_window=2)
    rec_loss = ReconstructionLoss(lpips_weight=0.0, gan_weight=0.0)
    objective = DoveObjective(args, rec_loss, micro_model, None, one_process())
    assert one_process().share(torch.tensor(3)) == 1.0  # one process: every rescaling is the identity
    micro_model.train()
    batch = StepBatch(images, forced=torch.tensor([0, 0, 5, 0]))
    out = micro_model(images, num_tokens=batch.forced)
    loss, logs = objective(out, batch, step=0)
    loss.backward()
    assert torch.isfinite(loss) and micro_model.eos_head.weight.grad is not None
    parts = one_process().logs(logs)
    assert set(parts) >= {"loss", "rec", "mse", "eos", "mean_length", "threshold"} and parts["loss"] == pytest.approx(
        loss.item())
    assert parts["mean_length"] == out.lengths[[0, 1, 3]].float().mean().item()  # adaptive rows only
    objective.update()
    state = objective.state_dict()
    assert len(state["threshold"]["values"]) == 1
    again = DoveObjective(args, rec_loss, micro_model, None, one_process())
    again.load_state_dict(state)
    per_sample, _ = objective.reconstruction(out.reconstruction.float(), batch)
    expected = per_sample.detach()[[0, 1, 3]].mean().item()  # the running threshold: the adaptive rows' mean
    assert again.threshold.value(0.0) == pytest.approx(expected, rel=1e-6)


def test_the_generator_gan_term_leaves_the_discriminator_gradients_alone():
    loss = ReconstructionLoss(lpips_weight=0.0, gan_weight=1.0)
    recon = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss(recon, torch.rand(2, 3, 32, 32)).loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.discriminator.parameters())  # its own step, its own gradients
    loss.discriminator_loss(recon.detach(), torch.rand(2, 3, 32, 32)).backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())


def test_the_source_objective_holds_each_source_to_its_own_running_threshold(micro_model, images, tmp_path):
    rec_loss = ReconstructionLoss(lpips_weight=0.0, gan_weight=0.0)
    sources = torch.tensor([0, 0, 1, 1])
    batch = StepBatch(images, forced=torch.zeros(4, dtype=torch.long), sources=sources)
    out = micro_model(images, num_tokens=batch.forced)
    per_sample = DoveObjective(micro_args(tmp_path), rec_loss, micro_model, None, one_process()).reconstruction(
        out.reconstruction.float(), batch)[0].detach()
    by_source = DoveObjective(micro_args(tmp_path, length_objective="source"), rec_loss, micro_model, None,
                              one_process())
    thresholds = by_source.plain_thresholds(per_sample, batch, threshold=123.0)
    expected = torch.stack([per_sample[:2].mean(), per_sample[:2].mean(), per_sample[2:].mean(), per_sample[2:].mean()])
    assert torch.allclose(thresholds, expected)  # no history yet: each source's own batch mean
    by_source(out, batch, step=0)
    by_source.update()
    state = by_source.state_dict()
    assert [len(s["values"]) for s in state["source_thresholds"]] == [1, 1]
    only_photos = StepBatch(images[2:], forced=torch.zeros(2, dtype=torch.long), sources=sources[2:])
    again = DoveObjective(micro_args(tmp_path, length_objective="source"), rec_loss, micro_model, None, one_process())
    again.load_state_dict(state)
    held = again.plain_thresholds(per_sample[2:] * 0, only_photos, threshold=0.0)
    assert torch.allclose(held, per_sample[2:].mean().expand(2))  # the running photo threshold, not this batch
    paper = DoveObjective(micro_args(tmp_path, length_objective="paper"), rec_loss, micro_model, None, one_process())
    assert paper.plain_thresholds(per_sample, batch, threshold=0.5) == 0.5  # the paper's one threshold, unchanged


def test_the_detail_objective_holds_each_row_to_the_quantile_of_its_length(micro_model, images, tmp_path):
    rec_loss = ReconstructionLoss(lpips_weight=0.0, gan_weight=0.0)
    objective = DoveObjective(micro_args(tmp_path, length_objective="detail"), rec_loss, micro_model, None,
                              one_process())
    batch = StepBatch(images, forced=torch.zeros(4, dtype=torch.long))
    out = micro_model(images, num_tokens=batch.forced)
    detail = detail_error(out.reconstruction.detach().float(), images)
    lengths = torch.tensor([1, 2, 3, micro_model.config.max_tokens])
    thresholds = objective.plain_thresholds(detail, batch, threshold=123.0, lengths=lengths)
    expected = torch.quantile(detail, lengths.float() / micro_model.config.max_tokens)
    assert torch.allclose(thresholds, expected)  # no history yet: this batch's quantiles
    objective(out, batch, step=0)
    objective.update()
    state = objective.state_dict()
    assert state["detail_quantiles"]["values"] == [pytest.approx(detail.tolist())]
    again = DoveObjective(micro_args(tmp_path, length_objective="detail"), rec_loss, micro_model, None, one_process())
    again.load_state_dict(state)
    held = again.plain_thresholds(detail * 0, batch, threshold=0.0, lengths=lengths)
    assert torch.allclose(held, expected)  # the running distribution, not this batch's zeros
    assert again.threshold.value(0.0) == pytest.approx(detail.mean().item(), rel=1e-5)  # logged T: mean detail
