"""Hub ids load offline through the Hugging Face cache, exactly as `from_pretrained("org/name")` reads it with
HF_HUB_OFFLINE=1: the test lays out `HF_HUB_CACHE/models--org--name/{refs/main, snapshots/<commit>/...}` from
micro models it builds (the aMUSEd VQGAN's `vqvae` subfolder, a Pythia generator, a saved DOVE and Q-DOVE), and
checkpoints holding only pickled or GGUF weights are refused with a clear error."""

import hashlib
import shutil

import pytest
import torch
from diffusers import VQModel
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from dove_vlm import DoveModel, DoveVisionTower, preset_config
from dove_vlm.checkpoints import has_file, model_type, weights_problem
from dove_vlm.presets import MICRO_AMUSED_VQGAN_CONFIG, PAPER_MICRO_OVERRIDES
from dove_vlm.pretrained import load_generator, load_vqgan
from dove_vlm.query_tokenizer import build_word_tokenizer

PAPER_MICRO = dict(PAPER_MICRO_OVERRIDES, max_tokens=4)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """`publish(repo_id, folder)`: put `folder` in a fresh Hugging Face cache as the `main` revision of `repo_id`."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.is_offline_mode()  # tests/conftest.py sets HF_HUB_OFFLINE=1

    def publish(repo_id: str, folder) -> None:
        root = cache / ("models--" + repo_id.replace("/", "--"))
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        shutil.copytree(folder, root / "snapshots" / commit)
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(commit)

    return publish


@pytest.fixture(scope="module")
def micro_paper_config():
    return preset_config("paper", **PAPER_MICRO)


def _pythia(config, **overrides):
    kwargs = dict(vocab_size=50, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                  num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
                  rotary_pct=config.rotary_pct, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(3)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**{**kwargs, **overrides}))


def test_amused_vqgan_subfolder_by_hub_id(hub, micro_paper_config, tmp_path):
    torch.manual_seed(4)
    vq = VQModel(**MICRO_AMUSED_VQGAN_CONFIG)
    vq.save_pretrained(tmp_path / "amused" / "vqvae")  # aMUSEd's layout: the pipeline's `vqvae` subfolder
    (tmp_path / "amused" / "model_index.json").write_text("{}")
    hub("amused/amused-256", tmp_path / "amused")
    assert has_file("amused/amused-256", "config.json", "vqvae") and not has_file("amused/amused-256", "config.json")
    model = load_vqgan(DoveModel(micro_paper_config), "amused/amused-256")
    for name, value in model.vqgan.state_dict().items():
        torch.testing.assert_close(value, vq.state_dict()[name])
    with pytest.raises(ValueError, match="not in the local Hugging Face cache.*hf download amused/amused-512"):
        load_vqgan(DoveModel(micro_paper_config), "amused/amused-512")


def test_pythia_generator_by_hub_id(hub, micro_paper_config, tmp_path):
    pythia = _pythia(micro_paper_config)
    pythia.save_pretrained(tmp_path / "pythia")
    hub("EleutherAI/pythia-70m", tmp_path / "pythia")
    model = load_generator(DoveModel(micro_paper_config), "EleutherAI/pythia-70m")
    theirs = pythia.gpt_neox.state_dict()
    for name, value in model.generator.state_dict().items():
        if not name.startswith("embed_in"):
            torch.testing.assert_close(value, theirs[name])


def test_generator_of_another_shape_or_kind_is_refused(hub, micro_paper_config, tmp_path):
    _pythia(micro_paper_config, num_hidden_layers=3).save_pretrained(tmp_path / "deep")
    hub("EleutherAI/pythia-deep", tmp_path / "deep")
    with pytest.raises(ValueError, match="num_hidden_layers=3 but the model has 2.*--model-overrides"):
        load_generator(DoveModel(micro_paper_config), "EleutherAI/pythia-deep")
    llama = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    LlamaForCausalLM(llama).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="is a 'llama' model, not a GPTNeoX"):
        load_generator(DoveModel(micro_paper_config), tmp_path / "llama")


@pytest.mark.parametrize("query", [False, True], ids=["dove", "qdove"])
def test_saved_dove_and_qdove_load_by_hub_id(hub, micro_paper_config, tmp_path, query):
    tokenizer = build_word_tokenizer(["the red circle", "a blue square"]) if query else None
    config = preset_config("paper", **PAPER_MICRO, query_vocab_size=len(tokenizer) if query else 0)
    torch.manual_seed(5)
    model = DoveModel(config).eval()
    if query:
        model.set_query_tokenizer(tokenizer)
    model.save_pretrained(tmp_path / "dove")
    DoveVisionTower.from_pretrained(tmp_path / "dove", mode="query" if query else "adaptive").save_pretrained(
        tmp_path / "tower")
    hub("org/dove", tmp_path / "dove")
    hub("org/dove-tower", tmp_path / "tower")
    assert model_type("org/dove") == "dove" and model_type("org/dove-tower") == "dove_vision_tower"

    loaded = DoveModel.from_pretrained("org/dove")
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name])
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    question = "the red circle" if query else None
    with torch.no_grad():
        expected = model.encode(images, queries=question)
        torch.testing.assert_close(loaded.encode(images, queries=question).tokens, expected.tokens)
        for source in ("org/dove", "org/dove-tower"):  # a plain DOVE repo and a tower repo
            tower = DoveVisionTower.from_pretrained(source)
            assert tower.dove.supports_queries == query
            if query:
                assert tower.dove.query_tokenizer.get_vocab() == tokenizer.get_vocab()
    if query:
        assert loaded.query_tokenizer.get_vocab() == tokenizer.get_vocab()  # from the `query_tokenizer` subfolder
    else:
        assert loaded.query_tokenizer is None


def test_pickled_or_gguf_only_checkpoints_are_refused(hub, micro_paper_config, tmp_path):
    VQModel(**MICRO_AMUSED_VQGAN_CONFIG).save_pretrained(tmp_path / "vq-bin" / "vqvae", safe_serialization=False)
    hub("org/vq-bin", tmp_path / "vq-bin")
    for source in (tmp_path / "vq-bin", "org/vq-bin"):
        with pytest.raises(ValueError, match=r"pickled weights only \(diffusion_pytorch_model.bin\); only "
                                             "safetensors weights are read"):
            load_vqgan(DoveModel(micro_paper_config), source)

    pythia = tmp_path / "pythia-gguf"
    _pythia(micro_paper_config).config.save_pretrained(pythia)
    (pythia / "pythia-70m.Q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    hub("org/pythia-gguf", pythia)
    for source in (pythia, "org/pythia-gguf"):
        with pytest.raises(ValueError, match=r"GGUF weights only \(pythia-70m.Q8_0.gguf\); only safetensors"):
            load_generator(DoveModel(micro_paper_config), source)

    dove = tmp_path / "dove-bin"
    model = DoveModel(micro_paper_config)
    model.save_pretrained(dove)
    (dove / "model.safetensors").unlink()
    torch.save(model.state_dict(), dove / "pytorch_model.bin")
    hub("org/dove-bin", dove)
    with pytest.raises(FileNotFoundError, match="pickled weights only.*only safetensors"):
        DoveModel.from_pretrained(dove)
    for load in (DoveModel.from_pretrained, DoveVisionTower.from_pretrained):
        with pytest.raises(ValueError, match="pickled weights only.*only safetensors"):
            load("org/dove-bin")
    assert weights_problem(tmp_path / "vq-bin", "vqvae") and weights_problem(tmp_path / "dove") is None
