"""Inputs for the command-line tests, built once per session in one folder (`inputs`): micro DOVE and Q-DOVE
checkpoints, a micro base LLaVA (2 steps), an exported task, images (good and bad) and data files (good and bad).
`run_dove` runs `main(argv)` in process under a time limit and returns (exit code, stdout, stderr)."""

import contextlib
import io
import json
import os
import signal
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image

from tests.llava.conftest import MICRO_LLAVA, _save
from tests.llava.tiny_models import spread_dove

MICRO_JSON = json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                         "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
                         "decoder_intermediate_size": 64, "max_tokens": 16, "token_dim": 4})
# `dove train` flags for a run of a few seconds.
FAST_TRAIN = ["--max-steps", "1", "--vqgan-steps", "1", "--num-train-scenes", "4", "--batch-size", "2",
              "--eval-scenes", "0", "--lpips-weight", "0", "--model-overrides", MICRO_JSON]
# `dove llava-train` flags for a run of a few seconds.
FAST_LLAVA = ["--max-steps", "1", "--num-train-scenes", "4", "--eval-scenes", "0", "--batch-size", "4",
              "--hidden-size", "32", "--num-hidden-layers", "1", "--num-attention-heads", "2",
              "--intermediate-size", "64", "--checkpoint-every", "1"]


class CallTimeout(Exception):
    """A `dove` call ran past its time limit (a hang)."""


def run_dove(argv, limit: float = 120.0):
    """`main(argv)` in this process with stdout/stderr captured and a wall-clock limit (SIGALRM)."""
    from dove_vlm.commands.cli import main

    def expire(signum, frame):
        raise CallTimeout(f"dove {' '.join(map(str, argv))} ran past {limit} s")

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


def bomb_png(path, width: int = 20000, height: int = 20000) -> None:
    """A tiny PNG file whose header says `width` x `height` (a decompression bomb to PIL's size check)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 17 : ihdr + 21] = zlib.crc32(bytes(data[ihdr : ihdr + 17])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """One folder of every input the command tests read (never written by them)."""
    return build_inputs(tmp_path_factory.mktemp("inputs"))


def build_inputs(root):
    """Write every input of the command tests into the folder `root` (a `Path`; also used by
    `benchmarks/careless_inputs.py`) and return it."""
    _save(spread_dove(query=False), root / "dove")
    _save(spread_dove(query=True), root / "qdove")
    from llava_patch.training import LlavaTrainingArguments, train_llava

    train_llava(LlavaTrainingArguments(output_dir=str(root / "base"), stage="base", tower=str(root / "dove"),
                                       max_steps=2, learning_rate=3e-3, **dict(MICRO_LLAVA, eval_scenes=0)))
    lora = {k: v for k, v in MICRO_LLAVA.items() if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                               "intermediate_size")}
    train_llava(LlavaTrainingArguments(output_dir=str(root / "lora"), stage="lora", tower=str(root / "dove"),
                                       base_model=str(root / "base"), max_steps=1, **dict(lora, eval_scenes=0)))
    from eval.compare import export_embedded

    export_embedded(root / "task", num_scenes=2, questions_per_scene=2)
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "red.png")
    Image.new("RGB", (40, 30), "blue").save(images / "blue.png")
    (root / "text.png").write_text("this is not an image")
    Image.new("RGB", (64, 64), "green").save(root / "cut.png")
    (root / "cut.png").write_bytes((root / "cut.png").read_bytes()[:60])
    bomb_png(root / "bomb.png")
    (root / "vqa.json").write_text(json.dumps([{"image": "images/red.png", "question": "what colour?",
                                                "answer": "red"}]))
    (root / "vqa_types.json").write_text(json.dumps([{"image": "images/red.png", "question": 3, "answer": ["a"]}]))
    (root / "vqa_text_image.json").write_text(json.dumps([{"image": "text.png", "question": "q?", "answer": "a"}]))
    (root / "vqa_escape.json").write_text(json.dumps([{"image": "../outside.png", "question": "q?", "answer": "a"}]))
    (root / "vqa_latin1.jsonl").write_bytes(b'{"image": "images/red.png", "question": "a?", "answer": "x"}\n'
                                            b'{"image": "images/red.png", "question": "caf\xe9?", "answer": "x"}\n')
    (root / "vqa_cut.jsonl").write_text('{"image": "images/red.png", "question": "a?", "answer": "x"}\n'
                                        '{"image": "images/red.png", "question": "b?", "answer": "x"}\n'
                                        '{"image": "images/re')
    (root / "listcfg").mkdir()
    (root / "listcfg" / "config.json").write_text("[1, 2]")
    (root / "listcfg" / "model.safetensors").write_bytes(b"")
    vg = root / "vg"
    (vg / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(vg / "images" / "1.jpg")
    (vg / "regions.json").write_text(json.dumps([{"id": 1, "regions": [
        {"image_id": 1, "phrase": "a red thing", "x": 1, "width": 10, "height": 10}]}]))
    (root / "badtask.yaml").write_text("task: t\ninclude: [unclosed\n  data: {\n")
    wrong = root / "wrongfile"  # a base LLaVA folder whose weights file is a DOVE tokenizer's
    wrong.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        if (root / "base" / name).is_file():
            (wrong / name).write_bytes((root / "base" / name).read_bytes())
    (wrong / "model.safetensors").write_bytes((root / "dove" / "model.safetensors").read_bytes())
    import datasets

    datasets.Dataset.from_dict({"label": [0, 1], "text": ["a", "b"]}).save_to_disk(str(root / "ds_noimage"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return root


@pytest.fixture(scope="session")
def task_yaml(inputs):
    return inputs / "task" / "tasks" / "dove_vqa_test.yaml"
