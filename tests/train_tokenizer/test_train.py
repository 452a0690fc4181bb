"""The training loop at micro scale: outputs, checkpoints, resume after an interruption, bad output dirs."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from dove_vlm import DoveModel
from tests.conftest import MICRO_OVERRIDES
from train_tokenizer import train as train_module
from train_tokenizer.checkpointing import list_checkpoints
from train_tokenizer.config import TrainingArguments


def micro_args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir), preset="tiny", max_steps=6, batch_size=4, num_train_scenes=16, vqgan_steps=2,
        checkpoint_every=2, eval_scenes=0, lpips_weight=0.0, warmup_steps=1, eos_warmup_steps=0,
        eos_ramp_steps=4, truncation_prob=0.5, log_every=1, model_overrides=dict(MICRO_OVERRIDES),
    )
    values.update(overrides)
    return TrainingArguments(**values)


def test_training_writes_model_metrics_plots_and_prunes_checkpoints(tmp_path):
    metrics = train_module.train(micro_args(tmp_path, eval_scenes=6))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval"]["num_images"] == 6 and len(saved["history"]) == 6
    for name in saved["plots"]:
        assert (tmp_path / name).stat().st_size > 0
    model = DoveModel.from_pretrained(tmp_path)
    assert model.config.max_tokens == MICRO_OVERRIDES["max_tokens"]
    assert (tmp_path / "preprocessor_config.json").is_file() and (tmp_path / "vqgan" / "config.json").is_file()
    assert metrics["eval"]["max_tokens"] == 16


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    train_module.train(micro_args(tmp_path / "straight"))
    reference = load_file(str(tmp_path / "straight" / "model.safetensors"))

    real_save = train_module.save_checkpoint

    def save_then_die(output_dir, step, *args, **kwargs):
        path = real_save(output_dir, step, *args, **kwargs)
        if step == 4:
            raise KeyboardInterrupt  # killed right after checkpoint-4
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(micro_args(tmp_path / "interrupted"))
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert not (tmp_path / "interrupted" / "model.safetensors").exists()
    # A half-written checkpoint (no trainer_state.json) must never be picked up.
    (tmp_path / "interrupted" / "checkpoint-5" / "model").mkdir(parents=True)
    metrics = train_module.train(micro_args(tmp_path / "interrupted", resume=True))
    resumed = load_file(str(tmp_path / "interrupted" / "model.safetensors"))
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6)
    assert [h["step"] for h in metrics["history"]] == list(range(6))


def test_resume_without_checkpoints_starts_fresh(tmp_path, capsys):
    train_module.train(micro_args(tmp_path, max_steps=2, resume=True))
    assert "starting from scratch" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").is_file()


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot write to the output directory"):
        train_module.train(micro_args(blocker / "run"))


def test_bad_training_arguments():
    # messages name the command-line flag
    with pytest.raises(ValueError, match="--mixed-precision"):
        micro_args("x", mixed_precision="fp16")
    with pytest.raises(ValueError, match="--truncation-prob"):
        micro_args("x", truncation_prob=2.0)
    with pytest.raises(ValueError, match="unknown preset"):
        micro_args("x", preset="huge")
    with pytest.raises(ValueError, match="--query-threshold must be"):
        micro_args("x", query_threshold="median")
    with pytest.raises(ValueError, match="--query-threshold-scale"):
        micro_args("x", query_threshold_scale=0.0)
    with pytest.raises(ValueError, match="--eval-scenes must be >= 0"):
        micro_args("x", eval_scenes=-2)


def test_query_training_from_a_dove_checkpoint_and_resume(tmp_path):
    train_module.train(micro_args(tmp_path / "dove", max_steps=2))
    args = micro_args(tmp_path / "qdove", query=True, init_from=str(tmp_path / "dove"), eval_scenes=6, max_steps=4,
                      freeze_decoder=True, query_threshold="teacher")
    metrics = train_module.train(args)
    q = metrics["query_eval"]
    assert q["num_images"] > 0 and "null_over_plain_tokens" in q and "in_box_psnr_query_minus_null" in q
    assert "mean_length_queried" in metrics["history"][-1]
    # The queried samples' threshold is the teacher's in-box loss on the same boxes: a real, finite loss.
    assert all(math.isfinite(h["query_threshold"]) and h["query_threshold"] > 0 for h in metrics["history"])
    model = DoveModel.from_pretrained(tmp_path / "qdove")
    assert model.supports_queries and model.query_tokenizer is not None
    # the query length limits (default 2 and half of max_tokens) are saved with the model
    assert (model.config.query_min_tokens, model.config.query_max_tokens) == (2, MICRO_OVERRIDES["max_tokens"] // 2)
    plain = DoveModel.from_pretrained(tmp_path / "dove")
    for name, weight in plain.token_decoder.state_dict().items():  # frozen decoder: unchanged
        torch.testing.assert_close(model.token_decoder.state_dict()[name], weight, rtol=0, atol=0)
    assert not torch.equal(model.token_head.weight, plain.token_head.weight)  # the generator did train
    assert not torch.equal(model.query_embed.weight, torch.zeros_like(model.query_embed.weight))
    assert plain.config.latent_mean == model.config.latent_mean
    resumed = train_module.train(micro_args(tmp_path / "qdove", query=True, init_from=str(tmp_path / "dove"),
                                            max_steps=6, resume=True, freeze_decoder=True))
    assert [h["step"] for h in resumed["history"]] == list(range(6))


def test_pixel_detail_dove_and_its_qdove_train(tmp_path):
    """A tokenizer whose H_v carries the pixel detail map trains (cached latents, detail objective) and reaches its
    Q-DOVE, whose teacher and query evaluation then take the pixels beside the latents."""
    overrides = dict(MICRO_OVERRIDES, pixel_detail=True)
    train_module.train(micro_args(tmp_path / "dove", max_steps=3, length_objective="detail", model_overrides=overrides))
    plain = DoveModel.from_pretrained(tmp_path / "dove")
    assert plain.config.pixel_detail
    metrics = train_module.train(micro_args(tmp_path / "qdove", query=True, init_from=str(tmp_path / "dove"),
                                            eval_scenes=6, max_steps=2, query_threshold="teacher"))
    assert metrics["query_eval"]["num_images"] > 0
    assert DoveModel.from_pretrained(tmp_path / "qdove").config.pixel_detail


def test_full_length_query_rows_are_queried_rows_drawn_per_step():
    queried = torch.tensor([True, False] * 200)
    full = train_module.sample_full_length(queried, 0.5, seed=0, step=3)
    assert not full[~queried].any() and 60 < int(full.sum()) < 140  # only queried rows, about half of them
    assert torch.equal(full, train_module.sample_full_length(queried, 0.5, seed=0, step=3))  # resumable
    assert not torch.equal(full, train_module.sample_full_length(queried, 0.5, seed=0, step=4))
    assert not train_module.sample_full_length(queried, 0.0, seed=0, step=3).any()


def test_query_full_prob_trains_queried_codes_on_the_whole_image(tmp_path):
    """The option changes what the queried codes learn (same data, same seed), and is checked."""
    train_module.train(micro_args(tmp_path / "dove", max_steps=2))
    heads = []
    for prob in (0.0, 1.0):
        args = micro_args(tmp_path / f"q{prob}", query=True, init_from=str(tmp_path / "dove"), eval_scenes=0,
                          max_steps=2, freeze_decoder=True, query_full_prob=prob)
        metrics = train_module.train(args)
        assert all(math.isfinite(h["loss"]) for h in metrics["history"])
        heads.append(DoveModel.from_pretrained(tmp_path / f"q{prob}").query_embed.weight)
    assert not torch.equal(*heads)
    with pytest.raises(ValueError, match="query.full.prob"):
        micro_args(tmp_path, query=True, query_full_prob=1.5)


def test_bad_query_length_limits_in_training_arguments(tmp_path):
    with pytest.raises(ValueError, match="query.min.tokens"):
        micro_args(tmp_path, query=True, query_min_tokens=0)
    with pytest.raises(ValueError, match="query.max.tokens"):
        micro_args(tmp_path, query=True, query_min_tokens=4, query_max_tokens=3)


def test_query_training_rejects_non_grounding_data(tmp_path):
    with pytest.raises(ValueError, match="grounding data"):
        train_module.train(micro_args(tmp_path, query=True, data=str(tmp_path)))


def test_frozen_vqgan_latents_are_cached_once_and_match_the_encoder(micro_model):
    """Training reads the frozen VQGAN's latents from a cache made once (not an encoder pass per step); they equal
    the encoder's, and there is no cache when the VQGAN trains, the data are not materialised, or it is too big."""
    from train_tokenizer.data import UInt8ImageDataset, cached_latents, get_batch

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = UInt8ImageDataset(images)
    cache = cached_latents(micro_model, dataset, torch.device("cpu"), batch_size=2)
    with torch.no_grad():
        expected = micro_model.encode_latents(get_batch(dataset, [0, 1, 2, 3, 4]))
    assert cache.shape == expected.shape and torch.allclose(cache, expected, atol=1e-5)
    out = micro_model(get_batch(dataset, [3, 1]), latents=cache[[3, 1]])
    assert torch.equal(out.latents, cache[[3, 1]]) and out.reconstruction.shape == (2, 3, 32, 32)
    assert cached_latents(micro_model, dataset, torch.device("cpu"), max_bytes=100) is None
    assert cached_latents(micro_model, [dataset[0]], torch.device("cpu")) is None
    micro_model.config.freeze_vqgan = False
    try:
        assert cached_latents(micro_model, dataset, torch.device("cpu")) is None
    finally:
        micro_model.config.freeze_vqgan = True


def test_step_callback_sees_every_step(tmp_path):
    seen = []
    train_module.train(micro_args(tmp_path, max_steps=3), step_callback=seen.append)
    assert seen == [1, 2, 3]
