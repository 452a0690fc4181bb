"""The training data pipeline: DataLoader batches in the deterministic step order (workers, resume, shards), `hf:`
streaming (held-out rows, resume, bad data sets), and the held-out evaluation of the user's data."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from dove_vlm.data import ImageFolderDataset
from dove_vlm.image_processing_dove import DoveImageProcessor
from tests.train_tokenizer.test_train import micro_args
from train_tokenizer import train as train_module
from train_tokenizer.data import (
    StepBatchSampler,
    UInt8ImageDataset,
    batch_indices,
    batch_loader,
    get_batch,
    to_pixel_values,
)
from train_tokenizer.draws import draw_step
from train_tokenizer.streaming import ImageStream


@pytest.fixture
def uint8_images():
    return UInt8ImageDataset(torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8,
                                           generator=torch.Generator().manual_seed(0)))


@pytest.fixture
def jpeg_folder(tmp_path):
    folder = tmp_path / "jpegs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg")
    return folder


def test_global_batch_slices_are_the_one_process_batch():
    for items in (50, 5):  # 5: fewer items than a batch, drawn with replacement
        for step in range(7):
            whole = batch_indices(items, 6, step, seed=3)
            assert batch_indices(items, 3, step, 3, 0, 2) + batch_indices(items, 3, step, 3, 1, 2) == whole
            assert batch_indices(items, 2, step, 3, 2, 3) == whole[4:]


def test_loader_keeps_the_step_order_with_workers_resumes_and_shards(uint8_images, jpeg_folder):
    expected = [get_batch(uint8_images, batch_indices(10, 4, step, 1)) for step in range(6)]
    for workers in (0, 2):
        got = [to_pixel_values(b["pixels"]) for b in batch_loader(uint8_images, 4, 1, 0, 6, num_workers=workers)]
        assert all(torch.equal(a, b) for a, b in zip(got, expected))  # bitwise today's batches
    resumed = [to_pixel_values(b["pixels"]) for b in batch_loader(uint8_images, 4, 1, start_step=4, stop_step=6)]
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected[4:]))
    halves = [batch_loader(uint8_images, 2, 1, 0, 6, rank, 2) for rank in (0, 1)]
    for step, (a, b) in enumerate(zip(*halves)):
        assert torch.equal(to_pixel_values(torch.cat([a["pixels"], b["pixels"]])), expected[step])
    # Folders: decoded in the workers, the processor's exact values.
    folder = ImageFolderDataset(jpeg_folder, DoveImageProcessor(size=32))
    batches = list(batch_loader(folder, 3, 0, 0, 2, num_workers=2))
    assert torch.equal(to_pixel_values(batches[1]["pixels"]), get_batch(folder, batch_indices(12, 3, 1, 0)))
    assert len(StepBatchSampler(12, 3, 0, 2, 5)) == 3


def test_draws_of_two_processes_are_the_one_process_draws(uint8_images):
    from train_tokenizer.query import GroundingTrainingSet

    grounding = GroundingTrainingSet.synthetic(12, 32, seed=0)

    def batch(size, rank, world):
        return next(iter(batch_loader(grounding.images, size, 0, 5, 6, rank, world)))

    one = draw_step(batch(4, 0, 1), 5, 0, 16, 0.5, grounding, 0.5, 0.5)
    two = [draw_step(batch(2, r, 2), 5, 0, 16, 0.5, grounding, 0.5, 0.5, r, 2) for r in (0, 1)]
    assert torch.equal(torch.cat([t.forced for t in two]), one.forced)
    assert torch.equal(torch.cat([t.full for t in two]), one.full)
    assert two[0].queries + two[1].queries == one.queries
    assert torch.equal(torch.cat([t.images for t in two]), one.images)


def write_parquet(folder, images, shards=2, column="image"):
    folder.mkdir(parents=True, exist_ok=True)
    per = (len(images) + shards - 1) // shards
    for s in range(shards):
        part = images[s * per : (s + 1) * per]
        table = datasets.Dataset.from_dict({column: part, "label": list(range(len(part)))})
        if column == "image":
            table = table.cast_column("image", datasets.Image())
        table.to_parquet(str(folder / f"train-{s:05d}-of-{shards:05d}.parquet"))
    return f"hf:{folder}"


def noise_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_holds_out_rows_and_resumes_where_it_stopped(tmp_path, workers):
    spec = write_parquet(tmp_path / "ds", noise_images(20))
    processor = DoveImageProcessor(size=32)
    stream = ImageStream.open(spec, processor, held_out=3)
    assert len(stream.held_out) == 3
    held = {tuple(x.flatten()[:8].tolist()) for x in stream.held_out}
    loader = stream.loader(4, seed=0, num_workers=workers)
    first = [next(loader)["pixels"] for _ in range(7)]  # more than an epoch (17 training rows): reshuffled
    trained = {tuple(to_pixel_values(p).flatten()[:8].tolist()) for b in first for p in b}
    assert not held & trained
    partial = ImageStream.open(spec, processor, held_out=3).loader(4, seed=0, num_workers=workers)
    for _ in range(4):
        next(partial)
    state = json.loads(json.dumps(partial.state_dict()))  # as a checkpoint keeps it
    resumed = ImageStream.open(spec, processor, held_out=3).loader(4, 0, num_workers=workers, state=state)
    assert all(torch.equal(next(resumed)["pixels"], first[i]) for i in range(4, 7))


def test_training_on_a_stream_and_on_a_folder_evaluates_held_out_images(tmp_path, jpeg_folder):
    spec = write_parquet(tmp_path / "ds", noise_images(24))
    metrics = train_module.train(micro_args(tmp_path / "run", data=spec, max_steps=2, eval_scenes=4,
                                            dataloader_num_workers=2))
    ev = metrics["eval"]
    assert ev["num_images"] == 4 and ev["data"] == spec and ev["spearman_length_vs_objects"] is None
    assert set(ev["reference"]) == {"vqgan", "vqgan_continuous"} and ev["reference"]["vqgan"]["psnr"] > 0
    assert "lpips_adaptive" in ev and set(ev["lpips_by_k"]) == set(ev["psnr_by_k"])
    folder = train_module.train(micro_args(tmp_path / "folder", data=str(jpeg_folder), max_steps=2, eval_scenes=6))
    assert folder["eval"]["num_images"] == 2  # a fifth of 12 images held out, never trained on
    assert (tmp_path / "folder" / "training_curves.png").is_file()


def test_stream_without_an_image_column_names_the_columns(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    datasets.Dataset.from_dict({"caption": ["a", "b"], "label": [0, 1]}).to_parquet(str(folder / "train.parquet"))
    with pytest.raises(ValueError, match=r"no image column \(columns found: caption, label\)"):
        train_module.train(micro_args(tmp_path / "run", data=f"hf:{folder}"))


def test_empty_or_all_corrupt_streams_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    datasets.Dataset.from_dict({"image": []}, features=datasets.Features({"image": datasets.Image()})) \
        .to_parquet(str(empty / "train.parquet"))
    with pytest.raises(ValueError, match="no decodable"):
        train_module.train(micro_args(tmp_path / "run", data=f"hf:{empty}", eval_scenes=0))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    rows = {"image": [{"bytes": b"not a jpeg", "path": None}] * 3}
    datasets.Dataset.from_dict(rows, features=datasets.Features({"image": datasets.Image()})) \
        .to_parquet(str(corrupt / "train.parquet"))
    with pytest.warns(UserWarning, match="undecodable"), pytest.raises(ValueError, match="no decodable"):
        train_module.train(micro_args(tmp_path / "run2", data=f"hf:{corrupt}", eval_scenes=0))


@pytest.mark.parametrize("kind", ["vg", "oi"])
def test_query_training_reads_visual_genome_and_open_images_folders(tmp_path, kind):
    from tests.data.test_grounding import _write_csv, write_visual_genome

    root = tmp_path / kind
    if kind == "vg":
        write_visual_genome(root)
    else:
        (root / "train").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "train" / f"{i}.jpg")
        _write_csv(root / "oidv7-class-descriptions-boxable.csv", None, [["/m/1", "Cat"], ["/m/2", "Table"]])
        _write_csv(root / "oidv6-attributes-description.csv", None, [["/m/w", "Wooden"]])
        _write_csv(root / "oidv6-train-annotations-bbox.csv", ["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"],
                   [[str(i), "/m/1", "0.1", "0.6", "0.2", "0.7"] for i in range(5)])
        _write_csv(root / "oidv6-train-annotations-vrd.csv",
                   ["ImageID", "LabelName1", "LabelName2", "XMin1", "XMax1", "YMin1", "YMax1", "XMin2", "XMax2",
                    "YMin2", "YMax2", "RelationshipLabel"],
                   [["0", "/m/2", "/m/w", "0.1", "0.5", "0.1", "0.5", "0.1", "0.5", "0.1", "0.5", "is"]])
    metrics = train_module.train(micro_args(tmp_path / "run", query=True, data=f"{kind}:{root}", max_steps=2,
                                            vqgan_steps=1, eval_scenes=2, dataloader_num_workers=1))
    if kind == "oi":  # 5 images: one held out for the evaluation
        assert metrics["eval"]["num_images"] == 1
    else:  # 2 images: too few to hold one out, said instead of failing after training
        assert "eval" not in metrics and "too few images" in metrics["eval_skipped"]
    assert "query_eval" not in metrics  # the held-out single-object queries are the embedded scenes' only
