"""`llava_patch`: DOVE / Q-DOVE in the original LLaVA code base. Tests marked `requires_llava` run LLaVA's real
code (haotian-liu/LLaVA, `pip install --no-deps llava-torch`) with a tiny LlavaLlamaForCausalLM; the others need
only dove-vlm."""

import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

import llava_patch
from dove_vlm.vision_tower import DoveVisionTower
from llava_patch.questions import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    image_questions,
    question_from_prompt,
    question_from_text,
)
from llava_patch.tower import DoveLlavaVisionTower, parse_tower_name

from .conftest import TARGET_LENGTHS, requires_llava

QUESTIONS = ["What colour is the square?", "Is there a red circle?", "How many shapes are there?",
             "Where is the blue triangle?"]
LLAVA_MODULES = ("llava", "llava.model", "llava.model.llava_arch", "llava.model.builder",
                 "llava.model.multimodal_encoder", "llava.model.multimodal_encoder.builder")


# Without LLaVA ----------------------------------------------------------------------------------------------
def _hide_llava(monkeypatch, replacement=None):
    monkeypatch.setattr(llava_patch, "_state", {"applied": False})
    for name in LLAVA_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    if replacement is not None:
        monkeypatch.setitem(sys.modules, "llava", replacement)


def test_apply_without_llava_warns_and_patches_nothing(monkeypatch):
    _hide_llava(monkeypatch)
    with pytest.warns(UserWarning, match=r"did nothing: the original LLaVA package .*pip install --no-deps"):
        assert llava_patch.apply() is False
    assert not llava_patch.is_applied()
    with pytest.raises(llava_patch.LlavaNotInstalledError, match="haotian-liu/LLaVA"):
        llava_patch.apply(strict=True)


def test_apply_names_the_pypi_placeholder(monkeypatch):
    placeholder = types.ModuleType("llava")
    placeholder.__file__ = "/site-packages/llava/__init__.py"
    _hide_llava(monkeypatch, replacement=placeholder)
    with pytest.raises(llava_patch.LlavaNotInstalledError, match="not haotian-liu/LLaVA .* placeholder"):
        llava_patch.apply(strict=True)


def test_launcher_without_a_script_prints_usage():
    result = subprocess.run([sys.executable, "-m", "llava_patch"], check=False, capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 2
    assert "python -m llava_patch MODULE_OR_SCRIPT" in result.stdout


def test_tower_names(dove_dir, tmp_path):
    assert parse_tower_name(f"dove:{dove_dir}") == (str(dove_dir), {})
    assert parse_tower_name(f"dove:{dove_dir}?mode=query&eos_threshold=0.3&early_exit=false") == (
        str(dove_dir), {"mode": "query", "eos_threshold": 0.3, "early_exit": False})
    assert parse_tower_name(str(dove_dir)) == (str(dove_dir), {})  # a folder holding a DOVE checkpoint
    assert parse_tower_name("openai/clip-vit-large-patch14-336") is None
    assert parse_tower_name(str(tmp_path)) is None  # a folder, but no DOVE config
    with pytest.raises(ValueError, match="unknown tower setting.*colour"):
        parse_tower_name(f"dove:{dove_dir}?colour=red")
    with pytest.raises(ValueError, match="names no DOVE checkpoint"):
        parse_tower_name("dove:")


def test_questions_from_prompt_text():
    assert question_from_prompt("A chat. USER: <image>\nWhat colour is the square? ASSISTANT:") == QUESTIONS[0]
    assert question_from_prompt("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nIs it red? [/INST]") == "Is it red?"
    assert question_from_text("<im_end>\n  How many? ###Assistant:") == "How many?"
    assert question_from_text(" ASSISTANT: a caption") is None  # nothing asked: the null query
    assert question_from_prompt("no image here") is None


def test_image_questions_reads_ids_per_image_slot(text_tokenizer):
    def ids(text):
        return text_tokenizer(text, add_special_tokens=False)["input_ids"]

    row0 = ids("USER: ") + [IMAGE_TOKEN_INDEX] + ids("\nWhat colour is the square? ASSISTANT:") + ids(" The square is green.")
    row1 = ids("USER: How many shapes are there? ASSISTANT:") + [0] * (len(row0) - len(ids("USER: How many shapes are there? ASSISTANT:")))
    input_ids = torch.tensor([row0, row1])
    mask = torch.tensor([[1] * len(row0), [1] * len(ids("USER: How many shapes are there? ASSISTANT:")) + [0] * (len(row0) - len(ids("USER: How many shapes are there? ASSISTANT:")))])
    assert image_questions(input_ids, text_tokenizer, attention_mask=mask) == [QUESTIONS[0], None]
    # In training the answer is supervised: the question stops at the first supervised label.
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    answer = len(ids(" The square is green."))
    labels[0, -answer:] = input_ids[0, -answer:]
    assert image_questions(input_ids, text_tokenizer, attention_mask=mask, labels=labels)[0] == QUESTIONS[0]


def test_tower_adapter_delays_loading_and_gives_per_image_features(dove_dir, tower_images):
    name = f"dove:{dove_dir}?mode=query"
    tower = DoveLlavaVisionTower(name, args=None, delay_load=True)
    assert not tower.is_loaded and not list(tower.parameters())
    assert tower.hidden_size == 4 and tower.num_patches == tower.max_tokens == 16 and tower.supports_queries
    processor = tower.image_processor
    assert processor.crop_size == {"height": 32, "width": 32} and processor.image_mean == [0.5, 0.5, 0.5]
    assert processor.preprocess(torch.zeros(3, 40, 50), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)
    tower.load_model(device_map="auto")
    assert tower.is_loaded and not any(p.requires_grad for p in tower.parameters())
    features = tower(tower_images)
    assert [f.shape for f in features] == [(n, 4) for n in TARGET_LENGTHS]
    queried = tower(list(tower_images), queries=QUESTIONS)  # a list of (3, H, W) images, as LLaVA may pass
    reference = DoveVisionTower.from_pretrained(str(dove_dir), mode="query")(tower_images, queries=QUESTIONS)
    assert [f.shape[0] for f in queried] == reference.lengths.tolist()
    for got, want in zip(queried, reference.features):
        torch.testing.assert_close(got, want)


# With the real LLaVA code ------------------------------------------------------------------------------------
@pytest.fixture
def patched():
    assert llava_patch.apply(strict=True)
    return llava_patch


def _model_args(vision_tower, **overrides):
    """LLaVA's `ModelArguments` fields that `initialize_vision_modules` / `initialize_vision_tokenizer` read."""
    return types.SimpleNamespace(**{
        "vision_tower": vision_tower, "mm_vision_select_layer": -1, "mm_vision_select_feature": "patch",
        "pretrain_mm_mlp_adapter": None, "mm_patch_merge_type": "flat", "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "tune_mm_mlp_adapter": False, **overrides})


def _tiny_llava(patched, tower_name, tokenizer):
    """A tiny LlavaLlamaForCausalLM set up the way LLaVA's train.py does it (initialize_vision_modules, then
    initialize_vision_tokenizer)."""
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    torch.manual_seed(0)
    config = LlavaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlavaLlamaForCausalLM(config)
    args = _model_args(tower_name)
    model.get_model().initialize_vision_modules(model_args=args)
    model.config.mm_use_im_start_end = model.config.mm_use_im_patch_token = False  # as train.py records them
    model.initialize_vision_tokenizer(args, tokenizer=tokenizer)
    return model


def _prompts(questions, template="llava_v1"):
    from llava.conversation import conv_templates

    prompts = []
    for question in questions:
        conv = conv_templates[template].copy()
        conv.append_message(conv.roles[0], "<image>\n" + question)
        conv.append_message(conv.roles[1], None)
        prompts.append(conv.get_prompt())
    return prompts


def _batch(prompts, tokenizer):
    """Right-padded ids as LLaVA's collator makes them."""
    from llava.mm_utils import tokenizer_image_token

    rows = [tokenizer_image_token(p, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt") for p in prompts]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, row in enumerate(rows):
        mask[i, : len(row)] = True
    return input_ids, mask, [len(r) for r in rows]


@requires_llava
def test_apply_is_idempotent_and_registers_at_the_builder(patched, dove_dir):
    import llava.model.multimodal_encoder.builder as encoder_builder
    from llava import constants
    from llava.model import llava_arch

    from llava_patch import arch

    assert (constants.IMAGE_TOKEN_INDEX, constants.IGNORE_INDEX) == (IMAGE_TOKEN_INDEX, IGNORE_INDEX)
    assert patched.apply() is True and patched.apply() is True
    assert encoder_builder.build_vision_tower is arch.build_vision_tower is llava_arch.build_vision_tower
    assert arch.ORIGINALS["build_vision_tower"] is not arch.build_vision_tower  # wrapped once, not twice
    assert llava_arch.LlavaMetaForCausalLM.encode_images is arch.encode_images
    for name in (f"dove:{dove_dir}", str(dove_dir)):
        tower = encoder_builder.build_vision_tower(types.SimpleNamespace(mm_vision_tower=name), delay_load=True)
        assert isinstance(tower, DoveLlavaVisionTower) and not tower.is_loaded
    with pytest.raises(ValueError, match="Unknown vision tower"):  # other names still reach LLaVA's builder
        encoder_builder.build_vision_tower(types.SimpleNamespace(mm_vision_tower="no-such-tower"))


@requires_llava
@pytest.mark.parametrize("template", ["llava_v1", "vicuna_v1", "llava_v0", "v0", "llava_llama_2",
                                      "mistral_instruct", "chatml_direct", "mpt"])
def test_questions_from_every_llava_template(patched, text_tokenizer, template):
    prompt = _prompts([QUESTIONS[0]], template)[0]
    assert question_from_prompt(prompt) == QUESTIONS[0]
    input_ids, mask, _ = _batch([prompt], text_tokenizer)
    assert image_questions(input_ids, text_tokenizer, attention_mask=mask) == [QUESTIONS[0]]


@requires_llava
def test_query_tower_in_tiny_llava_packs_variable_lengths(patched, dove_dir, text_tokenizer, tower_images):
    model = _tiny_llava(patched, f"dove:{dove_dir}?mode=query", text_tokenizer)
    tower = model.get_vision_tower()
    assert isinstance(tower, DoveLlavaVisionTower) and model.config.mm_hidden_size == tower.hidden_size == 4
    questions = [QUESTIONS[0], "", QUESTIONS[2], QUESTIONS[3]]  # "" → "<image>\n" alone: the null query
    # training-style rows: prompt + answer, only the answer supervised (as LLaVA's preprocess masks them)
    prompt_ids, _, prompt_lengths = _batch(_prompts(questions), text_tokenizer)
    answer = text_tokenizer(" The square is green.</s>", add_special_tokens=False)["input_ids"]
    rows = [torch.cat([prompt_ids[i, :n], torch.tensor(answer)]) for i, n in enumerate(prompt_lengths)]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=text_tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, n in enumerate(prompt_lengths):
        mask[i, : n + len(answer)] = True
        labels[i, n : n + len(answer)] = torch.tensor(answer)
    text_lengths = [n + len(answer) for n in prompt_lengths]

    _, position_ids, attention_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
        input_ids, None, mask, None, labels, tower_images)

    expected = tower(tower_images, queries=[q or None for q in questions])
    lengths = [f.shape[0] for f in expected]
    assert lengths != list(TARGET_LENGTHS) and len(set(lengths)) > 1  # questions change the lengths, per image
    assert attention_mask.sum(1).tolist() == [t - 1 + n for t, n in zip(text_lengths, lengths)]
    assert embeds.shape == (4, max(attention_mask.sum(1)), 32) and position_ids is None
    projected = model.get_model().mm_projector(torch.cat(expected)).split(lengths)
    for i, n in enumerate(lengths):  # each image's own features at its own place, nothing padded in between
        start = int(torch.where(input_ids[i] == IMAGE_TOKEN_INDEX)[0])
        torch.testing.assert_close(embeds[i, start : start + n], projected[i])
        assert (new_labels[i, start : start + n] == IGNORE_INDEX).all()
        assert not attention_mask[i, int(attention_mask[i].sum()):].any()

    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, images=tower_images).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.get_model().mm_projector.parameters())
    assert all(p.grad is None for p in tower.parameters())


@requires_llava
def test_explicit_queries_and_multi_view_images(patched, dove_dir, text_tokenizer, tower_images):
    model = _tiny_llava(patched, f"dove:{dove_dir}?mode=query", text_tokenizer)
    tower = model.get_vision_tower()
    input_ids, mask, text_lengths = _batch(_prompts(QUESTIONS[:2]), text_tokenizer)
    # encode_images takes the question directly
    features = model.encode_images(tower_images[:2], queries=["the red circle", None])
    assert [f.shape[0] for f in features] == [f.shape[0] for f in tower(tower_images[:2], queries=["the red circle", None])]
    # image_queries overrides the questions read from the prompts
    out = model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, None, tower_images[:2],
                                                     image_queries=[None, None])
    assert out[2].sum(1).tolist() == [t - 1 + n for t, n in zip(text_lengths, TARGET_LENGTHS[:2])]
    # a list with a stack of views per image (LLaVA's anyres input): the views' features are concatenated
    views = [tower_images[:2], tower_images[2:3]]
    out = model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, None, views,
                                                     image_queries=[None, None])
    assert out[2].sum(1).tolist() == [text_lengths[0] - 1 + 2 + 5, text_lengths[1] - 1 + 9]
    model.config.mm_patch_merge_type = "spatial_unpad"
    with pytest.raises(ValueError, match="use mm_patch_merge_type='flat'"):
        model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, None, views)


@requires_llava
def test_generate_and_reload_through_llava(patched, dove_dir, text_tokenizer, tower_images, tmp_path):
    from llava.model import LlavaLlamaForCausalLM
    from llava.model.builder import load_pretrained_model

    model = _tiny_llava(patched, f"dove:{dove_dir}?mode=query", text_tokenizer).eval()
    input_ids, mask, _ = _batch(_prompts(QUESTIONS[:1]), text_tokenizer)
    generated = model.generate(input_ids, images=tower_images[:1], max_new_tokens=4, do_sample=False)
    assert generated.shape[0] == 1 and 1 <= generated.shape[1] <= 4

    folder = tmp_path / "llava-dove-tiny"
    model.save_pretrained(folder)
    text_tokenizer.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = LlavaLlamaForCausalLM.from_pretrained(folder)  # rebuilds the tower from config.mm_vision_tower
    tower = reloaded.get_vision_tower()
    assert isinstance(tower, DoveLlavaVisionTower) and not tower.is_loaded
    tower.load_model()
    # LLaVA's own loader: the name must contain "llava"; it loads the LM in float16
    tokenizer, loaded, image_processor, _ = load_pretrained_model(str(folder), None, "llava-dove-tiny", device="cpu")
    assert isinstance(loaded.get_vision_tower(), DoveLlavaVisionTower) and loaded.get_vision_tower().is_loaded
    assert loaded.dove_text_tokenizer is tokenizer  # recorded for Q-DOVE by the patched loader
    assert image_processor.crop_size == {"height": 32, "width": 32}
    with torch.no_grad():
        a = model(input_ids=input_ids, attention_mask=mask, images=tower_images[:1]).logits
        b = loaded(input_ids=input_ids, attention_mask=mask, images=tower_images[:1]).logits
    torch.testing.assert_close(a, b.float(), atol=2e-2, rtol=2e-2)


@requires_llava
def test_query_tower_without_tokenizer_warns_and_uses_null_queries(patched, dove_dir, text_tokenizer, tower_images):
    model = _tiny_llava(patched, f"dove:{dove_dir}?mode=query", text_tokenizer)
    del model.dove_text_tokenizer
    input_ids, mask, text_lengths = _batch(_prompts(QUESTIONS[:2]), text_tokenizer)
    with pytest.warns(UserWarning, match="attach_tokenizer"):
        out = model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, None, tower_images[:2])
    assert out[2].sum(1).tolist() == [t - 1 + n for t, n in zip(text_lengths, TARGET_LENGTHS[:2])]


@requires_llava
def test_adaptive_tower_takes_no_questions(patched, dove_dir, text_tokenizer, tower_images):
    model = _tiny_llava(patched, str(dove_dir), text_tokenizer)  # a bare DOVE folder: adaptive mode
    assert not model.get_vision_tower().supports_queries
    input_ids, mask, text_lengths = _batch(_prompts(QUESTIONS), text_tokenizer)
    out = model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, None, tower_images)
    assert out[2].sum(1).tolist() == [t - 1 + n for t, n in zip(text_lengths, TARGET_LENGTHS)]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDING_RUNNER = """
import json, sys
from llava_patch.__main__ import main
from llava_patch.tower import DoveLlavaVisionTower

record, seen, forward = sys.argv[1], [], DoveLlavaVisionTower.forward
def recording_forward(self, images, queries=None):
    seen.extend(queries or [])
    return forward(self, images, queries)
DoveLlavaVisionTower.forward = recording_forward
try:
    main(sys.argv[2:])
finally:
    open(record, "w").write(json.dumps(seen))
"""


def _run_llava_script(tmp_path, argv, stdin=""):
    """Run a LLaVA script through the launcher in a fresh process (LLaVA's scripts change global state, e.g.
    `disable_torch_init` turns off nn.Linear initialisation); returns the queries the DOVE tower received."""
    runner, record = tmp_path / "run_recording.py", tmp_path / "queries.json"
    runner.write_text(RECORDING_RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(runner), str(record), *argv], input=stdin, capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return __import__("json").loads(record.read_text()), result.stdout


@requires_llava
def test_llava_train_script_runs_with_a_dove_tower(dove_dir, text_tokenizer, tmp_path):
    """LLaVA's own `llava/train/train.py`, run by the launcher on a tiny local LM, images and conversations;
    the Q-DOVE tower gets each sample's question (a text-only sample's blank image gets the null query)."""
    from PIL import Image
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = tmp_path / "llm"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(text_tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                 bos_token_id=1, eos_token_id=2)).save_pretrained(llm)
    text_tokenizer.save_pretrained(llm)
    (tmp_path / "images").mkdir()
    rows = []
    for i, question in enumerate(QUESTIONS):
        pixels = (torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"{question}\n<image>"}, {"from": "gpt", "value": "The square is green."}]})
    rows.append({"id": "text", "conversations": [{"from": "human", "value": QUESTIONS[1]}, {"from": "gpt", "value": "Yes."}]})
    (tmp_path / "data.json").write_text(__import__("json").dumps(rows))

    output_dir = tmp_path / "llava-dove-tiny"
    seen, _ = _run_llava_script(tmp_path, [
        "llava.train.train", "--model_name_or_path", str(llm), "--version", "v1",
        "--data_path", str(tmp_path / "data.json"), "--image_folder", str(tmp_path / "images"),
        "--vision_tower", f"dove:{dove_dir}?mode=query", "--mm_projector_type", "mlp2x_gelu",
        "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad",
        "--output_dir", str(output_dir), "--num_train_epochs", "1", "--per_device_train_batch_size", "5",
        "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no", "--model_max_length", "256",
        "--lazy_preprocess", "True", "--dataloader_num_workers", "0", "--bf16", "False", "--use_cpu", "True"])
    assert sorted(seen, key=str) == sorted([*QUESTIONS, None], key=str)
    saved = __import__("json").loads((output_dir / "config.json").read_text())
    assert saved["mm_vision_tower"] == f"dove:{dove_dir}?mode=query" and saved["mm_hidden_size"] == 4
    assert (output_dir / "model.safetensors").exists()


@requires_llava
def test_llava_cli_answers_with_a_dove_tower(patched, dove_dir, text_tokenizer, tmp_path):
    """LLaVA's own chat script (`llava.serve.cli`, which runs on a CPU with `--device cpu`) through the launcher:
    it loads a saved tiny LLaVA-DOVE with `load_pretrained_model`, and the question reaches the Q-DOVE tower."""
    from PIL import Image

    folder = tmp_path / "llava-v1-dove-tiny"  # LLaVA's loader and template choice go by the name
    model = _tiny_llava(patched, f"dove:{dove_dir}?mode=query", text_tokenizer)
    model.save_pretrained(folder)
    text_tokenizer.save_pretrained(folder)
    image = tmp_path / "scene.png"
    Image.fromarray((torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(image)
    seen, stdout = _run_llava_script(tmp_path, [
        "llava.serve.cli", "--model-path", str(folder), "--image-file", str(image), "--device", "cpu",
        "--max-new-tokens", "4", "--temperature", "0", "--debug"], stdin=QUESTIONS[0] + "\n")
    assert seen == [QUESTIONS[0]]
    assert "USER: <image>\\nWhat colour is the square? ASSISTANT:" in stdout


@requires_llava
def test_launcher_passes_launcher_options_after_the_script(patched, tmp_path, monkeypatch):
    from llava_patch.__main__ import main

    script = tmp_path / "show_argv.py"
    script.write_text("import sys, json, llava_patch\n"
                      "open(sys.argv[1], 'w').write(json.dumps([sys.argv[2:], llava_patch.is_applied()]))\n")
    out = tmp_path / "argv.json"
    monkeypatch.setattr(sys, "argv", ["llava_patch"])
    main(["--local_rank=0", str(script), str(out), "--vision_tower", "dove:/x"])  # as `deepspeed --module` calls it
    assert __import__("json").loads(out.read_text()) == [["--vision_tower", "dove:/x", "--local_rank=0"], True]


@requires_llava
def test_non_query_towers_refuse_questions(patched, dove_dir, text_tokenizer, tower_images):
    model = _tiny_llava(patched, f"dove:{dove_dir}?mode=fixed&num_tokens=3", text_tokenizer)
    assert [f.shape[0] for f in model.encode_images(tower_images)] == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="ignores text queries"):
        model.encode_images(tower_images[:1], queries=["the red circle"])
