"""Every `dove` command validates before it works, never destroys an input and never answers with a traceback:
one test per class of bad input (data loss, writes outside the output folder, silent wrong results, tracebacks
and hangs, misleading errors). Each call runs in process under a time limit (`run_dove`)."""

import hashlib
import json
import os
import shutil
import time

import pytest

from tests.commands.conftest import FAST_LLAVA, FAST_TRAIN, run_dove


def digest(root) -> str:
    """SHA-256 over every file (names and bytes) under `root`."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as handle:
                h.update(handle.read())
    return h.hexdigest()


def one_line_error(code, err, command, *needles):
    """Exit code 2 and one `dove CMD: error: ...` line, the last on stderr (notes and progress bars may come before
    it), containing every needle; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    errors = [line for line in lines if line.startswith(f"dove {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# --- data loss ----------------------------------------------------------------------------------------------------


def test_an_output_folder_that_is_an_input_is_refused_and_the_input_kept(inputs, tmp_path):
    source = tmp_path / "D"
    shutil.copytree(inputs / "dove", source)
    before = digest(source)
    code, _, err = run_dove(["train", "--query", "--init-from", source, "--output-dir", source, *FAST_TRAIN[:-2]])
    one_line_error(code, err, "train", "--output-dir", "is the input --init-from")
    code, _, err = run_dove(["train", "--query", "--init-from", source, "--output-dir", source / "sub",
                             *FAST_TRAIN[:-2]])
    one_line_error(code, err, "train", "lies inside the input --init-from")
    base = tmp_path / "B"
    shutil.copytree(inputs / "base", base)
    base_before = digest(base)
    code, _, err = run_dove(["llava-train", "--stage", "lora", "--tower", inputs / "dove", "--base-model", base,
                             "--output-dir", base, "--max-steps", "1"])
    one_line_error(code, err, "llava-train", "is the input --base-model")
    code, _, err = run_dove(["llava-train", "--stage", "lora", "--tower", inputs / "dove", "--base-model", base,
                             "--output-dir", tmp_path, "--max-steps", "1"])
    one_line_error(code, err, "llava-train", "contains the input --base-model")
    assert digest(source) == before and digest(base) == base_before
    assert not (source / "sub").exists()


def test_a_second_run_into_a_busy_folder_names_the_holder(tmp_path):
    from dove_vlm.run_folder import claim

    out = tmp_path / "run"
    with claim(out, command="dove train --output-dir run"):
        code, _, err = run_dove(["train", "--output-dir", out, *FAST_TRAIN])
        line = one_line_error(code, err, "train", "in use by another run", f"pid {os.getpid()}", "started")
        assert "dove train --output-dir run" in line
        code, _, err = run_dove(["train", "--output-dir", out / "inner", *FAST_TRAIN])
        one_line_error(code, err, "train", "which another run is using")
    assert os.listdir(out) == [".dove-run.lock"]  # refused runs wrote nothing


def test_a_finished_run_is_not_silently_reused_or_mixed(tmp_path):
    out = tmp_path / "run"
    code, _, err = run_dove(["train", "--output-dir", out, *FAST_TRAIN])
    assert code == 0, err
    first = (out / "model.safetensors").read_bytes()
    # again without --resume: an error naming the flags that say what to do
    code, _, err = run_dove(["train", "--output-dir", out, *FAST_TRAIN, "--vqgan-steps", "2"])
    one_line_error(code, err, "train", "already holds files", "--resume", "--overwrite")
    # --resume with another VQGAN recipe: the checkpoint was trained with the old one
    code, _, err = run_dove(["train", "--output-dir", out, *FAST_TRAIN, "--vqgan-steps", "2", "--resume"])
    one_line_error(code, err, "train", "--vqgan-steps 1 -> 2", "--overwrite")
    assert (out / "model.safetensors").read_bytes() == first
    # a killed run (VQGAN stage done, no checkpoint yet) resumed with another VQGAN recipe
    shutil.rmtree(out / "checkpoint-1")
    code, _, err = run_dove(["train", "--output-dir", out, *FAST_TRAIN, "--vqgan-steps", "2", "--resume"])
    one_line_error(code, err, "train", "VQGAN stage", "vqgan_steps 1 -> 2")
    # --overwrite: the previous run's VQGAN and checkpoints are removed, then the new recipe trains
    (out / "checkpoint-9").mkdir()
    code, _, err = run_dove(["train", "--output-dir", out, *FAST_TRAIN, "--vqgan-steps", "2", "--overwrite"])
    assert code == 0, err
    assert "--overwrite: removed the previous run's" in err and "vqgan" in err
    assert not (out / "checkpoint-9").exists()
    stage = json.loads((out / "vqgan" / "dove_vqgan_stage.json").read_text())
    assert stage["vqgan_steps"] == 2


def test_report_and_export_do_not_replace_earlier_outputs_without_overwrite(inputs, tmp_path):
    out = tmp_path / "ex"
    assert run_dove(["eval", "export", "--output-dir", out, "--num-scenes", "1"])[0] == 0
    code, _, err = run_dove(["eval", "export", "--output-dir", out, "--num-scenes", "2"])
    one_line_error(code, err, "eval export", "already exported", "--overwrite")
    assert run_dove(["eval", "export", "--output-dir", out, "--num-scenes", "2", "--overwrite"])[0] == 0
    assert run_dove(["eval", "export", "--output-dir", out, "--num-scenes", "1", "--task-name", "other"])[0] == 0
    report = tmp_path / "report"
    report.mkdir()
    (report / "mine.txt").write_text("keep")
    code, _, err = run_dove(["report", "--model", inputs / "dove", "--output-dir", report, "--sections", "lengths",
                             "--data", "synthetic:2", "--no-lpips"])
    line = one_line_error(code, err, "report", "already holds files", "--overwrite")
    assert "--resume" not in line  # the report cannot resume
    code, _, err = run_dove(["report", "--model", inputs / "dove", "--output-dir", inputs / "dove" / "report",
                             "--sections", "lengths", "--data", "synthetic:2"])
    one_line_error(code, err, "report", "lies inside the input --model")


# --- writes outside the output folder -----------------------------------------------------------------------------


def test_task_names_and_image_paths_stay_inside_their_folder(inputs, tmp_path):
    out = tmp_path / "ex" / "tr"
    for name in ("../escaped", "a/b", "..", "", "x y", "1abc"):
        code, _, err = run_dove(["eval", "export", "--task-name", name, "--output-dir", out, "--num-scenes", "1"])
        one_line_error(code, err, "eval export", "--task-name", "letters, digits and _")
    assert not (tmp_path / "ex").exists()
    code, _, err = run_dove(["eval", "export", "--from-file", inputs / "vqa_escape.json", "--output-dir", out])
    one_line_error(code, err, "eval export", "vqa_escape.json", "record 0", "points outside the file's folder")


# --- silent wrong results -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, needle", [
    (["--eos-threshold", "nan"], "--eos-threshold"), (["--eos-threshold", "1.5"], "--eos-threshold"),
    (["--eos-threshold", "-1"], "--eos-threshold"), (["--min-tokens", "20", "--max-tokens", "5"], "min_tokens (20)"),
    (["--min-tokens", "-3"], "--min-tokens"), (["--max-tokens", "0"], "--max-tokens"),
    (["--max-tokens", "99"], "max_tokens (16)"), (["--batch-size", "0"], "--batch-size"),
])
def test_encode_refuses_out_of_range_length_settings(inputs, flags, needle):
    code, out, err = run_dove(["encode", inputs / "images" / "red.png", "--model", inputs / "dove", *flags])
    one_line_error(code, err, "encode", needle)
    assert out == ""


def test_unknown_or_mistyped_model_overrides_are_errors(inputs, tmp_path):
    code, _, err = run_dove(["train", "--output-dir", tmp_path / "ov", "--model-overrides", '{"hiden_size": 32}'])
    one_line_error(code, err, "train", "'hiden_size'", "valid keys", "hidden_size")
    code, _, err = run_dove(["train", "--output-dir", tmp_path / "ov", "--model-overrides", '{"max_tokens": "16"}'])
    one_line_error(code, err, "train", "max_tokens must be an integer")
    # with --init-from the checkpoint's config is used: overrides that say otherwise would be ignored
    code, _, err = run_dove(["train", "--output-dir", tmp_path / "ov", "--init-from", inputs / "dove",
                             "--model-overrides", '{"max_tokens": 8}'])
    one_line_error(code, err, "train", "max_tokens 8 (the checkpoint has 16)", "--init-from")
    assert not (tmp_path / "ov").exists()


def test_vqa_records_of_the_wrong_type_are_refused_at_export(inputs, tmp_path):
    code, _, err = run_dove(["eval", "export", "--from-file", inputs / "vqa_types.json", "--output-dir", tmp_path])
    one_line_error(code, err, "eval export", "vqa_types.json", "record 0", "'question' must be a string")
    code, _, err = run_dove(["eval", "export", "--from-file", inputs / "vqa_text_image.json", "--output-dir",
                             tmp_path])
    one_line_error(code, err, "eval export", "record 0", "text.png", "not an image")
    assert os.listdir(tmp_path) == [".dove-run.lock"]


# --- tracebacks and hangs -----------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_a_clear_error_with_a_flag_to_raise_the_limit(inputs):
    code, _, err = run_dove(["encode", inputs / "bomb.png", "--model", inputs / "dove"])
    one_line_error(code, err, "encode", "bomb.png", "20000x20000", "89,478,485", "--max-image-pixels")
    code, _, err = run_dove(["encode", inputs / "images" / "red.png", "--model", inputs / "dove",
                             "--max-image-pixels", "100"])
    one_line_error(code, err, "encode", "red.png", "limit of 100 pixels")
    assert run_dove(["encode", inputs / "images" / "red.png", "--model", inputs / "dove"])[0] == 0


@pytest.mark.parametrize("argv, needle", [
    (["train", "--learning-rate", "inf"], "--learning-rate"),
    (["train", "--learning-rate", "0"], "--learning-rate"),
    (["train", "--num-train-scenes", "0"], "--num-train-scenes"),
    (["train", "--eval-scenes", "-2"], "--eval-scenes"),
    (["train", "--data", "synthetic:0"], "synthetic:N"),
    (["llava-train", "--stage", "base", "--hidden-size", "30", "--num-attention-heads", "4"], "not divisible"),
    (["llava-train", "--stage", "base", "--learning-rate", "nan"], "--learning-rate"),
    (["llava-train", "--stage", "base", "--lora-target-modules", "q_prj"], "q_prj"),
])
def test_bad_numbers_are_refused_before_any_work(inputs, tmp_path, argv, needle):
    out = tmp_path / "out"
    started = time.monotonic()
    extra = ["--tower", inputs / "dove"] if argv[0] == "llava-train" else []
    code, _, err = run_dove([*argv, *extra, "--output-dir", out])
    one_line_error(code, err, argv[0], needle)
    assert not out.exists() and time.monotonic() - started < 30


def test_bad_data_files_are_refused_naming_the_record(inputs, tmp_path):
    code, _, err = run_dove(["train", "--query", "--data", f"vg:{inputs / 'vg' / 'images'}:{inputs / 'vg' / 'regions.json'}",
                             "--output-dir", tmp_path / "vg", *FAST_TRAIN])
    one_line_error(code, err, "train", "regions.json", "entry 0, regions[0]", "'y'")


def test_compare_refuses_bad_tasks_limits_and_wrong_model_folders_at_once(inputs, task_yaml, tmp_path):
    out = tmp_path / "cmp"
    cases = [
        (["--task", inputs / "badtask.yaml", "--grid-model", inputs / "base"], ["badtask.yaml", "not valid YAML", "line 3"]),
        (["--task", task_yaml, "--grid-model", inputs / "base", "--limit", "0"], ["--limit must be >= 1"]),
        (["--task", task_yaml, "--grid-model", inputs / "dove"], ["--grid-model", "DOVE tokenizer checkpoint"]),
        (["--task", task_yaml, "--qdove-model", inputs / "lora"], ["--qdove-model", "plain DOVE tower"]),
        (["--task", task_yaml, "--dove-model", inputs / "base"], ["--dove-model", "grid tower", "--stage lora"]),
        (["--task", task_yaml, "--dove-model", inputs / "lora", "--fixed-k", "99"], ["max_tokens (16)"]),
        (["--task", task_yaml, "--dove-model", inputs / "lora", "--fixed-k", "x"], ["--fixed-k", "'x'"]),
        (["--task", task_yaml, "--grid-model", inputs / "base", "--model-args", "bucket_windw=2"], ["bucket_windw"]),
    ]
    for flags, needles in cases:
        started = time.monotonic()
        code, _, err = run_dove(["eval", "compare", *flags, "--output-dir", out])
        one_line_error(code, err, "eval compare", *needles)
        assert time.monotonic() - started < 30
    assert not out.exists()


def test_a_wrong_weights_file_is_one_line_without_foreign_advice(inputs, task_yaml, tmp_path, capfd):
    code, _, err = run_dove(["llava-train", "--stage", "lora", "--tower", inputs / "dove", "--base-model",
                             inputs / "wrongfile", "--output-dir", tmp_path / "wf", *FAST_LLAVA[:2]])
    captured = capfd.readouterr()  # also what transformers logs to the real stderr
    line = one_line_error(code, err, "llava-train", "wrongfile", "do not fit its config.json", "another model's")
    assert "ignore_mismatched_sizes" not in line + captured.err and "LOAD REPORT" not in captured.err
    assert not (tmp_path / "wf").exists()  # refused before any work
    started = time.monotonic()
    code, _, err = run_dove(["eval", "compare", "--task", task_yaml, "--grid-model", inputs / "wrongfile",
                             "--output-dir", tmp_path / "cmp"])
    one_line_error(code, err, "eval compare", "wrongfile", "do not fit its config.json")
    assert time.monotonic() - started < 30 and not (tmp_path / "cmp").exists()
    # the loader itself (other callers) also says it in one sentence, without transformers' per-key report
    from dove_vlm.llava.saved import load_base_llava

    with pytest.raises(ValueError, match="do not fit its config.json: .* unexpected"):
        load_base_llava(str(inputs / "wrongfile"))
    assert "LOAD REPORT" not in capfd.readouterr().err


def test_unexpected_failures_keep_the_traceback_and_say_it_is_a_bug(inputs, monkeypatch):
    import dove_vlm.modeling_dove as modeling

    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(modeling.DoveModel, "from_pretrained", classmethod(broken))
    code, _, err = run_dove(["encode", inputs / "images" / "red.png", "--model", inputs / "dove"])
    assert code == 1 and "Traceback" in err and "this is a bug in dove" in err.splitlines()[-1]


# --- errors that mislead or do not name the input -----------------------------------------------------------------


def test_errors_name_the_input_and_the_real_cause(inputs, tmp_path, monkeypatch):
    code, _, err = run_dove(["encode", inputs / "images" / "red.png", "--model", "runs_dove_missing"])
    line = one_line_error(code, err, "encode", "--model runs_dove_missing", "no such file or folder")
    assert "Hub" not in line and "connect" not in line
    code, _, err = run_dove(["encode", inputs / "images" / "red.png", "--model", inputs / "listcfg"])
    one_line_error(code, err, "encode", "config.json", "holds a JSON list")
    code, _, err = run_dove(["eval", "export", "--from-file", inputs / "vqa_latin1.jsonl", "--output-dir", tmp_path])
    one_line_error(code, err, "eval export", "vqa_latin1.jsonl, line 2", "not UTF-8")
    code, _, err = run_dove(["eval", "export", "--from-file", inputs / "vqa_cut.jsonl", "--output-dir", tmp_path])
    one_line_error(code, err, "eval export", "vqa_cut.jsonl, line 3", "cut short")
    code, _, err = run_dove(["train", "--data", inputs / "ds_noimage", "--output-dir", tmp_path / "ds", *FAST_TRAIN])
    line = one_line_error(code, err, "train", "no image column", "label, text")
    assert "image_column=" not in line
    code, _, err = run_dove(["encode", inputs / "cut.png", "--model", inputs / "dove"])
    one_line_error(code, err, "encode", "cut.png", "truncated")
    import PIL.Image

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(PIL.Image, "open", denied)
    code, _, err = run_dove(["encode", inputs / "images" / "red.png", "--model", inputs / "dove"])
    line = one_line_error(code, err, "encode", "red.png", "permission denied")
    assert "corrupt" not in line


@pytest.mark.parametrize("argv, advice, not_advice", [
    (["train", "--output-dir", "{tmp}/t", *FAST_TRAIN], "--resume", None),
    (["eval", "compare", "--task", "{task}", "--grid-model", "{base}", "--output-dir", "{tmp}/c"], "reused", "--resume"),
    (["eval", "export", "--output-dir", "{tmp}/e", "--num-scenes", "1"], "interrupted", "--resume"),
])
def test_ctrl_c_advice_matches_the_command(inputs, task_yaml, tmp_path, monkeypatch, argv, advice, not_advice):
    import eval.compare as compare_module
    import eval.export as export_module
    import train_tokenizer.train as train_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupt)
    monkeypatch.setattr(compare_module, "compare", interrupt)
    monkeypatch.setattr(export_module, "export_embedded", interrupt)
    names = {"{tmp}": str(tmp_path), "{task}": str(task_yaml), "{base}": str(inputs / "base")}
    argv = [names.get(a, a).replace("{tmp}", str(tmp_path)) for a in map(str, argv)]
    code, _, err = run_dove(argv)
    assert code == 130 and advice in err and "Traceback" not in err
    assert not_advice is None or not_advice not in err


def test_demo_reruns_into_its_own_folder_but_not_into_a_foreign_one(tmp_path, monkeypatch):
    import dove_vlm.commands.demo as demo

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda output_dir, **kwargs: calls.append(output_dir) or "report")
    finished = tmp_path / "demo"
    (finished / "tokenizer").mkdir(parents=True)
    (finished / "report.md").write_text("# dove demo report")
    code, out, err = run_dove(["demo", "--output-dir", finished, "--no-llava"])
    assert code == 0 and calls == [str(finished)], err  # an earlier demo's folder: its stages are reused
    # A finished default demo (its LLaVA report and results, an LM demo's folder) is reused as well.
    for name in ("llava_report.md", "llava_results.json"):
        (finished / name).write_text("{}")
    (finished / "llava_lm_smollm2-135m-instruct.q4_1").mkdir()
    code, out, err = run_dove(["demo", "--output-dir", finished, "--no-llava"])
    assert code == 0 and calls == [str(finished)] * 2, err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    code, _, err = run_dove(["demo", "--output-dir", tmp_path / "mine"])
    one_line_error(code, err, "demo", "not a dove demo's", "thesis.tex")
    code, _, err = run_dove(["demo", "--output-dir", finished, "--jobs", "0"])
    one_line_error(code, err, "demo", "--jobs")
    assert calls == [str(finished)] * 2


def test_missing_lora_target_modules_is_an_input_error(tmp_path):
    from llava_patch.training.arguments import LlavaTrainingArguments

    with pytest.raises(ValueError, match="--lora-target-modules None: give a comma-separated subset"):
        LlavaTrainingArguments(stage="base", output_dir=str(tmp_path / "out"), tower="t", lora_target_modules=None)
