"""The lmms-eval harness: adapter registration and modes, local tasks, bad input, and the lmms-eval CLI itself."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from eval.compare import export_file, mode_matrix, read_records, task_of
from dove_vlm.llava.saved import load_dove_llava
from dove_vlm.tower_settings import TowerSettings, TowerSettingsError
from eval.lmms_adapter import DoveLlava, set_tower_settings
from eval.tasks.dove_vqa.utils import dove_vqa_process_results, validate_records


class _Request:
    def __init__(self, args):
        self.args = args


def _requests(records, task="t"):
    docs = {i: {"image": r["image"]} for i, r in enumerate(records)}
    from eval.tasks.dove_vqa.utils import dove_vqa_doc_to_visual

    reqs = [_Request((r["question"], {"max_new_tokens": 4}, dove_vqa_doc_to_visual, i, task, "test"))
            for i, r in enumerate(records)]
    return reqs, {task: {"test": docs}}


@pytest.mark.parametrize("value, expected", [
    ("grid", ("grid", None)), ("adaptive", ("adaptive", None)), ("fixed-8", ("fixed", 8)),
    ("query", ("query", None)), ("query-null", ("query-null", None)), ("Query_Null", ("query-null", None)),
    (None, (None, None)),
])
def test_tower_mode_spellings(value, expected):
    settings = TowerSettings.parse({"tower_mode": value})
    assert (settings.mode and settings.mode.value, settings.num_tokens) == expected


@pytest.mark.parametrize("value, k, match", [
    ("bogus", None, "unknown tower mode"), ("fixed", None, "num_tokens"), ("fixed-x", None, "fixed-K"),
    ("adaptive", 4, "only applies"),
])
def test_tower_mode_errors(value, k, match):
    with pytest.raises(TowerSettingsError, match=match):
        TowerSettings.parse({"tower_mode": value, "num_tokens": k})


def test_entry_point_registers_the_adapter():
    from lmms_eval.models import MODEL_REGISTRY_V2

    assert MODEL_REGISTRY_V2.get_model_class("dove_llava") is DoveLlava


def test_adapter_matches_evaluate_vqa_and_reports_tokens(llava_dir, task_yaml):
    from dove_vlm.llava.vqa import generate_answers

    records = read_records(task_yaml.parent.parent / "dove_vqa_test.json")
    from PIL import Image

    for mode, use_queries in [("query", True), ("adaptive", False)]:
        lm = DoveLlava(pretrained=llava_dir, tower_mode=mode, batch_size=4)
        reqs, lm.task_dict = _requests(records)
        out = lm.generate_until(reqs)
        model, processor = load_dove_llava(llava_dir)
        set_tower_settings(model, processor, mode)
        images = [{"image": Image.open(r["image"]).convert("RGB"), "question": r["question"]} for r in records]
        answers, lengths = generate_answers(model, processor, images, batch_size=3, use_queries=use_queries)
        assert [o.text for o in out] == answers
        assert all(o.token_counts.input_tokens > n for o, n in zip(out, lengths))
    null = DoveLlava(pretrained=llava_dir, tower_mode="query-null")
    assert null.tower.config.mode == "query-null" and not null.tower.supports_queries and not null.use_queries


def test_grid_mode_on_a_token_model_is_refused(llava_dir):
    with pytest.raises(ValueError, match="projector"):
        DoveLlava(pretrained=llava_dir, tower_mode="grid")
    with pytest.raises(FileNotFoundError):
        DoveLlava(pretrained=llava_dir + "_missing")


@pytest.mark.parametrize("prediction, answer, score", [
    ("Two.", "2", 100.0), ("the Red", "red", 100.0), ("  YES!", "yes", 100.0), ("left", "right", 0.0), ("", "3", 0.0),
])
def test_answers_scored_with_vqa_normalisation(prediction, answer, score):
    assert dove_vqa_process_results({"answer": answer}, [prediction]) == {"vqa_accuracy": score}


def test_bad_task_files(tmp_path, task_yaml):
    image = read_records(task_yaml.parent.parent / "dove_vqa_test.json")[0]["image"]
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="empty"):
        export_file(tmp_path / "empty.json", tmp_path / "out")
    (tmp_path / "nofield.json").write_text(json.dumps([{"image": image, "question": "what?"}]))
    with pytest.raises(ValueError, match="lacks answer"):
        export_file(tmp_path / "nofield.json", tmp_path / "out")
    (tmp_path / "noimage.json").write_text(json.dumps([{"image": "nope.png", "question": "q", "answer": "a"}]))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        export_file(tmp_path / "noimage.json", tmp_path / "out")
    with pytest.raises(ValueError, match="empty"):
        validate_records([])
    # a user file with a relative image path, in the same format as the export
    (tmp_path / "img.png").write_bytes(Path(image).read_bytes())
    (tmp_path / "mine.json").write_text(json.dumps([{"image": "img.png", "question": "what colour ?", "answer": "Red"}]))
    yaml = export_file(tmp_path / "mine.json", tmp_path / "out", task_name="mine")
    assert task_of(yaml)[0] == "mine"
    assert json.loads((tmp_path / "out" / "mine.json").read_text())[0]["image"] == str(tmp_path / "img.png")
    with pytest.raises(ValueError, match="nothing to compare"):
        mode_matrix()
    rows = [s.name for s in mode_matrix("g", "d", "q", fixed_k=(16,))]
    assert rows == ["grid", "fixed-16", "adaptive", "query", "query-null"]
    assert [s.name for s in mode_matrix(qdove_model="q", query_null=False)] == ["query"]


def test_lmms_eval_cli_comparison(llava_dir, task_yaml, tmp_path):
    """`dove eval compare` runs lmms-eval's command line (a subprocess; one mode, four questions), reads its results
    file, and matches the LLaVA evaluation (`evaluate_vqa`) on the same model and questions."""
    _cli_comparison(llava_dir, task_yaml, tmp_path)


def _cli_comparison(llava_dir, task_yaml, tmp_path):
    from dove_vlm.commands.cli import main

    out = tmp_path / "cmp"
    code = main(["eval", "compare", "--task", str(task_yaml), "--qdove-model", llava_dir, "--modes", "query",
                 "--output-dir", str(out), "--batch-size", "4", "--limit", "4", "--reference-eval"])
    assert code == 0, (out / "runs" / "query" / "lmms_eval.log").read_text()[-3000:]
    row = json.loads((out / "comparison.json").read_text())["rows"][0]
    assert row["name"] == "query" and row["num_samples"] == 4 and row["tokens_per_image_mean"] >= 1
    assert row["accuracy_minus_reference"] == 0
    results = json.loads(Path(row["results_file"]).read_text())
    assert results["throughput"]["avg_image_tokens"] == row["tokens_per_image_mean"]
    assert results["efficiency"]["overall"]["docs_with_token_counts"] == 4
    assert "| query |" in (out / "comparison.md").read_text() and (out / "accuracy_vs_tokens.png").is_file()
    # the side-by-side latency, split into the tower and the language model (parts of the same timed calls)
    tower, lm = row["side_by_side_tower_seconds_per_sample"], row["side_by_side_language_model_seconds_per_sample"]
    assert 0 < tower and 0 < lm and tower + lm <= row["side_by_side_seconds_per_sample"]
    assert "LM speed-up vs grid" in (out / "comparison.md").read_text()
    return out, row


def test_finished_runs_are_reused_only_with_the_same_inputs(llava_dir, task_yaml, tmp_path, monkeypatch, capsys):
    """A second `dove eval compare` reads the finished run back; other options, a changed model file or --rerun
    start lmms-eval again (here a stand-in that fails, which proves it was called)."""
    import shutil

    from dove_vlm.commands.cli import main
    from eval import compare as compare_module

    model = tmp_path / "model"
    shutil.copytree(llava_dir, model)
    out, row = _cli_comparison(str(model), task_yaml, tmp_path)
    calls = []

    def no_lmms_eval(spec, *args, **kwargs):
        calls.append(spec.name)
        raise compare_module.LmmsEvalError(f"lmms-eval was started for {spec.name}")

    monkeypatch.setattr(compare_module, "run_lmms_eval", no_lmms_eval)
    command = ["eval", "compare", "--task", str(task_yaml), "--qdove-model", str(model), "--modes", "query",
               "--output-dir", str(out), "--batch-size", "4", "--limit", "4", "--no-side-by-side"]
    capsys.readouterr()
    assert main(command) == 0 and calls == []
    assert "reusing the finished lmms-eval run" in capsys.readouterr().out
    again = json.loads((out / "comparison.json").read_text())["rows"][0]
    assert again["accuracy"] == row["accuracy"] and again["results_file"] == row["results_file"]
    assert main([*command, "--rerun"]) == 2 and calls == ["query"]
    assert main([*command[:-5], "--batch-size", "2", "--limit", "4", "--no-side-by-side"]) == 2  # other options
    config = model / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))  # the model was retrained
    assert main(command) == 2 and calls == ["query", "query", "query"]


def test_failed_runs_exit_non_zero_with_the_cause(llava_dir, task_yaml, tmp_path, monkeypatch, capsys):
    """lmms-eval can exit 0 after a failure: `dove eval` reads the results file instead. Here a stand-in
    `lmms-eval` prints a traceback and exits 0 without results (the real one does so when the model raises)."""
    from dove_vlm.commands.cli import main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "lmms-eval"
    fake.write_text("#!/bin/sh\necho 'Traceback (most recent call last):'\necho 'RuntimeError: the model raised'\n"
                    "exit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code = main(["eval", "compare", "--task", str(task_yaml), "--qdove-model", llava_dir, "--modes", "query",
                 "--output-dir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "wrote no results" in err and "exit code 0" in err and "the model raised" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err  # one line, naming the log
    # missing task data: refused before lmms-eval starts
    missing = tmp_path / "tasks" / "gone.yaml"
    missing.parent.mkdir()
    missing.write_text(f"task: gone\ninclude: x\ndataset_kwargs:\n  data_files:\n    test: {tmp_path}/gone.json\n")
    code = main(["eval", "compare", "--task", str(missing), "--qdove-model", llava_dir, "--output-dir",
                 str(tmp_path / "cmp2")])
    assert code != 0 and "gone.json" in capsys.readouterr().err
    assert main(["eval", "compare", "--task", str(task_yaml), "--qdove-model", llava_dir, "--modes", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_demo_comparison_without_llava_stages(tmp_path):
    from eval.compare import demo_comparison

    assert demo_comparison(tmp_path) is None


def test_bucketed_batches_answer_in_request_order(llava_dir, task_yaml, monkeypatch):
    """The language model runs on length-sorted batches; answers, counts and per-request seconds come back in the
    requests' order, equal to unsorted batches, and the tower still runs once per image."""
    records = read_records(task_yaml.parent.parent / "dove_vqa_test.json")
    outputs, batches = {}, {}
    for window in (1, 8):
        lm = DoveLlava(pretrained=llava_dir, tower_mode="query", batch_size=2, bucket_window=window)
        seen, calls = [], []
        hook = lm.tower.register_forward_hook(lambda module, args, out: seen.append(out.lengths.numel()))
        answer = lm._answer
        monkeypatch.setattr(lm, "_answer", lambda images, questions, *rest: calls.append(list(questions))
                            or answer(images, questions, *rest))
        reqs, lm.task_dict = _requests(records)
        try:
            outputs[window] = [(o.text, o.token_counts.input_tokens) for o in lm.generate_until(reqs)]
        finally:
            hook.remove()
        assert sum(seen) == len(records) and max(seen) <= 2  # once per image, batch_size at a time
        batches[window] = calls
    assert outputs[1] == outputs[8]
    questions = [r["question"] for r in records]
    assert [q for batch in batches[1] for q in batch] == questions  # window 1: request order
    assert sorted(q for batch in batches[8] for q in batch) == sorted(questions)
    timings = {}
    texts, lengths, _, _, seconds = DoveLlava(pretrained=llava_dir, tower_mode="query", batch_size=2)._generate(
        [Image.open(r["image"]).convert("RGB") for r in records], questions, 4, timings=timings)
    assert len(texts) == len(lengths) == len(seconds) == len(records) and all(s > 0 for s in seconds)
    # where the time goes: every request's seconds are its shares of the tower calls and the generate calls
    assert timings["tower"] > 0 and timings["language_model"] > 0
    assert sum(seconds) == pytest.approx(timings["tower"] + timings["language_model"])


def test_batch_invariant_and_merge_lora_options(llava_dir, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model

    assert DoveLlava(pretrained=llava_dir, tower_mode="adaptive").tower.dove.config.batch_invariant is True
    lm = DoveLlava(pretrained=llava_dir, tower_mode="adaptive", batch_invariant="false")
    assert lm.tower.dove.config.batch_invariant is False
    assert lm.model.model.vision_tower is lm.tower
    with pytest.raises(ValueError, match="batch_invariant=true or batch_invariant=false"):
        DoveLlava(pretrained=llava_dir, batch_invariant="maybe")

    import eval.lmms_adapter as adapter

    def peft_loader(pretrained, **kwargs):  # a LoRA stage: peft-wrapped language model
        model, processor = load_dove_llava(pretrained)
        config = LoraConfig(r=4, target_modules=r".*language_model\..*\.(q_proj|v_proj)", init_lora_weights=False)
        torch.manual_seed(0)  # the same random (non-zero) LoRA weights in both loads
        return get_peft_model(model, config), processor

    monkeypatch.setattr(adapter, "load_dove_llava", peft_loader)
    merged = DoveLlava(pretrained=llava_dir, tower_mode="query")
    unmerged = DoveLlava(pretrained=llava_dir, tower_mode="query", merge_lora="false")
    assert not hasattr(merged.model, "merge_and_unload") and hasattr(unmerged.model, "merge_and_unload")
    questions = ["what colour is the circle ?", "how many shapes are there ?"]
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    assert merged._generate(images, questions, 4)[:4] == unmerged._generate(images, questions, 4)[:4]
