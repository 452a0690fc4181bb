"""LLaVA on a pretrained causal LM (`--language-model`): the align and finetune stages, the saved align format
(projector only; rebuilt from the LM), the LM's own chat template in training and generation, the context limit,
and clear errors for an LM without a chat template and for GGUF files of other architectures."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dove_vlm.llava.language_model import LanguageModelError, gguf_architecture, load_language_model
from dove_vlm.llava.saved import load_base_llava, load_dove_llava, load_llava_lora
from dove_vlm.llava.vqa import build_prompt, build_vqa_split, generate_answers
from llava_patch.training import LlavaTrainingArguments, train_llava
from llava_patch.training.data import IGNORE_INDEX, PromptEncoder
from tests.llava.conftest import MICRO_DATA

FINETUNE = dict(MICRO_DATA, max_steps=2, learning_rate=3e-3, lora_r=4, lora_alpha=8)


def test_align_trains_only_the_projector_and_saves_it_alone(align_dir, micro_lm_dir):
    root = Path(align_dir)
    names = {p.name for p in root.iterdir()}
    assert {"projector.safetensors", "dove_llava_align.json", "tower", "tokenizer.json", "metrics.json"} <= names
    assert "model.safetensors" not in names  # the frozen LM is never copied
    metrics = json.loads((root / "metrics.json").read_text())
    projector = load_file(root / "projector.safetensors")
    assert metrics["trainable_parameters"] == sum(v.numel() for v in projector.values())
    assert metrics["language_model"] == micro_lm_dir and set(metrics["train_type_counts"]) == {"caption"}
    model = load_base_llava(align_dir)
    for name, weight in model.model.multi_modal_projector.state_dict().items():
        torch.testing.assert_close(weight, projector[name], rtol=0, atol=0)
    lm, _ = load_language_model(micro_lm_dir)  # the language model is the pretrained one, unchanged
    torch.testing.assert_close(model.model.language_model.layers[0].mlp.up_proj.weight,
                               lm.model.layers[0].mlp.up_proj.weight, rtol=0, atol=0)
    assert model.model.language_model.embed_tokens.weight.shape[0] == lm.model.embed_tokens.weight.shape[0] + 1


def test_finetune_from_align_and_reload_give_the_same_answers(align_dir, dove_dir, tmp_path, final_model):
    metrics = train_llava(LlavaTrainingArguments(output_dir=str(tmp_path), stage="finetune", tower=dove_dir,
                                                 base_model=align_dir, turns_per_image=3, merge=True, **FINETUNE))
    assert metrics["eval"]["num_questions"] > 0 and metrics["stage"] == "finetune"
    records = build_vqa_split("test", 4, seed=0, questions_per_scene=1)
    final_model["model"].eval()
    before = generate_answers(final_model["model"], final_model["processor"], records, batch_size=4)
    model, processor = load_llava_lora(tmp_path)
    assert generate_answers(model, processor, records, batch_size=2) == before
    merged, merged_processor = load_dove_llava(str(tmp_path), merged=True)
    assert generate_answers(merged, merged_processor, records, batch_size=3)[0] == before[0]
    # The LM's own chat template frames the question (ChatML with its system prompt), and the processor finds
    # the user's turn in it.
    prompt = build_prompt(processor, "how many objects are there?")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert processor.user_turn(prompt) == "how many objects are there?"


def test_labels_are_the_answers_and_the_system_prompt_comes_once(align_dir):
    _, processor = load_dove_llava(align_dir)
    encoder = PromptEncoder(processor)
    records = build_vqa_split("train", 1, seed=0)[:3]
    ids, labels, ends = encoder.encode(records)
    tokenizer = processor.tokenizer
    text = tokenizer.decode(ids)
    assert text.count("<|im_start|>system") == 1 and text.count("<image>") == 1
    labelled = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert labelled == "".join(r["answer"] + "<|im_end|>" for r in records)  # answers + end of turn only
    assert ends == sorted(ends) and ends[-1] <= len(ids)
    # The first turn's prompt is what the processor gives at generation time.
    single, _, _ = encoder.encode(records[:1])
    expanded = processor(images=[records[0]["image"]], text=[build_prompt(processor, records[0]["question"])],
                         image_lengths=[1])["input_ids"][0].tolist()
    assert single[: len(expanded)] == expanded


def test_a_conversation_longer_than_the_context_is_cut_or_left_out(align_dir):
    _, processor = load_dove_llava(align_dir)
    records = build_vqa_split("train", 1, seed=0)[:4]
    encoder = PromptEncoder(processor, max_length=10_000)
    ids, _, ends = encoder.encode(records)
    tight = PromptEncoder(processor, max_length=ends[1] + 4)
    with pytest.warns(UserWarning, match=r"scene 0: .* over the context .*first 2 of 4 turns"):
        assert tight.fit(records, max_image_tokens=5) == records[:2]
    tiny = PromptEncoder(processor, max_length=ends[0] - 2)
    with pytest.warns(UserWarning, match="left out"):
        assert tiny.fit(records, max_image_tokens=5) is None


def test_language_model_without_chat_template_is_refused(dove_dir, tmp_path):
    from tests.llava.micro_lm import save_micro_lm

    bare = save_micro_lm(tmp_path / "bare", chat_template=None)
    args = dict(stage="align", tower=dove_dir, language_model=bare, **dict(MICRO_DATA, max_steps=1, eval_scenes=0))
    with pytest.raises(LanguageModelError, match="no chat template.*--chat-template llava"):
        train_llava(LlavaTrainingArguments(output_dir=str(tmp_path / "a"), **args))
    metrics = train_llava(LlavaTrainingArguments(output_dir=str(tmp_path / "b"), chat_template="llava", **args))
    assert metrics["steps"] == 1
    _, processor = load_dove_llava(str(tmp_path / "b"))
    assert build_prompt(processor, "q?") == "USER: <image>\nq? ASSISTANT:"
    assert (processor.user_prefix, processor.assistant_prefix) == ("USER:", "ASSISTANT:")


def test_gguf_files_of_other_architectures_are_refused(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "other.gguf"
    writer = GGUFWriter(str(path), arch="rwkv6")
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LanguageModelError, match="holds a 'rwkv6' model.*llama"):
        load_language_model(path)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(LanguageModelError, match="not a GGUF file"):
        gguf_architecture(fake)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_language_model(tmp_path / "missing.gguf")


def test_stage_arguments_are_checked(dove_dir):
    with pytest.raises(ValueError, match="exactly one of --language-model"):
        LlavaTrainingArguments(output_dir="x", stage="align", tower=dove_dir)
    with pytest.raises(ValueError, match="--base-model .*or --language-model"):
        LlavaTrainingArguments(output_dir="x", stage="finetune", tower=dove_dir)
    with pytest.raises(ValueError, match="--chat-template applies to --language-model"):
        LlavaTrainingArguments(output_dir="x", stage="finetune", tower=dove_dir, base_model="b", chat_template="llava")
    with pytest.raises(ValueError, match="with --data-path"):
        LlavaTrainingArguments(output_dir="x", stage="finetune", tower=dove_dir, base_model="b", data_path="d.json",
                               captions=True)


def test_q_dove_takes_each_human_turn_as_that_turns_query(qdove_dir, micro_lm_dir, tmp_path):
    """User conversations on a query-mode tower: one example per human turn (earlier turns as context, only that
    turn's answer trained), its image encoded with that turn's question."""
    from dove_vlm.vision_tower import DoveVisionTower
    from llava_patch.training.features import TowerFeatureCache
    from llava_patch.training.train import training_examples
    from tests.llava.test_user_data_cli import write_user_data

    data, _ = write_user_data(tmp_path, scenes=3)
    args = LlavaTrainingArguments(output_dir=str(tmp_path / "q"), stage="finetune", tower=qdove_dir, mode="query",
                                  language_model=micro_lm_dir, data_path=str(data),
                                  image_folder=str(tmp_path / "images"), **dict(FINETUNE, max_steps=1, eval_scenes=0))
    records, examples = training_examples(args, 32)
    assert len(examples) == 3 * 3 + 1 and len(records) == 3 * 3 + 1  # 3 turns per image + the text-only sample
    tower = DoveVisionTower.from_pretrained(qdove_dir, mode="query")
    cache = TowerFeatureCache(tower, examples, batch_size=4)
    from llava_patch.training.conversations import load_record_image

    with_image = [i for i, e in enumerate(examples) if e[0]["image"] is not None]
    pixels = tower.image_processor([load_record_image(examples[i][0]) for i in with_image],
                                   return_tensors="pt")["pixel_values"]
    asked = tower(pixels, queries=[examples[i][-1]["question"] for i in with_image]).features
    for got, want in zip(cache.features(with_image), asked):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len({examples[i][-1]["question"] for i in with_image}) > 3
    assert [r.get("label") for r in examples[2]] == [False, False, True]  # turns 1-2 are context for turn 3
    metrics = train_llava(args)  # and it trains
    assert metrics["num_train_examples"] == 10 and metrics["mode"] == "query"


@pytest.mark.slow
def test_lm_demo_rows_and_report(dove_dir, qdove_dir, micro_lm_dir, tmp_path):
    """`dove demo --language-model`'s LLaVA part: align + finetune for grid and DOVE, Q-DOVE on the DOVE adapter,
    a table that names the LM (beside the tiny LM's rows when they are there), reused on a rerun; the closing
    side-by-side latency of the three rows."""
    from dove_vlm.commands.llava_demo import lm_demo_dir, lm_latency_report, run_llava_lm_demo

    (tmp_path / "llava_results.json").write_text(json.dumps({"stages": {"grid (base LLaVA)": {
        "mode": "grid", "accuracy": 0.47}}}))
    settings = dict(shared=dict(MICRO_DATA, eval_scenes=3, eval_questions_per_scene=1),
                    align=dict(max_steps=1, num_train_scenes=8), finetune=dict(max_steps=1, num_train_scenes=8,
                                                                              lora_r=2, turns_per_image=4),
                    dove=dict(min_tokens=2), qdove=dict(num_train_scenes=4), log=lambda *_: None)
    table, results = run_llava_lm_demo(micro_lm_dir, dove_dir, qdove_dir, str(tmp_path), **settings)
    root = lm_demo_dir(tmp_path, micro_lm_dir)
    assert [s["mode"] for s in results["stages"].values()] == ["grid", "adaptive", "query"]
    assert f"Language model: {micro_lm_dir}" in table and "| 47.0% |" in table  # the tiny LM's grid row beside
    assert {p.name for p in root.iterdir()} >= {"grid_align", "grid", "dove_align", "dove", "qdove", "llava_report.md"}
    stamps = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in root.iterdir() if (p / "metrics.json").is_file()}
    assert run_llava_lm_demo(micro_lm_dir, dove_dir, qdove_dir, str(tmp_path), **settings)[0] == table
    assert stamps == {n: (root / n / "metrics.json").stat().st_mtime_ns for n in stamps}  # every stage reused
    report = lm_latency_report(tmp_path, micro_lm_dir, limit=4, batch_size=2)
    assert "| grid |" in report and "| adaptive |" in report and "| query |" in report
    assert json.loads((root / "latency.json").read_text())["limit"] == 4
