"""A LLaVA LoRA stage on the pretrained encoder tower (`dove llava-train --tower efficientnet-lite0`)."""

import pytest

pytest.importorskip("efficientnet_lite_pytorch")

from dove_vlm.encoder_tower import EncoderTower
from tests.llava.conftest import MICRO_LLAVA


def test_llava_lora_stage_on_the_encoder_tower(base_dir, tmp_path):
    """`dove llava-train --stage lora --tower efficientnet-lite0`: the LoRA recipe, the saved stage reloads with the
    encoder tower, and its answers are the same one question at a time and batched."""
    import json

    from dove_vlm.commands.cli import main
    from dove_vlm.llava.saved import load_dove_llava
    from dove_vlm.llava.vqa import build_vqa_split, generate_answers

    out = tmp_path / "llava_encoder"
    micro = dict(MICRO_LLAVA, num_train_scenes=8, eval_scenes=2, max_steps=2, learning_rate=3e-3)
    flags = [item for key, value in micro.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    assert main(["llava-train", "--stage", "lora", "--tower", "efficientnet-lite0", "--base-model", base_dir,
                 "--output-dir", str(out), *flags]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "encoder" and metrics["eval"]["tokens_per_image_mean"] == 64
    model, processor = load_dove_llava(str(out))
    assert isinstance(model.get_base_model().model.vision_tower, EncoderTower)
    records = build_vqa_split("test", 2, seed=0)[:4]
    assert generate_answers(model, processor, records, batch_size=1) == generate_answers(model, processor, records,
                                                                                         batch_size=4)
    from dove_vlm.commands.validation import check_llava_folder

    check_llava_folder(str(out), "--encoder-model", "encoder")  # the comparison's encoder row accepts it
    with pytest.raises(ValueError, match="trained on the pretrained encoder tower; pass it as --encoder-model"):
        check_llava_folder(str(out), "--dove-model", "dove")
    pytest.importorskip("lmms_eval")
    from eval.lmms_adapter import DoveLlava

    adapter = DoveLlava(pretrained=str(out), tower_mode="encoder", batch_size=2)
    texts, lengths, _, _, _ = adapter._generate([r["image"] for r in records], [r["question"] for r in records], 3)
    assert lengths == [64] * 4 and len(texts) == 4
    with pytest.raises(ValueError, match="mode 'encoder' and no length settings"):
        DoveLlava(pretrained=str(out), tower_mode="pool-16")


def test_encoder_mode_needs_the_encoder_tower(dove_dir, tmp_path):
    from llava_patch.training import LlavaTrainingArguments

    with pytest.raises(ValueError, match="--mode encoder goes with --tower efficientnet-lite0"):
        LlavaTrainingArguments(output_dir=str(tmp_path), stage="lora", tower=dove_dir, base_model=dove_dir,
                               mode="encoder")
