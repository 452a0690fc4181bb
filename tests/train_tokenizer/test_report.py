"""`dove report`'s API on micro models built here (nothing downloaded): every section runs and writes its JSON and
figures; bad inputs (no images, mixed sizes, a missing Inception weights path) are handled."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dove_vlm import DoveImageProcessor
from tests.test_query_and_fast_inference import query_model  # noqa: F401 (the Q-DOVE micro model fixture)
from train_tokenizer.report import ReportConfig, format_report_summary, run_report
from train_tokenizer.report.fid import InceptionUnavailable, load_inception
from train_tokenizer.report.images import load_report_images
from train_tokenizer.report.photos import photo_lengths
from train_tokenizer.report.probe import ProbeData, digits_probe_data, hf_probe_data, linear_probe
from train_tokenizer.report.quality import evaluate_quality
from train_tokenizer.report.queries import evaluate_query_model


@pytest.fixture
def saved_model(micro_model, tmp_path):
    path = tmp_path / "model"
    micro_model.save_pretrained(path)
    DoveImageProcessor(size=micro_model.config.image_size).save_pretrained(path)
    return str(path)


def test_report_writes_every_section_and_figure(saved_model, query_model, tmp_path):  # noqa: F811 (fixture)
    query_model.save_pretrained(tmp_path / "qmodel")
    config = ReportConfig(model=saved_model, output_dir=str(tmp_path / "report"), data="synthetic", num_images=12,
                          batch_size=5, probe_data=["digits"], probe_images=60, query_model=str(tmp_path / "qmodel"),
                          query_scenes=12, inception_weights=str(tmp_path / "no-such-inception.pth"))
    report = run_report(config)
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report
    quality = report["quality"]
    assert list(quality["psnr_by_k"]) == ["4", "8", "16"] and set(quality["lpips_by_k"]) == {"4", "8", "16"}
    assert all(np.isfinite(v) for v in [*quality["psnr_by_k"].values(), *quality["lpips_by_k"].values()])
    assert quality["rfid_by_k"] is None  # missing weights: skipped, the other metrics still ran
    assert any("rFID skipped" in n and "no-such-inception.pth" in n for n in report["notes"])
    lengths = report["lengths"]
    assert sum(lengths["histogram"].values()) == 12 and -1 <= lengths["spearman_length_vs_laplacian"] <= 1
    probe = report["probe"][0]
    assert probe["num_train"] + probe["num_test"] == 60
    assert set(probe["features"]) == {"dove_tokens", "dove_hidden", "dove_hidden_pca", "vqgan_latents"}
    assert probe["features"]["dove_hidden_pca"]["dim"] == probe["features"]["vqgan_latents"]["dim"]
    assert len(report["photos"]["photos"]) >= 10 and report["queries"]["num_images"] > 0
    for name in report["figures"]:
        assert (tmp_path / "report" / name).stat().st_size > 1000
    assert {"quality_vs_tokens.png", "pca_features.png", "linear_probe.png", "photos_length_vs_complexity.png",
            "queries.png", "length_vs_complexity.png"} <= set(report["figures"])
    assert "rFID skipped" in format_report_summary(report, config.output_dir)


@torch.no_grad()
def test_quality_at_max_tokens_matches_the_full_encoding(micro_model):
    processor = DoveImageProcessor(size=32)
    images = load_report_images("synthetic:6", processor)
    result = evaluate_quality(micro_model, images, [16], batch_size=4, use_lpips=False)
    enc = micro_model.encode(images.pixels, num_tokens=16)
    recon = micro_model.decode(enc.tokens, enc.attention_mask).pixel_values
    mse = ((recon - images.pixels) / 2).pow(2).flatten(1).mean(1)
    np.testing.assert_allclose(result.evaluation.psnr_by_k[16], (10 * torch.log10(1 / mse)).numpy(), rtol=1e-4)


@pytest.fixture
def random_inception(tmp_path, monkeypatch):
    """torch-fidelity's real InceptionV3 architecture with random weights, saved as a local weights file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as patch:  # build the architecture without loading (random initialisation)
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = tmp_path / "inception.pth"
    torch.save(network.state_dict(), path)
    return str(path)


def test_rfid_with_local_inception_weights(micro_model, random_inception):
    images = load_report_images("synthetic:2", DoveImageProcessor(size=32))
    result = evaluate_quality(micro_model, images, [16], use_lpips=False, inception_weights=random_inception)
    assert np.isfinite(result.rfid_by_k[16]) and np.isfinite(result.rfid_adaptive)
    assert result.rfid_by_k[16] > 0


def test_inception_weights_errors(tmp_path):
    with pytest.raises(InceptionUnavailable, match="no Inception weights given"):
        load_inception(None)
    with pytest.raises(InceptionUnavailable, match="does not exist"):
        load_inception(str(tmp_path / "missing.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InceptionUnavailable, match="fc.weight"):
        load_inception(str(tmp_path / "other.pth"))


def test_empty_data_sets_are_clear_errors(tmp_path):
    import datasets

    processor = DoveImageProcessor(size=32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_report_images(str(tmp_path / "empty"), processor)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=features).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="has no images"):
        load_report_images(str(tmp_path / "hf"), processor)
    with pytest.raises(ValueError, match="has no images"):
        hf_probe_data(str(tmp_path / "hf"), processor)


def test_mixed_image_sizes_are_resized_to_the_model(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, size in enumerate([(40, 30), (32, 32), (100, 17), (16, 64)]):
        Image.new("RGB", size, (60 * i, 20, 200)).save(folder / f"{i}.png")
    images = load_report_images(str(folder), DoveImageProcessor(size=32))
    assert images.pixels.shape == (4, 3, 32, 32) and images.num_objects is None and len(images.laplacian) == 4


def test_probe_on_a_saved_datasets_folder_and_bad_labels(micro_model, tmp_path):
    import datasets

    processor = DoveImageProcessor(size=32)
    rng = np.random.default_rng(0)
    # class 0: dark images, class 1: bright images (any useful feature separates them)
    images = [Image.fromarray(((rng.uniform(0, 0.3, (32, 32, 3)) + 0.6 * (i % 2)) * 255).astype(np.uint8))
              for i in range(40)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "bright"])})
    datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(40)]},
                               features=features).save_to_disk(str(tmp_path / "hf"))
    data = hf_probe_data(str(tmp_path / "hf"), processor)
    assert data.class_names == ["dark", "bright"] and data.pixels.shape == (40, 3, 32, 32)
    result = linear_probe(micro_model, data)
    assert result["features"]["vqgan_latents"]["accuracy"] == 1.0  # brightness survives mean pooling
    with pytest.raises(ValueError, match="single class"):
        linear_probe(micro_model, ProbeData("one", data.pixels[:4], np.zeros(4, dtype=int), ["a"]))


def test_digits_probe_data_are_upscaled():
    data = digits_probe_data(DoveImageProcessor(size=32), count=20)
    assert data.pixels.shape == (20, 3, 32, 32) and len(data.class_names) == 10
    assert data.pixels.min() >= -1 and data.pixels.max() <= 1


def test_photos_from_scikit_image(micro_model):
    result = photo_lengths(micro_model, DoveImageProcessor(size=32), names=("moon", "camera", "grass", "not_a_photo"))
    assert [r["photo"] for r in result["photos"]] == sorted(["moon", "camera", "grass"],
                                                            key=lambda n: next(r["laplacian_model_input"]
                                                                               for r in result["photos"] if r["photo"] == n))
    assert result["skipped"] == ["not_a_photo (AttributeError)"] and result["pixels"].shape == (3, 3, 32, 32)


def test_query_section_per_kind_and_refuses_plain_dove(query_model, micro_model):  # noqa: F811 (fixture)
    out = evaluate_query_model(query_model, num_scenes=10, min_count=1)
    assert set(out["by_kind"]) <= {"phrase", "question"} and out["by_kind"]
    assert sum(g["count"] for g in out["by_kind"].values()) == out["num_images"]
    with pytest.raises(ValueError, match="plain DOVE"):
        evaluate_query_model(micro_model, num_scenes=4)


def test_report_json_is_strict():
    from train_tokenizer.report.suite import _jsonable

    assert _jsonable({1: np.float32("nan"), "b": [np.int64(3), float("inf"), (np.float64(0.5),)]}) == \
        {"1": None, "b": [3, None, [0.5]]}


def test_unknown_section():
    with pytest.raises(ValueError, match="unknown report section"):
        ReportConfig(model="x", sections=("quality", "nope"))


def test_generalization_section_on_a_tokenizer_trained_here(tmp_path):
    from tests.train_tokenizer.test_train import micro_args
    from train_tokenizer.report.generalization import TARGETS
    from train_tokenizer.train import train

    train(micro_args(tmp_path / "model", max_steps=3, checkpoint_every=3, num_train_scenes=24,
                     data_mix="wide", length_objective="source"))
    config = ReportConfig(model=str(tmp_path / "model"), output_dir=str(tmp_path / "report"),
                          sections=("generalization",), heldout_images=10, batch_size=10)
    report = run_report(config)
    section = report["generalization"]
    assert {"renderer", "photos"} <= set(section["sources"]) and section["targets"] == TARGETS
    for name, source in section["sources"].items():
        assert len(source["lengths"]) == len(source["laplacian"]) == source["num_images"]
        assert 1 <= source["distinct_lengths"] <= section["max_tokens"] and 0 <= source["share_at_max"] <= 1
        assert (tmp_path / "report" / f"generalization_{name}.png").stat().st_size > 1000
    renderer = section["sources"]["renderer"]
    assert len(renderer["objects"]) == 10 and "spearman_tokens_vs_objects" in renderer["targets_hit"]
    assert "generalization_lengths.png" in report["figures"]
    assert "held-out renderer" in format_report_summary(report, config.output_dir)
