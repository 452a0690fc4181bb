"""Q-DOVE training pieces: grounding batches with 50% null queries, the query loss
`L_qry = mean_b L_rec(crop_b) + λ_o·MSE(outside every box)`, and in-box masks for the latent loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dove_vlm.data import SyntheticScenes
from dove_vlm.data.grounding import GroundingSample, synthetic_grounding

from .data import UInt8ImageDataset, materialize_scenes


class GroundingTrainingSet:
    """Images plus, per image, the (text, boxes in pixels) pairs that may query it; boxes are `None` for a query
    that names nothing in the image (its target is the whole image, like the null query's)."""

    def __init__(self, images: UInt8ImageDataset, groundings: list[list[tuple[str, torch.Tensor]]]):
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
        """Real grounding data (Visual Genome, Open Images): images through the processor, boxes mapped
        through its resize/crop (boxes cropped away entirely are dropped)."""
        from dove_vlm.data import load_image

        by_image: dict[str, list] = {}
        for sample in samples:
            by_image.setdefault(str(sample.image), []).append(sample)
        images, per_image = [], []
        for key, group in by_image.items():
            image = load_image(key) if not hasattr(group[0].image, "size") else group[0].image
            pixels = processor(image)["pixel_values"][0]
            images.append(((pixels + 1) * 127.5).round().clamp(0, 255).byte())
            entries = []
            for sample in group:
                boxes = processor.transform_boxes(sample.boxes, image.size)
                if len(boxes):
                    entries.append((sample.text, boxes))
            per_image.append(entries)
        return cls(UInt8ImageDataset(torch.stack(images)), per_image)

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
