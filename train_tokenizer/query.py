"""Q-DOVE training pieces: grounding data (the embedded scenes, Visual Genome, Open Images) with 50% null
queries, the query loss `L_qry = mean_b L_rec(crop_b) + λ_o·MSE(outside every box)`, and in-box masks for the
latent loss."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dove_vlm.data import SyntheticScenes, load_image
from dove_vlm.data.grounding import (
    GroundingSample,
    load_open_images,
    load_visual_genome,
    open_images_files,
    synthetic_grounding,
    visual_genome_files,
)
from dove_vlm.image_processing_dove import DoveImageProcessor

from .data import UInt8ImageDataset, is_synthetic, materialize_scenes


class LazyImages(Dataset):
    """Images read when an item is asked for (in DataLoader workers), `{"pixel_values"}` items through the
    processor: grounding data sets are far too large to hold decoded in every process."""

    def __init__(self, sources: list, processor):
        self.sources, self.processor = sources, processor

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict:
        source = self.sources[index]
        image = source if hasattr(source, "size") else load_image(source)
        return {"pixel_values": self.processor(image)["pixel_values"][0]}


class GroundingTrainingSet:
    """Images plus, per image, the (text, boxes in pixels) pairs that may query it; boxes are `None` for a query
    that names nothing in the image (its target is the whole image, like the null query's)."""

    def __init__(self, images: Dataset, groundings: list[list[tuple[str, torch.Tensor]]]):
        if len(images) != len(groundings):
            raise ValueError(f"{len(images)} images but {len(groundings)} grounding lists.")
        self.images, self.groundings = images, groundings

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def synthetic(cls, num_scenes: int, image_size: int, seed: int, split: str = "train") -> GroundingTrainingSet:
        scenes = SyntheticScenes(num_scenes, image_size=image_size, seed=seed, split=split)
        images = UInt8ImageDataset(materialize_scenes(scenes))
        per_image: list[list] = [[] for _ in range(num_scenes)]
        # Questions about absent objects are kept: Q-DOVE then learns to fall back to the whole image when the
        # query finds nothing, instead of meeting such queries only at inference (a VQA "is there a ...?").
        for sample in synthetic_grounding(scenes, unboxed=True):
            boxes = boxes_to_pixels(sample.boxes, image_size) if sample.boxes else None
            per_image[sample.meta["scene"]].append((sample.text, boxes))
        return cls(images, per_image)

    @classmethod
    def from_samples(cls, samples: list[GroundingSample], processor) -> GroundingTrainingSet:
        """Real grounding data (Visual Genome, Open Images): images read lazily through the processor, boxes
        mapped through its resize/crop (boxes cropped away entirely are dropped). An image's size comes from
        its sample (`meta["size"]`) or its file header."""
        from PIL import Image

        by_image: dict[str, list] = {}
        for sample in samples:
            by_image.setdefault(str(sample.image), []).append(sample)
        sources, per_image = [], []
        for key, group in by_image.items():
            source = group[0].image if hasattr(group[0].image, "size") else key
            size = source.size if hasattr(source, "size") else group[0].meta.get("size")
            if size is None:
                if not os.path.isfile(key):
                    raise FileNotFoundError(f"image file not found: {key} (referenced by the annotations).")
                with Image.open(key) as image:
                    size = image.size
            entries = []
            for sample in group:
                boxes = processor.transform_boxes(sample.boxes, tuple(size))
                if len(boxes):
                    entries.append((sample.text, boxes))
            sources.append(source)
            per_image.append(entries)
        if not sources:
            raise ValueError("the grounding data hold no sample with a box inside its image.")
        return cls(LazyImages(sources, processor), per_image)

    def split(self, count: int, seed: int) -> tuple[GroundingTrainingSet, Dataset | None]:
        """`(training set, held-out images)`: a seeded `min(count, len // 5)` images held out for the final
        evaluation (never trained on)."""
        count = min(count, len(self) // 5)
        if count <= 0:
            return self, None
        from torch.utils.data import Subset

        order = np.random.default_rng([seed, 0x5EED]).permutation(len(self))
        keep, held = np.sort(order[count:]).tolist(), np.sort(order[:count]).tolist()
        return GroundingTrainingSet(Subset(self.images, keep), [self.groundings[i] for i in keep]), \
            Subset(self.images, held)

    def sample_queries(self, indices: list[int], null_prob: float, seed: int, step: int):
        """One query per image (None with probability `null_prob` or when it has no grounding), seeded by
        (seed, step) so a resumed run draws the same queries. A query without boxes comes with `None` boxes: the
        whole image is its target."""
        rng = np.random.default_rng([seed, step, 17])
        queries, boxes = [], []
        for index in indices:
            options = self.groundings[index]
            if not options or rng.random() < null_prob:
                queries.append(None)
                boxes.append(None)
            else:
                text, pixel_boxes = options[int(rng.integers(0, len(options)))]
                queries.append(text)
                boxes.append(pixel_boxes)
        return queries, boxes


def boxes_to_pixels(boxes, image_size: int) -> torch.Tensor:
    """Normalised xyxy boxes → `(K, 4)` float pixel boxes (at least one pixel wide)."""
    out = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * image_size
    out[:, 2:] = torch.maximum(out[:, 2:], out[:, :2] + 1)
    return out.clamp(0, image_size)


def query_loss(rec_loss, reconstruction: torch.Tensor, target: torch.Tensor, boxes: list, outside_weight: float,
               crop_size: int) -> torch.Tensor:
    """Per-sample `L_qry` for the samples with boxes (0 where `boxes[i]` is None), shape (B,).
    Crops are resampled to `crop_size` so LPIPS works on small boxes too (plain torch: torchvision's ops are
    optional)."""
    batch = reconstruction.shape[0]
    result = torch.zeros(batch, device=reconstruction.device, dtype=reconstruction.dtype)
    rows = [i for i, b in enumerate(boxes) if b is not None]
    if not rows:
        return result
    owners, crops_rec, crops_tgt = [], [], []
    for i in rows:
        for x0, y0, x1, y1 in boxes[i].tolist():
            c0, r0 = int(np.floor(x0)), int(np.floor(y0))
            c1, r1 = max(c0 + 1, int(np.ceil(x1))), max(r0 + 1, int(np.ceil(y1)))
            for source, store in ((reconstruction, crops_rec), (target, crops_tgt)):
                store.append(F.interpolate(source[i : i + 1, :, r0:r1, c0:c1], size=(crop_size, crop_size),
                                           mode="bilinear", align_corners=False))
            owners.append(i)
    crops_rec, crops_tgt = torch.cat(crops_rec), torch.cat(crops_tgt)
    per_crop = rec_loss(crops_rec, crops_tgt).per_sample
    owner = torch.tensor(owners, device=reconstruction.device)
    in_box = torch.zeros(batch, device=per_crop.device, dtype=per_crop.dtype).index_add(0, owner, per_crop)
    counts = torch.bincount(owner, minlength=batch).clamp(min=1).to(per_crop.dtype)
    inside = box_mask(boxes, reconstruction.shape[-1], reconstruction.shape[-1]).to(reconstruction.device)
    outside = 1 - inside
    outside_mse = ((reconstruction - target).pow(2) * outside).flatten(1).sum(1) / (
        outside.flatten(1).sum(1) * reconstruction.shape[1]).clamp(min=1)
    has = torch.zeros(batch, dtype=torch.bool, device=reconstruction.device)
    has[rows] = True
    return torch.where(has, in_box / counts + outside_weight * outside_mse, result)


def box_mask(boxes: list, image_size: int, grid_size: int) -> torch.Tensor:
    """`(B, 1, g, g)` mask: 1 on grid cells that overlap a box of that sample, everything 1 when it has none."""
    masks = torch.ones(len(boxes), 1, grid_size, grid_size)
    scale = grid_size / image_size
    for i, sample_boxes in enumerate(boxes):
        if sample_boxes is None:
            continue
        masks[i].zero_()
        for x0, y0, x1, y1 in sample_boxes.tolist():
            c0, r0 = int(np.floor(x0 * scale)), int(np.floor(y0 * scale))
            c1, r1 = max(c0 + 1, int(np.ceil(x1 * scale))), max(r0 + 1, int(np.ceil(y1 * scale)))
            masks[i, :, r0:r1, c0:c1] = 1
    return masks


def build_grounding(spec: str, image_size: int, num_scenes: int, seed: int,
                    eval_images: int = 0) -> tuple[GroundingTrainingSet, Dataset | None]:
    """`(grounding training set, held-out images or None)` for `dove train --query --data spec`:
    - `synthetic[:N]`: the embedded scenes' phrases and questions (evaluated on their own test split: no hold-out);
    - `vg:ROOT` (Visual Genome's layout) or `vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON]`;
    - `oi:ROOT` (Open Images' CSV names) or `oi:IMAGE_DIR:CLASSES_CSV:BOXES_CSV[:RELATIONSHIPS_CSV[:ATTRIBUTES_CSV]]`
      (empty fields skip a file)."""
    processor = DoveImageProcessor(size=image_size)
    if is_synthetic(spec):
        count = int(spec.split(":", 1)[1]) if ":" in spec else num_scenes
        return GroundingTrainingSet.synthetic(count, image_size, seed), None
    kind, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    if kind == "vg":
        if len(parts) == 1:
            files = visual_genome_files(parts[0])
        elif len(parts) in (2, 3):
            files = {"image_dir": parts[0], "region_descriptions": parts[1] or None,
                     "question_answers": parts[2] if len(parts) == 3 and parts[2] else None, "image_data": None}
        else:
            raise ValueError(f"--data {spec!r}: expected vg:ROOT or vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON].")
        samples = load_visual_genome(files["region_descriptions"], files["image_dir"], files["question_answers"],
                                     image_data=files["image_data"])
    elif kind == "oi":
        if len(parts) == 1:
            files = open_images_files(parts[0])
        elif 3 <= len(parts) <= 5:
            parts += [""] * (5 - len(parts))
            files = {"image_dir": parts[0], "class_descriptions": parts[1], "boxes": parts[2] or None,
                     "relationships": parts[3] or None, "attributes": parts[4] or None}
        else:
            raise ValueError(f"--data {spec!r}: expected oi:ROOT or "
                             "oi:IMAGE_DIR:CLASSES_CSV:BOXES_CSV[:RELATIONSHIPS_CSV[:ATTRIBUTES_CSV]].")
        samples = load_open_images(files["class_descriptions"], files["image_dir"], files["boxes"],
                                   files["relationships"], attributes=files["attributes"])
    else:
        raise ValueError(f"--query training reads grounding data: 'synthetic[:N]', Visual Genome 'vg:ROOT' "
                         f"(or vg:IMAGE_DIR:REGIONS_JSON[:QA_JSON]) or Open Images 'oi:ROOT' (or "
                         f"oi:IMAGE_DIR:CLASSES_CSV:BOXES_CSV[:RELATIONSHIPS_CSV[:ATTRIBUTES_CSV]]), not {spec!r}.")
    if not samples:
        raise ValueError(f"--data {spec}: the annotations hold no usable (text, box) sample.")
    return GroundingTrainingSet.from_samples(samples, processor).split(eval_images, seed)
