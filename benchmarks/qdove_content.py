"""What Q-DOVE's codes keep of the image, on held-out embedded scenes: the asked-about object's colour, and the
whole image for queries that name nothing in it.

1. Object colour: every object of the test scenes is decoded through the VQGAN alone, DOVE's null query, the
   full 32 tokens, and Q-DOVE with "what colour is the <shape>?" / "the <colour> <shape>" as the query; the mean
   reconstructed colour over the object's own pixels (those within a small distance of its palette colour in
   the original) is matched to the nearest palette colour. Prints the share matched right and the mean length.
2. Absent objects: the "is there a ...?" questions about objects the scene does not hold (no box), with the
   question and with the null query: mean tokens and whole-image PSNR.

    python benchmarks/qdove_content.py runs/demo/qdove [more Q-DOVE folders] --scenes 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dove_vlm.data.synthetic import COLORS, SyntheticScenes  # noqa: E402
from dove_vlm.modeling_dove import DoveModel  # noqa: E402
from train_tokenizer.evaluate import psnr, scenes_to_pixels  # noqa: E402

NAMES = list(COLORS)
PALETTE = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 127.5 - 1  # in the model's [-1, 1]


def object_pixels(original: torch.Tensor, obj) -> torch.Tensor | None:
    """Mask `(h, w)` of the pixels in `obj`'s box that hold its palette colour (anti-aliased edges and the
    background left out), or `None` when there are none."""
    x0, y0, x1, y1 = obj.box
    crop = original[:, y0:y1, x0:x1].permute(1, 2, 0)
    distance = ((crop[..., None, :] - PALETTE) ** 2).sum(-1)
    mask = (distance.argmin(-1) == NAMES.index(obj.color)) & (distance.min(-1).values < 0.05)
    return mask if mask.any() else None


def colour_matched(reconstruction: torch.Tensor, obj, mask: torch.Tensor) -> bool:
    x0, y0, x1, y1 = obj.box
    mean = reconstruction[:, y0:y1, x0:x1].permute(1, 2, 0)[mask].mean(0)
    return NAMES[int(((PALETTE - mean) ** 2).sum(1).argmin())] == obj.color


def decode(model: DoveModel, pixels: torch.Tensor, latents: torch.Tensor, **kwargs) -> tuple[torch.Tensor, float]:
    out = model.encode(pixels, latents=latents, **kwargs)
    return model.decode(out.tokens, out.attention_mask).pixel_values, float(out.lengths.float().mean())


@torch.no_grad()
def content_rows(model: DoveModel, num_scenes: int, seed: int) -> dict:
    """The figures of one model: `{"objects", "colour": {path: (share right, mean tokens)}, "absent": {...}}`."""
    model.eval()
    source = SyntheticScenes(num_scenes, image_size=model.config.image_size, seed=seed, split="test")
    scenes = [source[i] for i in range(num_scenes)]
    pixels = scenes_to_pixels(scenes)
    latents = model.encode_latents(pixels)
    objects = [(i, obj, mask) for i, scene in enumerate(scenes) for obj in scene.objects
               if (mask := object_pixels(pixels[i], obj)) is not None]
    rows = torch.tensor([i for i, _, _ in objects])
    paths = {"VQGAN alone": (model.latents_to_pixels(latents)[rows], 64.0),
             "null query": decode(model, pixels[rows], latents[rows]),
             "32 tokens": decode(model, pixels[rows], latents[rows], num_tokens=model.config.max_tokens)}
    if model.supports_queries:
        paths["the question as the query"] = decode(model, pixels[rows], latents[rows],
                                                    queries=[f"what colour is the {o.shape}?" for _, o, _ in objects])
        paths["the phrase as the query"] = decode(model, pixels[rows], latents[rows], queries=[o.phrase for _, o, _ in objects])
    result = {"objects": len(objects), "colour": {}}
    for name, (images, length) in paths.items():
        hits = sum(colour_matched(images[k], obj, mask) for k, (_, obj, mask) in enumerate(objects))
        result["colour"][name] = (hits / len(objects), length)
    absent = [(i, q["question"]) for i, s in enumerate(scenes) for q in s.vqa if not q["boxes"]]
    if model.supports_queries and absent:
        index = torch.tensor([i for i, _ in absent])
        asked, asked_len = decode(model, pixels[index], latents[index], queries=[q for _, q in absent])
        null, null_len = decode(model, pixels[index], latents[index])
        result["absent"] = {"questions": len(absent),
                            "query": (asked_len, float(psnr(asked, pixels[index]).mean())),
                            "null": (null_len, float(psnr(null, pixels[index]).mean()))}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="DOVE / Q-DOVE checkpoint folders")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    for path in ns.models:
        result = content_rows(DoveModel.from_pretrained(path), ns.scenes, ns.seed)
        print(f"\n{path}: {result['objects']} objects on {ns.scenes} test scenes")
        print("| decoded through | object colour right | tokens |\n|---|---|---|")
        for name, (share, length) in result["colour"].items():
            print(f"| {name} | {100 * share:.1f}% | {length:.1f} |")
        if "absent" in result:
            a = result["absent"]
            print(f"absent-object questions ({a['questions']}): with the question {a['query'][0]:.2f} tokens, "
                  f"{a['query'][1]:.2f} dB over the whole image; null query {a['null'][0]:.2f} tokens, "
                  f"{a['null'][1]:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
