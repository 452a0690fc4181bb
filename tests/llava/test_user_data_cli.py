"""End to end through the command line on the user's own data: a LLaVA-format conversation file and image folder
(written here) → `dove llava-train --stage align` and `--stage finetune` on a pretrained-style LM → a user VQA file
scored by the training run, exported with `dove eval export --from-file` and evaluated by lmms-eval."""

import json
from pathlib import Path

import pytest

from dove_vlm.commands.cli import main
from dove_vlm.llava.vqa import build_vqa_split

pytest.importorskip("lmms_eval")


def write_user_data(root: Path, scenes: int = 6, split: str = "train") -> tuple[Path, Path]:
    """A LLaVA conversation file (multi-turn samples, a caption turn, a text-only sample) over images saved in
    `root/images`, and a VQA file `{image, question, answer}` over the same kind of images."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = build_vqa_split(split, scenes, seed=3, captions=True)
    by_scene: dict[int, list[dict]] = {}
    for r in records:
        by_scene.setdefault(r["scene"], []).append(r)
    samples, vqa = [], []
    for scene, items in by_scene.items():
        name = f"{split}_{scene:03d}.png"
        items[0]["image"].save(images / name)
        turns = []
        for i, r in enumerate(items[:3]):
            turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + r["question"]},
                      {"from": "gpt", "value": r["answer"]}]
        samples.append({"id": f"scene-{scene}", "image": name, "conversations": turns})
        vqa += [{"image": f"images/{name}", "question": r["question"], "answer": r["answer"], "type": r["type"]}
                for r in items if r["type"] != "caption"][:2]
    samples.append({"id": "text-only", "conversations": [{"from": "human", "value": "say yes"},
                                                         {"from": "gpt", "value": "yes"}]})
    data = root / f"{split}.json"
    data.write_text(json.dumps(samples))
    questions = root / f"{split}_vqa.json"
    questions.write_text(json.dumps(vqa))
    return data, questions


def test_user_data_end_to_end_through_the_cli(dove_dir, micro_lm_dir, tmp_path, capsys):
    data, _ = write_user_data(tmp_path / "train")
    _, vqa = write_user_data(tmp_path / "test", scenes=3, split="test")
    common = ["--tower", dove_dir, "--data-path", str(data), "--image-folder", str(tmp_path / "train" / "images"),
              "--batch-size", "4", "--max-steps", "2", "--checkpoint-every", "2", "--eval-batch-size", "4"]
    align = tmp_path / "align"
    assert main(["llava-train", "--stage", "align", "--language-model", micro_lm_dir, "--output-dir", str(align),
                 "--eval-scenes", "0", "--learning-rate", "3e-3", *common]) == 0
    finetune = tmp_path / "finetune"
    assert main(["llava-train", "--stage", "finetune", "--base-model", str(align), "--output-dir", str(finetune),
                 "--eval-data-path", str(vqa), "--lora-r", "4", *common]) == 0
    report = capsys.readouterr().out
    assert "LLaVA finetune stage (adaptive tower)" in report and "held-out VQA accuracy" in report
    metrics = json.loads((finetune / "metrics.json").read_text())
    assert metrics["num_train_examples"] == 7 and metrics["eval"]["num_questions"] == 6
    assert metrics["train_type_counts"] == {"user": 19}  # 6 samples x 3 turns + the text-only one
    task_yaml = tmp_path / "tasks"
    assert main(["eval", "export", "--from-file", str(vqa), "--output-dir", str(task_yaml)]) == 0
    task = capsys.readouterr().out.strip().splitlines()[-1]
    out = tmp_path / "cmp"
    code = main(["eval", "compare", "--task", task, "--dove-model", str(finetune), "--modes", "adaptive",
                 "--output-dir", str(out), "--batch-size", "3", "--reference-eval", "--no-side-by-side"])
    assert code == 0, (out / "runs" / "adaptive" / "lmms_eval.log").read_text()[-3000:]
    row = json.loads((out / "comparison.json").read_text())["rows"][0]
    assert row["num_samples"] == 6 and row["accuracy_minus_reference"] == 0  # lmms-eval agrees with the training run
    # bad input on the command line: a clear message and exit code 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": 1}')
    assert main(["llava-train", "--stage", "finetune", "--base-model", str(align), "--output-dir", str(tmp_path / "x"),
                 "--tower", dove_dir, "--data-path", str(bad)]) == 2
    assert "not a list of samples" in capsys.readouterr().err
