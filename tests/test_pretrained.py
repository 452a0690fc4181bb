"""The `paper` preset's loading path (aMUSEd-style VQGAN folder, Pythia generator), tested on small random
checkpoints written locally — the same code loads the real ones when they are on disk."""

import pytest
import torch
from diffusers import VQModel
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from dove_vlm import DoveModel
from dove_vlm.pretrained import load_generator, load_vqgan


def _pythia_like(config, **overrides):
    kwargs = dict(
        vocab_size=100, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        rotary_pct=config.rotary_pct, bos_token_id=0, eos_token_id=0,
    )
    kwargs.update(overrides)
    torch.manual_seed(3)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**kwargs))


def test_generator_from_pythia_checkpoint_drops_vocabulary(micro_config, tmp_path):
    pythia = _pythia_like(micro_config)
    pythia.save_pretrained(tmp_path / "pythia")
    model = DoveModel(micro_config)
    load_generator(model, tmp_path / "pythia")
    theirs = pythia.gpt_neox.state_dict()
    for name, value in model.generator.state_dict().items():
        if name.startswith("embed_in"):
            assert value.shape[0] == 1  # the 50k-row vocabulary table is not carried
            continue
        torch.testing.assert_close(value, theirs[name])


def test_generator_shape_mismatch_is_clear(micro_config, tmp_path):
    _pythia_like(micro_config, hidden_size=micro_config.hidden_size * 2).save_pretrained(tmp_path / "big")
    with pytest.raises(ValueError, match="hidden_size"):
        load_generator(DoveModel(micro_config), tmp_path / "big")


def test_vqgan_from_amused_style_folder(micro_config, tmp_path):
    torch.manual_seed(4)
    vq = VQModel(**micro_config.vqgan_config)
    vq.save_pretrained(tmp_path / "amused" / "vqvae")
    model = DoveModel(micro_config)
    load_vqgan(model, tmp_path / "amused")
    for name, value in model.vqgan.state_dict().items():
        torch.testing.assert_close(value, vq.state_dict()[name])


def test_vqgan_architecture_mismatch_is_clear(micro_config, tmp_path):
    other = dict(micro_config.vqgan_config, latent_channels=8)
    VQModel(**other).save_pretrained(tmp_path / "vq")
    with pytest.raises(ValueError, match="vqgan_config"):
        load_vqgan(DoveModel(micro_config), tmp_path / "vq")


def test_missing_local_source(micro_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vqgan(DoveModel(micro_config), tmp_path / "not" / "there")


def test_pickled_weights_are_never_loaded(micro_config, tmp_path):
    """A `.bin` (pickle) checkpoint is refused with a clear error instead of being unpickled."""
    VQModel(**micro_config.vqgan_config).save_pretrained(tmp_path / "vq", safe_serialization=False)
    assert not list((tmp_path / "vq").glob("*.safetensors"))
    with pytest.raises(ValueError, match="only safetensors weights are read"):
        load_vqgan(DoveModel(micro_config), tmp_path / "vq")
    _pythia_like(micro_config).save_pretrained(tmp_path / "pythia")
    weights = next((tmp_path / "pythia").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot load the generator weights"):
        load_generator(DoveModel(micro_config), tmp_path / "pythia")


def test_dove_checkpoint_with_only_pickled_weights_is_refused(micro_model, tmp_path):
    import torch as torch_module

    micro_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch_module.save(micro_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        DoveModel.from_pretrained(tmp_path)
