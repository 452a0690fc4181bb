"""The embedded data: a deterministic generator of synthetic scenes with a known complexity.

Each scene has 0..`max_objects` shapes (kinds, colours, sizes, optional stripe/checker textures) on a plain,
gradient or textured background (`variety="classic"`: dark backgrounds; `"wide"`: also light, white and
low-saturation backgrounds, photo-like multi-scale textures, and gradients at every complexity), and records what later stages need: object boxes, referring phrases
("the red circle") and VQA pairs (colour, shape, count, existence, position). Complexity is drawn uniformly
and sets both the object count and how likely textures are, so a good variable-length tokenizer has
something to follow. Scene `i` of `(seed, split)` is always the same image: nothing is cached or downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
}
BACKGROUNDS = ("plain", "gradient", "stripes", "noise", "fractal")
VARIETIES = ("classic", "wide")
SPLITS = {"train": 0, "test": 1, "validation": 2}
_SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges at any image size


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str  # "small" | "large"
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive
    texture: str = "solid"  # "solid" | "stripes" | "checker"

    @property
    def phrase(self) -> str:
        return f"the {self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    background: str
    complexity: int
    phrases: list[dict] = field(default_factory=list)  # {"text", "boxes"}
    vqa: list[dict] = field(default_factory=list)  # {"question", "answer", "type", "boxes"}

    @property
    def num_objects(self) -> int:
        return len(self.objects)


class SyntheticScenes:
    """`len(scenes)` deterministic scenes; `scenes[i]` renders scene `i` of `(seed, split)`."""

    def __init__(self, num_scenes: int, image_size: int = 32, seed: int = 0, split: str = "train",
                 max_objects: int = 6, variety: str = "classic"):
        if num_scenes < 0:
            raise ValueError(f"num_scenes must be >= 0, got {num_scenes}.")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}.")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
        if max_objects < 0:
            raise ValueError(f"max_objects must be >= 0, got {max_objects}.")
        if variety not in VARIETIES:
            raise ValueError(f"unknown variety {variety!r}; choose one of: {', '.join(VARIETIES)}.")
        self.num_scenes, self.image_size, self.seed, self.split = num_scenes, image_size, seed, split
        self.max_objects, self.variety = max_objects, variety

    def __len__(self) -> int:
        return self.num_scenes

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Scene:
        if not -self.num_scenes <= index < self.num_scenes:
            raise IndexError(f"scene {index} out of range for {self.num_scenes} scenes.")
        index %= self.num_scenes
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        return render_scene(rng, self.image_size, self.max_objects, self.variety)


def render_scene(rng: np.random.Generator, image_size: int, max_objects: int = 6, variety: str = "classic") -> Scene:
    complexity = int(rng.integers(0, max_objects + 1))
    texture_prob = complexity / max(max_objects, 1)  # busier scenes also carry more texture
    big = image_size * _SUPERSAMPLE
    if variety == "wide":
        background, canvas = _wide_background(rng, big, texture_prob)
    else:
        background, canvas = _background(rng, big, texture_prob)
    backdrop = np.asarray(canvas, dtype=float).reshape(-1, 3).mean(0) if variety == "wide" else None
    draw = ImageDraw.Draw(canvas)
    objects: list[SceneObject] = []
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(complexity):
        obj = _place_object(rng, image_size, placed, texture_prob, backdrop)
        placed.append(obj.box)
        objects.append(obj)
        _draw_object(draw, obj, _SUPERSAMPLE)
    image = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    scene = Scene(image=image, objects=objects, background=background, complexity=complexity)
    scene.phrases = _phrases(objects)
    scene.vqa = _questions(rng, objects, image_size)
    return scene


def _background(rng: np.random.Generator, size: int, texture_prob: float) -> tuple[str, Image.Image]:
    base = rng.integers(20, 110, 3)  # dark-ish so that every object colour stands out
    if rng.random() >= texture_prob:
        return "plain", Image.new("RGB", (size, size), tuple(int(c) for c in base))
    kind = BACKGROUNDS[1 + int(rng.integers(0, 3))]
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == "gradient":
        other = rng.integers(20, 110, 3)
        angle = rng.random() * np.pi
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        pixels = base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]
    elif kind == "stripes":
        period = rng.uniform(0.08, 0.25)
        angle = rng.random() * np.pi
        wave = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        pixels = base[None, None] + 35 * wave[..., None]
    else:  # low-frequency noise: upsampled random grid
        cells = int(rng.integers(4, 9))
        grid = rng.normal(0, 30, (cells, cells, 3))
        noise = np.asarray(Image.fromarray(np.uint8(np.clip(grid + 128, 0, 255))).resize((size, size), Image.Resampling.BICUBIC), float) - 128
        pixels = base[None, None] + noise
    return kind, Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))


def _wide_background(rng: np.random.Generator, size: int, texture_prob: float) -> tuple[str, Image.Image]:
    """The `wide` variety's background: a dark, light, white or low-saturation base; a gradient (at any
    complexity: a smooth, cheap-to-code backdrop), or with `texture_prob` stripes, noise or a photo-like
    multi-scale (1/f) texture."""
    tone = rng.random()
    if tone < 0.3:
        base = rng.integers(20, 110, 3)
    elif tone < 0.6:
        base = rng.integers(170, 250, 3)
    elif tone < 0.75:
        base = np.full(3, int(rng.integers(235, 256)))
    else:  # low saturation: a grey level with a slight tint
        base = int(rng.integers(40, 220)) + rng.integers(-12, 13, 3)
    base = np.clip(base, 0, 255)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if rng.random() >= texture_prob:
        if rng.random() < 0.6:
            return "plain", Image.new("RGB", (size, size), tuple(int(c) for c in base))
        other = np.clip(base + rng.integers(-70, 71, 3), 0, 255)
        angle = rng.random() * 2 * np.pi
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        pixels = base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]
        return "gradient", Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))
    kind = ("stripes", "noise", "fractal")[int(rng.integers(0, 3))]
    sign = -1.0 if base.mean() > 128 else 1.0  # texture toward mid-grey so that it never clips away
    if kind == "stripes":
        period = rng.uniform(0.05, 0.25)
        angle = rng.random() * np.pi
        wave = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        pixels = base[None, None] + sign * rng.uniform(15, 40) * (wave[..., None] + 1)
    else:
        octaves = (4, 8) if kind == "noise" else (4, 8, 16, 32)
        field = np.zeros((size, size))
        for cells in octaves:  # amplitude ~ 1/frequency: the spectrum of natural images
            grid = rng.normal(0, 1, (cells, cells)).astype(np.float32)
            up = np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC))
            field += up * (4 / cells)
        field = (field - field.mean()) / max(field.std(), 1e-6)
        tint = 1 + rng.uniform(-0.3, 0.3, 3) * (kind == "fractal")
        pixels = base[None, None] + rng.uniform(12, 35) * field[..., None] * tint[None, None]
    return kind, Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))


def _contrasting_colour(rng: np.random.Generator, backdrop: np.ndarray | None) -> str:
    """An object colour; against a `backdrop` mean colour, one that stands out from it (> 90 apart in RGB)."""
    names = list(COLORS)
    if backdrop is not None:
        far = [n for n in names if np.linalg.norm(np.asarray(COLORS[n], float) - backdrop) > 90]
        names = far or names
    return names[int(rng.integers(0, len(names)))]


def _place_object(rng: np.random.Generator, image_size: int, placed: list, texture_prob: float,
                  backdrop: np.ndarray | None = None) -> SceneObject:
    size_name = "large" if rng.random() < 0.5 else "small"
    frac = rng.uniform(0.28, 0.38) if size_name == "large" else rng.uniform(0.16, 0.24)
    side = max(4, int(round(frac * image_size)))
    best, best_overlap = None, None
    for _ in range(20):  # rejection sampling: keep the least-overlapping of a few tries
        x0 = int(rng.integers(0, image_size - side + 1))
        y0 = int(rng.integers(0, image_size - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        overlap = sum(_intersection(box, other) for other in placed)
        if best is None or overlap < best_overlap:
            best, best_overlap = box, overlap
        if overlap == 0:
            break
    texture = "solid"
    if rng.random() < texture_prob:
        texture = "stripes" if rng.random() < 0.5 else "checker"
    return SceneObject(
        shape=SHAPES[int(rng.integers(0, len(SHAPES)))],
        color=_contrasting_colour(rng, backdrop),
        size=size_name,
        box=best,
        texture=texture,
    )


def _intersection(a, b) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: int) -> None:
    x0, y0, x1, y1 = (v * scale for v in obj.box)
    x1, y1 = x1 - 1, y1 - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    color = COLORS[obj.color]
    if obj.shape == "circle":
        polygons = None
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif obj.shape == "square":
        polygons = None
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif obj.shape == "triangle":
        polygons = [(cx, y0), (x1, y1), (x0, y1)]
    elif obj.shape == "diamond":
        polygons = [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    else:  # cross
        w = (x1 - x0) / 6
        draw.rectangle((cx - w, y0, cx + w, y1), fill=color)
        draw.rectangle((x0, cy - w, x1, cy + w), fill=color)
        polygons = None
    if polygons:
        draw.polygon(polygons, fill=color)
    if obj.texture == "solid":
        return
    # Texture: darker stripes / checks clipped to the object's own pixels via a mask of its shape.
    dark = tuple(int(c * 0.45) for c in color)
    period = max(2, int((x1 - x0) / 4))
    mask = Image.new("L", draw.im.size, 0)
    mdraw = ImageDraw.Draw(mask)
    if obj.shape == "circle":
        mdraw.ellipse((x0, y0, x1, y1), fill=255)
    elif obj.shape in ("square",):
        mdraw.rectangle((x0, y0, x1, y1), fill=255)
    elif obj.shape == "cross":
        w = (x1 - x0) / 6
        mdraw.rectangle((cx - w, y0, cx + w, y1), fill=255)
        mdraw.rectangle((x0, cy - w, x1, cy + w), fill=255)
    else:
        mdraw.polygon(polygons, fill=255)
    pattern = Image.new("L", draw.im.size, 0)
    pdraw = ImageDraw.Draw(pattern)
    for i, start in enumerate(range(int(x0), int(x1) + 1, period)):
        if obj.texture == "stripes":
            if i % 2 == 0:
                pdraw.rectangle((start, y0, start + period - 1, y1), fill=255)
        else:
            for j, row in enumerate(range(int(y0), int(y1) + 1, period)):
                if (i + j) % 2 == 0:
                    pdraw.rectangle((start, row, start + period - 1, row + period - 1), fill=255)
    combined = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(pattern)))
    draw._image.paste(Image.new("RGB", draw.im.size, dark), (0, 0), combined)


def _phrases(objects: list[SceneObject]) -> list[dict]:
    """Referring phrases; a phrase shared by several objects refers to all of their boxes."""
    by_text: dict[str, list] = {}
    for obj in objects:
        by_text.setdefault(obj.phrase, []).append(list(obj.box))
        by_text.setdefault(f"the {obj.shape}", []).append(list(obj.box))
    return [{"text": text, "boxes": boxes} for text, boxes in by_text.items()]


def _questions(rng: np.random.Generator, objects: list[SceneObject], image_size: int) -> list[dict]:
    qa: list[dict] = [{"question": "how many objects are there?", "answer": str(len(objects)),
                       "type": "count", "boxes": [list(o.box) for o in objects]}]
    shape_counts: dict[str, int] = {}
    for obj in objects:
        shape_counts[obj.shape] = shape_counts.get(obj.shape, 0) + 1
    for obj in objects:
        if shape_counts[obj.shape] == 1:  # unambiguous referent
            qa.append({"question": f"what colour is the {obj.shape}?", "answer": obj.color, "type": "colour",
                       "boxes": [list(obj.box)]})
            cx = obj.center[0]
            side = "left" if cx < image_size / 2 else "right"
            qa.append({"question": f"is the {obj.shape} on the left or the right?", "answer": side,
                       "type": "position", "boxes": [list(obj.box)]})
        if sum(o.color == obj.color for o in objects) == 1:
            qa.append({"question": f"what shape is the {obj.color} object?", "answer": obj.shape, "type": "shape",
                       "boxes": [list(obj.box)]})
    # Existence: one present and one absent colour/shape pair, drawn deterministically.
    present = {(o.color, o.shape) for o in objects}
    if objects:
        obj = objects[int(rng.integers(0, len(objects)))]
        qa.append({"question": f"is there a {obj.color} {obj.shape}?", "answer": "yes", "type": "existence",
                   "boxes": [list(o.box) for o in objects if (o.color, o.shape) == (obj.color, obj.shape)]})
    for _ in range(10):
        pair = (list(COLORS)[int(rng.integers(0, len(COLORS)))], SHAPES[int(rng.integers(0, len(SHAPES)))])
        if pair not in present:
            qa.append({"question": f"is there a {pair[0]} {pair[1]}?", "answer": "no", "type": "existence",
                       "boxes": []})
            break
    # Dedupe identical questions (two same-colour objects produce the same text).
    seen, unique = set(), []
    for item in qa:
        if item["question"] not in seen:
            seen.add(item["question"])
            unique.append(item)
    return unique
