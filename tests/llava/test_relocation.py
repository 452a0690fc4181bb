"""Trained folders work when moved and from any working directory: a demo-shaped folder (base LLaVA, a LoRA
stage on it, an exported lmms-eval task) is moved elsewhere and evaluated through lmms-eval from another directory;
a base model that is really gone is an error naming where it was looked for."""

import json
import shutil
from pathlib import Path

import pytest

from dove_vlm.llava.saved import LORA_INFO_FILE, load_llava_lora
from llava_patch.training import LlavaTrainingArguments, train_llava
from tests.llava.conftest import MICRO_LLAVA


@pytest.fixture(scope="module")
def demo_folder(dove_dir, base_dir, tmp_path_factory):
    """`runs/demo`-shaped: `llava_base/`, `llava_dove/` (LoRA on it, trained from a relative working directory)."""
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(base_dir, root / "llava_base")
    train_llava(LlavaTrainingArguments(output_dir=str(root / "llava_dove"), stage="lora", tower=dove_dir,
                                       base_model=str(root / "llava_base"),
                                       **dict(MICRO_LLAVA, max_steps=2, lora_r=4, lora_alpha=8, eval_scenes=0)))
    return root


def test_saved_paths_are_relative_and_absolute(demo_folder):
    info = json.loads((demo_folder / "llava_dove" / LORA_INFO_FILE).read_text())
    assert info["base_model"]["relative"] == "../llava_base"
    assert info["base_model"]["absolute"] == str((demo_folder / "llava_base").resolve())
    assert info["tower_settings"]["mode"] == "adaptive"


def test_moved_folder_evaluates_from_another_directory(demo_folder, tmp_path, monkeypatch):
    pytest.importorskip("lmms_eval")
    from dove_vlm.commands.cli import main
    from eval.compare import export_embedded

    export_embedded(demo_folder / "eval_data", num_scenes=2, questions_per_scene=1)
    moved = tmp_path / "elsewhere" / "demo_copy"
    shutil.copytree(demo_folder, moved)
    shutil.rmtree(demo_folder / "eval_data")  # the task's original images and data are gone
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # The copy's own base model must be found through the relative path: its recorded absolute one is made void.
    info_file = moved / "llava_dove" / LORA_INFO_FILE
    info = json.loads(info_file.read_text())
    info["base_model"]["absolute"] = str(tmp_path / "gone")
    info_file.write_text(json.dumps(info))
    code = main(["eval", "compare", "--task", "../elsewhere/demo_copy/eval_data/tasks/dove_vqa_test.yaml",
                 "--dove-model", "../elsewhere/demo_copy/llava_dove", "--modes", "adaptive", "--limit", "2",
                 "--batch-size", "2", "--no-side-by-side", "--output-dir", "cmp"])
    log = elsewhere / "cmp" / "runs" / "adaptive" / "lmms_eval.log"
    assert code == 0, log.read_text()[-3000:] if log.is_file() else "no lmms-eval log"
    row = json.loads((elsewhere / "cmp" / "comparison.json").read_text())["rows"][0]
    assert row["num_samples"] == 2 and row["tokens_per_image_mean"] >= 1
    assert "reference_accuracy" not in row  # the model was not scored on these questions at training time


def test_moved_lora_alone_uses_the_recorded_absolute_base(demo_folder, tmp_path):
    alone = tmp_path / "lora_alone"
    shutil.copytree(demo_folder / "llava_dove", alone)
    model, _ = load_llava_lora(alone)
    assert model is not None


def test_missing_base_model_names_where_it_looked(demo_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_folder / "llava_dove", copy / "llava_dove")
    info_file = copy / "llava_dove" / LORA_INFO_FILE
    info = json.loads(info_file.read_text())
    info["base_model"]["absolute"] = str(tmp_path / "nowhere" / "llava_base")
    info_file.write_text(json.dumps(info))
    with pytest.raises(FileNotFoundError) as err:
        load_llava_lora(copy / "llava_dove")
    message = str(err.value)
    assert str(copy / "llava_dove" / "../llava_base") in message and str(tmp_path / "nowhere") in message
    assert "base_model=" in message
    shutil.rmtree(copy / "llava_dove" / "tower")
    shutil.copytree(demo_folder / "llava_base", copy / "llava_base")
    with pytest.raises(FileNotFoundError, match="tower .* is missing"):
        load_llava_lora(copy / "llava_dove")
