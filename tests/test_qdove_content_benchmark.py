"""benchmarks/qdove_content.py: object colours read back from reconstructions, and absent-object queries."""

import sys
from pathlib import Path

import torch

from dove_vlm.data.synthetic import COLORS, SyntheticScenes
from tests.test_query_and_fast_inference import query_model  # noqa: F401 (the Q-DOVE micro model fixture)
from train_tokenizer.evaluate import scenes_to_pixels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import qdove_content


def test_colour_matching_reads_the_original_and_rejects_another_colour():
    scenes = [SyntheticScenes(12, image_size=32, seed=0, split="test")[i] for i in range(12)]
    pixels = scenes_to_pixels(scenes)
    checked = 0
    for image, scene in zip(pixels, scenes):
        for obj in scene.objects:
            mask = qdove_content.object_pixels(image, obj)
            if mask is None:
                continue
            checked += 1
            assert qdove_content.colour_matched(image, obj, mask)  # a perfect reconstruction
            other = qdove_content.NAMES[(qdove_content.NAMES.index(obj.color) + 1) % len(COLORS)]
            painted = qdove_content.PALETTE[qdove_content.NAMES.index(other)][:, None, None].expand_as(image)
            assert not qdove_content.colour_matched(painted, obj, mask)
    assert checked >= 10


def test_content_rows_cover_every_path_and_the_absent_questions(query_model):  # noqa: F811 (fixture)
    result = qdove_content.content_rows(query_model, num_scenes=12, seed=0)
    assert set(result["colour"]) == {"VQGAN alone", "null query", "32 tokens", "the question as the query",
                                     "the phrase as the query"}
    assert result["objects"] >= 10
    for share, length in result["colour"].values():
        assert 0 <= share <= 1 and 1 <= length <= 64
    scenes = [SyntheticScenes(12, image_size=32, seed=0, split="test")[i] for i in range(12)]
    assert result["absent"]["questions"] == sum(not q["boxes"] for s in scenes for q in s.vqa)
    assert torch.isfinite(torch.tensor([*result["absent"]["query"], *result["absent"]["null"]])).all()
