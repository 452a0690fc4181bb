import json

import pytest

from dove_vlm.commands.cli import main


def test_unknown_preset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--preset", "huge", "--output-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_encode_reports_token_counts(micro_model, tmp_path, capsys):
    from PIL import Image

    micro_model.save_pretrained(tmp_path / "model")
    paths = []
    for i, color in enumerate(["red", "blue"]):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 30), color).save(p)
        paths.append(str(p))
    assert main(["encode", *paths, "--model", str(tmp_path / "model"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out] == paths
    assert all(1 <= r["num_tokens"] <= micro_model.config.max_tokens for r in out)


@pytest.mark.parametrize("kind", ["text", "truncated", "missing"])
def test_encode_bad_image_names_the_file(micro_model, tmp_path, capsys, kind):
    from PIL import Image

    micro_model.save_pretrained(tmp_path / "model")
    bad = tmp_path / "bad.png"
    if kind == "text":
        bad.write_text("this is not an image")
    elif kind == "truncated":
        Image.new("RGB", (64, 64), "green").save(bad)
        bad.write_bytes(bad.read_bytes()[:60])
    code = main(["encode", str(bad), "--model", str(tmp_path / "model")])
    assert code == 2
    assert "bad.png" in capsys.readouterr().err


def test_encode_missing_model(tmp_path, capsys):
    assert main(["encode", "x.png", "--model", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_train_command_line_end_to_end_at_micro_scale(tmp_path, capsys):
    code = main(["train", "--preset", "tiny", "--output-dir", str(tmp_path), "--max-steps", "2", "--vqgan-steps",
                 "1", "--num-train-scenes", "8", "--batch-size", "4", "--eval-scenes", "4", "--lpips-weight", "0"])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out scenes: 4" in out and "tokens per image" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["eval"]["num_images"] == 4


def test_encode_with_query_batches_and_plain_model_refuses_queries(micro_model, tmp_path, capsys):
    from PIL import Image

    micro_model.save_pretrained(tmp_path / "model")
    paths = []
    for i in range(5):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    assert main(["encode", *paths, "--model", str(tmp_path / "model"), "--batch-size", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5
    assert main(["encode", paths[0], "--model", str(tmp_path / "model"), "--query", "the red circle"]) == 2
    assert "trained without text queries" in capsys.readouterr().err
    assert main(["encode", paths[0], "--model", str(tmp_path / "model"), "--query", "  "]) == 0


def test_demo_runs_the_llava_stages_unless_told_not_to():
    from dove_vlm.commands.cli import build_parser

    default = build_parser().parse_args(["demo"])
    assert default.no_llava is False and default.jobs is None
    assert build_parser().parse_args(["demo", "--no-llava", "--jobs", "1", "--output-dir", "x"]).no_llava is True


def test_report_command_and_its_bad_inputs(micro_model, tmp_path, capsys):
    micro_model.save_pretrained(tmp_path / "model")
    common = ["report", "--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"), "--no-lpips"]
    assert main([*common, "--data", "synthetic:6", "--sections", "quality,lengths", "--inception-weights",
                 str(tmp_path / "missing.pth")]) == 0
    out = capsys.readouterr().out
    assert "PSNR by forced tokens" in out and "rFID skipped" in out and "missing.pth" in out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["data"]["num_images"] == 6
    (tmp_path / "empty").mkdir()
    assert main([*common, "--data", str(tmp_path / "empty"), "--sections", "quality"]) == 2
    assert "no image files" in capsys.readouterr().err
