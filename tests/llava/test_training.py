"""`dove llava-train`: the base and LoRA stages, answer-only loss, checkpoints and --resume, saving / loading /
merging the adapter with identical generations, clear errors for mismatched inputs, the CLI."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dove_vlm.commands.cli import main
from dove_vlm.llava.saved import load_base_llava, load_llava_lora
from dove_vlm.vision_tower import DoveVisionTower
from llava_patch.training import LlavaTrainingArguments, train_llava
from llava_patch.training.data import IGNORE_INDEX, PromptEncoder, group_examples
from llava_patch.training.features import TowerFeatureCache
from llava_patch.training.train import build_model
from dove_vlm.llava.vqa import CAPTION_QUESTION, build_prompt, build_vqa_split, generate_answers, record_query
from tests.llava.conftest import MICRO_LLAVA

LORA = dict(MICRO_LLAVA, max_steps=4, learning_rate=3e-3, lora_r=4, lora_alpha=8)


@pytest.fixture(scope="module")
def lora_dir(dove_dir, base_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("llava_lora")
    metrics = train_llava(LlavaTrainingArguments(output_dir=str(path), stage="lora", tower=dove_dir, base_model=base_dir,
                                                 merge=True, **LORA))
    return str(path), metrics


def test_base_stage_writes_a_full_model_and_metrics(base_dir):
    root = Path(base_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json"} <= {p.name for p in root.iterdir()}
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["stage"] == "base" and metrics["mode"] == "grid" and metrics["steps"] == 4
    assert metrics["eval"]["tokens_per_image_mean"] == 64  # the micro VQGAN's 8 x 8 latents
    assert {"overall", "per_type"} <= set(metrics["majority_baseline"])
    model = load_base_llava(base_dir)
    assert model.model.vision_tower.config.mode == "grid"


def test_lora_stage_trains_only_the_adapter_and_the_projector(lora_dir, base_dir):
    path, metrics = lora_dir
    root = Path(path)
    assert (root / "adapter" / "adapter_model.safetensors").is_file() and (root / "tower" / "config.json").is_file()
    keys = load_file(root / "adapter" / "adapter_model.safetensors").keys()
    assert any("lora_A" in k for k in keys) and any("multi_modal_projector" in k for k in keys)
    assert not any("vision_tower" in k for k in keys)
    assert all("language_model" in k for k in keys if "lora_" in k)
    base = load_base_llava(base_dir)
    lm_params = sum(p.numel() for p in base.model.language_model.parameters())
    assert 0 < metrics["trainable_parameters"] < lm_params
    assert metrics["eval"]["num_questions"] > 0 and metrics["mode"] == "adaptive"


def test_min_tokens_floors_every_length_and_is_saved_with_the_tower(dove_dir, base_dir, tmp_path):
    args = LlavaTrainingArguments(output_dir=str(tmp_path), stage="lora", tower=dove_dir, base_model=base_dir,
                                  min_tokens=3, **dict(LORA, max_steps=1))
    metrics = train_llava(args)
    assert metrics["eval"]["tokens_per_image_mean"] >= 3
    model, processor = load_llava_lora(tmp_path)
    assert processor.tower.config.min_tokens == 3


def test_loss_only_on_answer_tokens_and_prompt_matches_the_processor(base_dir, dove_dir):
    from dove_vlm.llava.saved import build_processor, load_tokenizer

    tower = DoveVisionTower.from_pretrained(dove_dir, mode="adaptive")
    processor = build_processor(tower, load_tokenizer(base_dir))
    records = build_vqa_split("train", 3, seed=0)
    encoder = PromptEncoder(processor)
    examples = group_examples(records, 1, 0)[:2]
    lengths = tower.num_image_tokens(tower.image_processor([e[0]["image"] for e in examples], return_tensors="pt")
                                     ["pixel_values"]).tolist()
    batch = encoder.collate(examples, lengths)
    tokenizer = processor.tokenizer
    for i, example in enumerate(examples):
        labelled = [int(t) for t in batch["labels"][i] if t != IGNORE_INDEX]
        assert tokenizer.decode(labelled).split() == [example[0]["answer"], tokenizer.eos_token]
        # The prompt part is exactly what the processor gives at generation time.
        expected = processor(images=[example[0]["image"]], text=[build_prompt(processor, example[0]["question"])])
        n = expected["input_ids"].shape[1]
        assert batch["input_ids"][i, :n].tolist() == expected["input_ids"][0].tolist()
        assert (batch["labels"][i, :n] == IGNORE_INDEX).all()
    multi = encoder.collate(group_examples(records, 3, 0)[:1], [5])
    assert (multi["labels"] != IGNORE_INDEX).sum() == 2 * 3  # three answers, each with its end of sequence


def test_cached_features_equal_the_tower(qdove_dir):
    tower = DoveVisionTower.from_pretrained(qdove_dir, mode="query")
    examples = group_examples(build_vqa_split("train", 4, seed=0), 1, 0)
    cache = TowerFeatureCache(tower, examples, batch_size=3)
    pixels = tower.image_processor([e[0]["image"] for e in examples], return_tensors="pt")["pixel_values"]
    direct = tower(pixels, queries=[e[0]["question"] for e in examples]).features
    for got, want in zip(cache.features(list(range(len(examples)))), direct):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_init_adapter_starts_a_lora_stage_from_an_earlier_one(lora_dir, qdove_dir, base_dir, tmp_path):
    """`--init-adapter`: a Q-DOVE stage starts from the DOVE stage's adapter and projector (not a fresh LoRA), and
    the query tower's length limits are saved with the stage's tower."""
    from peft import get_peft_model_state_dict

    path, _ = lora_dir
    args = LlavaTrainingArguments(output_dir=str(tmp_path / "q"), stage="lora", tower=qdove_dir, mode="query",
                                  base_model=base_dir, init_adapter=path, query_min_tokens=2, query_max_tokens=3,
                                  **dict(LORA, max_steps=1, eval_scenes=0))
    model, tower, _ = build_model(args, None)
    start = load_file(Path(path) / "adapter" / "adapter_model.safetensors")
    now = get_peft_model_state_dict(model)
    assert set(start) == set(now)
    for key, weight in start.items():
        torch.testing.assert_close(now[key], weight, rtol=0, atol=0)
    fresh, _, _ = build_model(LlavaTrainingArguments(**{**args.to_dict(), "init_adapter": None}), None)
    assert not all(torch.equal(get_peft_model_state_dict(fresh)[k], w) for k, w in start.items())
    train_llava(args)
    saved = DoveVisionTower.from_pretrained(str(tmp_path / "q" / "tower"), mode="query")
    assert (saved.config.query_min_tokens, saved.config.query_max_tokens) == (2, 3)
    with pytest.raises(ValueError, match="--init-adapter"):
        LlavaTrainingArguments(output_dir="x", stage="base", tower=qdove_dir, init_adapter=path)
    # max_steps=0: the started adapter as it is, saved with this stage's tower and scored
    kept = train_llava(LlavaTrainingArguments(**{**args.to_dict(), "output_dir": str(tmp_path / "kept"),
                                                 "max_steps": 0, "eval_scenes": 2}))
    assert kept["steps"] == 0 and kept["eval"]["num_questions"] > 0
    saved = load_file(tmp_path / "kept" / "adapter" / "adapter_model.safetensors")
    assert set(saved) == set(start) and all(torch.equal(saved[k], w) for k, w in start.items())
    with pytest.raises(ValueError, match="0 only with --init-adapter"):
        LlavaTrainingArguments(**{**args.to_dict(), "init_adapter": None, "max_steps": 0})


def test_caption_turns_give_q_dove_the_null_query(qdove_dir):
    """A caption request ("describe the image.") names no region: its Q-DOVE features are the null query's (the
    whole image), not those of the request's words; a question's are its own."""
    tower = DoveVisionTower.from_pretrained(qdove_dir, mode="query")
    records = build_vqa_split("train", 3, seed=0, questions_per_scene=1, captions=True)
    captions = [r for r in records if r["type"] == "caption"]
    questions = [r for r in records if r["type"] != "caption"]
    assert [record_query(r) for r in captions] == [None] * 3
    assert [record_query(r) for r in questions] == [r["question"] for r in questions]
    examples = group_examples(captions + questions, 1, 0)
    cached = TowerFeatureCache(tower, examples, batch_size=6).features(list(range(len(examples))))
    pixels = tower.image_processor([r["image"] for r in captions + questions], return_tensors="pt")["pixel_values"]
    null = tower(pixels[:3]).features
    asked = tower(pixels[3:], queries=[r["question"] for r in questions]).features
    for got, want in zip(cached, [*null, *asked]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    worded = tower(pixels[:3], queries=[CAPTION_QUESTION] * 3).features
    assert any(a.shape != b.shape or not torch.allclose(a, b) for a, b in zip(worded, null))  # the words differ


def test_cache_and_recompute_train_the_same_model(dove_dir, base_dir, tmp_path):
    finals = []
    for recompute in (False, True):
        args = LlavaTrainingArguments(output_dir=str(tmp_path / str(recompute)), stage="lora", tower=dove_dir,
                                      base_model=base_dir, recompute_features=recompute,
                                      **dict(LORA, max_steps=2, eval_scenes=0))
        finals.append(train_llava(args)["history"][-1]["loss"])
    assert finals[0] == pytest.approx(finals[1], rel=1e-4)


def test_resume_continues_exactly(dove_dir, base_dir, tmp_path):
    common = dict(stage="lora", tower=dove_dir, base_model=base_dir, **dict(LORA, eval_scenes=0))
    straight = tmp_path / "straight"
    train_llava(LlavaTrainingArguments(output_dir=str(straight), **common))
    interrupted = tmp_path / "interrupted"
    train_llava(LlavaTrainingArguments(output_dir=str(interrupted), **common))
    import shutil

    shutil.rmtree(interrupted / "checkpoint-4")  # as if killed after the step-2 checkpoint
    shutil.rmtree(interrupted / "adapter")
    metrics = train_llava(LlavaTrainingArguments(output_dir=str(interrupted), resume=True, **common))
    assert [h["step"] for h in metrics["history"]] == [0, 1, 2, 3]
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(interrupted / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_save_load_generate_identical_unmerged_and_merged(lora_dir):
    path, _ = lora_dir
    records = build_vqa_split("test", 8, seed=0, questions_per_scene=1)
    unmerged, processor = load_llava_lora(path)
    merged, merged_processor = load_llava_lora(path, merged=True)
    answers, lengths = generate_answers(unmerged, processor, records, batch_size=4, max_new_tokens=3)
    merged_answers, merged_lengths = generate_answers(merged, merged_processor, records, batch_size=4, max_new_tokens=3)
    assert answers == merged_answers and lengths == merged_lengths
    # Logits too: the merged weights are the base plus the LoRA update.
    inputs = processor(images=[r["image"] for r in records[:2]],
                       text=[build_prompt(processor, r["question"]) for r in records[:2]])
    inputs.pop("image_queries")
    with torch.no_grad():
        torch.testing.assert_close(unmerged(**inputs).logits, merged(**inputs).logits, rtol=1e-4, atol=1e-4)
    # A second load gives the same answers (nothing random in loading).
    again, processor2 = load_llava_lora(path)
    assert generate_answers(again, processor2, records, batch_size=3, max_new_tokens=3)[0] == answers


def test_trained_in_memory_model_equals_the_saved_adapter(dove_dir, base_dir, tmp_path, final_model):
    train_llava(LlavaTrainingArguments(output_dir=str(tmp_path), stage="lora", tower=dove_dir, base_model=base_dir,
                                       **dict(LORA, eval_scenes=0, max_steps=2)))
    records = build_vqa_split("test", 6, seed=0, questions_per_scene=1)
    final_model["model"].eval()
    before = generate_answers(final_model["model"], final_model["processor"], records, batch_size=6)
    loaded, processor = load_llava_lora(tmp_path)
    assert generate_answers(loaded, processor, records, batch_size=2) == before


def test_adapter_for_another_base_model_is_refused(lora_dir, dove_dir, tmp_path):
    path, _ = lora_dir
    other = tmp_path / "other_base"
    train_llava(LlavaTrainingArguments(output_dir=str(other), stage="base", tower=dove_dir,
                                       **dict(MICRO_LLAVA, max_steps=1, eval_scenes=0, hidden_size=48)))
    with pytest.raises(ValueError, match=r"another base model.*hidden_size 32 vs 48"):
        load_llava_lora(path, base_model=str(other))
    # Without the recorded fingerprint, the weight shapes still name the mismatch.
    (Path(path) / "dove_llava_lora.json").rename(tmp_path / "info.json")
    try:
        from dove_vlm.llava.saved import attach_adapter

        base = load_base_llava(str(other))
        base.set_vision_tower(DoveVisionTower.from_pretrained(str(Path(path) / "tower"), mode="adaptive"))
        with pytest.raises(ValueError, match=r"another base model: model\.language_model\.layers\.0\.\S+ is \(48, "):
            attach_adapter(base, Path(path) / "adapter")
    finally:
        (tmp_path / "info.json").rename(Path(path) / "dove_llava_lora.json")


def test_adapter_without_projector_is_refused(lora_dir, tmp_path):
    import shutil

    path, _ = lora_dir
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    weights = copy / "adapter" / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "multi_modal_projector" not in k}, weights)
    with pytest.raises(ValueError, match="no projector weights"):
        load_llava_lora(copy)


def test_base_model_without_projector_is_refused(base_dir, tmp_path):
    import shutil

    copy = tmp_path / "base"
    shutil.copytree(base_dir, copy)
    weights = copy / "model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "multi_modal_projector" not in k}, weights,
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing the multimodal projector"):
        load_base_llava(str(copy))


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown stage"):
        LlavaTrainingArguments(output_dir="x", stage="full", tower="t")
    with pytest.raises(ValueError, match="--base-model"):
        LlavaTrainingArguments(output_dir="x", stage="lora", tower="t")
    with pytest.raises(ValueError, match="unknown tower mode"):
        LlavaTrainingArguments(output_dir="x", tower="t", mode="clip")
    with pytest.raises(ValueError, match="turns-per-image 1"):
        LlavaTrainingArguments(output_dir="x", stage="lora", tower="t", base_model="b", mode="query", turns_per_image=3)


def test_cli_llava_train(dove_dir, base_dir, qdove_dir, tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["llava-train", "--stage", "lora", "--tower", qdove_dir, "--mode", "query", "--base-model", base_dir,
                 "--output-dir", str(out), "--max-steps", "2", "--batch-size", "4", "--num-train-scenes", "8",
                 "--eval-scenes", "4", "--eval-batch-size", "4", "--lora-r", "2"])
    assert code == 0
    report = capsys.readouterr().out
    assert "LLaVA lora stage (query tower)" in report and "held-out VQA accuracy" in report
    assert json.loads((out / "metrics.json").read_text())["mode"] == "query"
    assert main(["llava-train", "--stage", "lora", "--tower", dove_dir, "--output-dir", str(tmp_path / "x")]) == 2
    assert "--base-model" in capsys.readouterr().err


def test_run_llava_demo_three_stages(dove_dir, qdove_dir, tmp_path):
    from dove_vlm.commands.llava_demo import run_llava_demo

    micro = {k: v for k, v in MICRO_LLAVA.items() if k not in ("hidden_size", "num_hidden_layers",
                                                                "num_attention_heads", "intermediate_size")}
    shape = {k: MICRO_LLAVA[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    settings = dict(shared=dict(micro, num_train_scenes=8, captions=True),
                    base=dict(shape, max_steps=2, turns_per_image=4), lora=dict(max_steps=2, lora_r=2, min_tokens=4),
                    qdove=dict(batch_size=8, num_train_scenes=8, max_steps=2), log=lambda *_: None)
    table, results = run_llava_demo(dove_dir, qdove_dir, str(tmp_path), seed=0, **settings)
    names = list(results["stages"])
    assert len(names) == 3 and [results["stages"][n]["mode"] for n in names] == ["grid", "adaptive", "query"]
    assert all(n in table for n in names) and "Majority-answer baselines" in table
    assert results["stages"][names[0]]["tokens_per_image_mean"] == 64
    assert (tmp_path / "llava_qdove" / "adapter" / "adapter_config.json").is_file()
    metrics = json.loads((tmp_path / "llava_base" / "metrics.json").read_text())
    assert metrics["train_type_counts"]["caption"] == 8  # one dense caption turn per training scene
    # A rerun reuses every finished stage (same arguments): nothing is retrained or re-scored.
    stamps = {n: (tmp_path / n / "metrics.json").stat().st_mtime_ns for n in ("llava_base", "llava_dove", "llava_qdove")}
    again_table, again = run_llava_demo(dove_dir, qdove_dir, str(tmp_path), seed=0, **settings)
    assert again_table == table
    assert stamps == {n: (tmp_path / n / "metrics.json").stat().st_mtime_ns for n in stamps}
