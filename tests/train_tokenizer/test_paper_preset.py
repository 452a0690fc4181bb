"""The paper preset's own path: its defaults (bf16 + TF32 on CUDA, fp32 on the CPU; truncation on), the LPIPS
trunk policy (the real trunk when torchvision has it cached, a random one refused unless --allow-random-lpips),
seeds that reach every random init, and the whole preset at micro widths through the `dove` CLI on the CPU."""

import json

import pytest
import torch
from diffusers import VQModel

from dove_vlm import DoveModel, preset_config, preset_training
from dove_vlm.commands.cli import main
from dove_vlm.presets import MICRO_AMUSED_VQGAN_CONFIG, PAPER_MICRO_OVERRIDES
from train_tokenizer.config import TrainingArguments
from train_tokenizer.losses import RandomLpipsTrunkError, build_lpips, cached_trunk_weights
from train_tokenizer.recipe import build_reconstruction_loss, configure_device, seeded
from train_tokenizer.train import add_query_embedding


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision cache (`$TORCH_HOME/hub/checkpoints`), whatever this machine holds."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_paper_defaults_for_a_gpu_user(monkeypatch, torch_home):
    recipe = preset_training("paper")
    assert recipe["truncation_prob"] > 0 and recipe["vqgan_steps"] == 0
    args = TrainingArguments("x", preset="paper", allow_random_lpips=True)
    assert args.mixed_precision == "no"  # the CPU: fp32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert TrainingArguments("x", preset="paper", allow_random_lpips=True).mixed_precision == "bf16"
    assert TrainingArguments("x", preset="tiny").mixed_precision == "no"
    assert TrainingArguments("x", preset="paper", allow_random_lpips=True, mixed_precision="no").mixed_precision == "no"


def test_vqgan_gradient_checkpointing_flag_reaches_the_decoder(micro_model, tmp_path):
    from dove_vlm.vqgan import decoder_checkpointing
    from train_tokenizer.recipe import configure_training

    args = TrainingArguments(str(tmp_path), preset="tiny", vqgan_gradient_checkpointing=True)
    configure_training(micro_model, args, torch.device("cpu"))
    assert decoder_checkpointing(micro_model.vqgan)
    configure_training(micro_model, TrainingArguments(str(tmp_path), preset="tiny"), torch.device("cpu"))
    assert not decoder_checkpointing(micro_model.vqgan)


def test_tf32_only_on_cuda():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    try:
        matmul.fp32_precision = conv.fp32_precision = "ieee"
        configure_device(torch.device("cpu"))
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        configure_device(torch.device("cuda"))  # only sets the backend switches: no GPU needed
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


def test_paper_preset_refuses_a_random_lpips_trunk_unless_asked(torch_home, tmp_path):
    with pytest.raises(RandomLpipsTrunkError, match="random alex trunk.*alexnet-owt-7be5be79.pth.*--allow-random-lpips"):
        TrainingArguments(str(tmp_path), preset="paper")  # before any work is done
    assert TrainingArguments(str(tmp_path), preset="paper", lpips_weight=0.0).lpips_weight == 0.0
    logs = []
    args = TrainingArguments(str(tmp_path), preset="paper", allow_random_lpips=True, gan_weight=0.0)
    assert build_reconstruction_loss(args, logs.append).lpips.trunk_source is None
    assert "random AlexNet trunk" in logs[0] and "--allow-random-lpips" in logs[0]
    logs.clear()
    tiny = TrainingArguments(str(tmp_path), preset="tiny")  # the tiny preset keeps working, and says so
    build_reconstruction_loss(tiny, logs.append)
    assert "random AlexNet trunk" in logs[0] and "the tiny preset allows it" in logs[0]
    with pytest.raises(RandomLpipsTrunkError):
        build_lpips("alex", allow_random=False)


def test_lpips_uses_torchvisions_cached_trunk(torch_home, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(11)
    alexnet = torchvision.models.alexnet(weights=None)
    torch_home.mkdir(parents=True)
    torch.save(alexnet.state_dict(), torch_home / "alexnet-owt-7be5be79.pth")  # where torchvision caches it
    path, _ = cached_trunk_weights("alex")
    assert path == str(torch_home / "alexnet-owt-7be5be79.pth")
    model = build_lpips("alex", allow_random=False)
    assert model.trunk_source == path and torch.equal(model.net.slice1[0].weight, alexnet.features[0].weight)
    logs = []
    args = TrainingArguments(str(tmp_path), preset="paper", gan_weight=0.0)  # no refusal: the real trunk is there
    assert build_reconstruction_loss(args, logs.append).lpips.trunk_source == path
    assert logs == [f"LPIPS: AlexNet trunk from {path}"]


def test_seed_reaches_every_random_init(torch_home, tmp_path, micro_model):
    def loss(seed):
        args = TrainingArguments(str(tmp_path), preset="tiny", seed=seed, gan_weight=0.5)
        return build_reconstruction_loss(args, lambda _: None)

    state = torch.random.get_rng_state()
    first, again, other = loss(0), loss(0), loss(1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left as it was
    for name in ("discriminator.net.0.weight", "lpips.net.slice1.0.weight"):
        assert torch.equal(first.state_dict()[name], again.state_dict()[name])
        assert not torch.equal(first.state_dict()[name], other.state_dict()[name])

    from dove_vlm.query_tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(["the red circle"])
    zero, one = add_query_embedding(micro_model, tokenizer, 0), add_query_embedding(micro_model, tokenizer, 1)
    assert not torch.equal(zero.query_embed.weight, one.query_embed.weight)
    assert torch.equal(zero.query_embed.weight, add_query_embedding(micro_model, tokenizer, 0).query_embed.weight)
    torch.testing.assert_close(zero.token_head.weight, micro_model.token_head.weight)  # DOVE's weights are kept
    with seeded(3, "a"):
        a = torch.rand(2)
    with seeded(3, "b"):
        b = torch.rand(2)
    assert not torch.equal(a, b)


def test_paper_preset_at_micro_widths_through_the_cli(tmp_path, capsys):
    """aMUSEd-shaped VQGAN (`lookup_from_codebook`, f=16), GAN and LPIPS on: train, checkpoint, resume, encode,
    decode (the training loss and the end-of-training evaluation) and report, all through the `dove` CLI."""
    from PIL import Image

    torch.manual_seed(0)
    VQModel(**MICRO_AMUSED_VQGAN_CONFIG).save_pretrained(tmp_path / "vq")  # the paper preset wraps a given VQGAN
    run = tmp_path / "run"
    common = ["--preset", "paper", "--vqgan", str(tmp_path / "vq"), "--output-dir", str(run), "--batch-size", "2",
              "--num-train-scenes", "8", "--eval-scenes", "4", "--checkpoint-every", "2", "--allow-random-lpips",
              "--log-every", "1"]
    assert main(["train", *common, "--max-steps", "2", "--model-overrides", json.dumps(PAPER_MICRO_OVERRIDES)]) == 0
    first = json.loads((run / "metrics.json").read_text())
    assert first["args"]["truncation_prob"] > 0 and first["args"]["gan_weight"] > 0
    assert first["args"]["mixed_precision"] == "no" and (run / "checkpoint-2" / "discriminator.safetensors").is_file()
    # the same command with --resume (the fixed settings, --model-overrides among them, must match the checkpoint's)
    assert main(["train", *common, "--max-steps", "3", "--resume", "--model-overrides",
                 json.dumps(PAPER_MICRO_OVERRIDES)]) == 0
    out = capsys.readouterr().out
    assert "PSNR adaptive" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [0, 1, 2]
    assert (run / "checkpoint-3" / "model" / "model.safetensors").is_file()
    model = DoveModel.from_pretrained(run)
    assert model.config.vqgan_config["lookup_from_codebook"] and model.config.downsample_factor == 16
    assert model.config.image_size == 64 and model.config.max_tokens == PAPER_MICRO_OVERRIDES["max_tokens"]

    Image.new("RGB", (50, 40), "red").save(tmp_path / "red.png")
    assert main(["encode", str(tmp_path / "red.png"), "--model", str(run), "--json"]) == 0
    encoded = json.loads(capsys.readouterr().out)
    assert 1 <= encoded[0]["num_tokens"] <= PAPER_MICRO_OVERRIDES["max_tokens"]
    assert main(["report", "--model", str(run), "--output-dir", str(tmp_path / "report"), "--num-images", "4",
                 "--batch-size", "4", "--sections", "quality,lengths"]) == 0
    assert "PSNR by forced tokens" in capsys.readouterr().out
    report = json.loads(next((tmp_path / "report").glob("*.json")).read_text())
    assert "quality" in report


def test_paper_preset_bad_vqgan_is_a_cli_error(tmp_path, capsys):
    VQModel(**dict(MICRO_AMUSED_VQGAN_CONFIG, latent_channels=4)).save_pretrained(tmp_path / "vq")
    code = main(["train", "--preset", "paper", "--vqgan", str(tmp_path / "vq"), "--output-dir", str(tmp_path / "r"),
                 "--allow-random-lpips", "--model-overrides", json.dumps(PAPER_MICRO_OVERRIDES)])
    assert code == 2
    assert "latent_channels: the VQGAN has 4, the preset 8" in capsys.readouterr().err
    assert preset_config("paper", **PAPER_MICRO_OVERRIDES).latent_channels == 8
