"""A second scene renderer for evaluation only, sharing no code with the embedded generator (`synthetic.py`): other
shapes (ellipses, rings, stars, hexagons, bars), other palettes (pastel, earth, neon, grey), a wider range of
sizes, light and dark backgrounds (plain or a soft gradient), and 0-8 objects. Drawn with `skimage.draw` at 4x and
downsampled (anti-aliased). Scene `i` of a seed is always the same image; each records how many objects it holds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage import draw

HELDOUT_SHAPES = ("ellipse", "ring", "star", "hexagon", "bar")
PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "pastel": ((250, 180, 190), (180, 220, 250), (200, 240, 190), (250, 230, 170), (220, 200, 250)),
    "earth": ((120, 80, 40), (90, 110, 50), (170, 120, 70), (60, 70, 60), (150, 60, 40)),
    "neon": ((255, 20, 150), (20, 255, 120), (255, 240, 0), (0, 200, 255), (255, 110, 0)),
    "grey": ((30, 30, 30), (90, 90, 90), (150, 150, 150), (210, 210, 210), (250, 250, 250)),
}
MAX_HELDOUT_OBJECTS = 8
_SCALE = 4


@dataclass
class RenderedScene:
    image: Image.Image
    num_objects: int
    background: str  # "light" | "dark"
    palette: str
    labels: np.ndarray  # (H, W) int: 0 background, i for a pixel that object i (1-based) touches


def _polygon(cx: float, cy: float, radius: float, points: int, inner: float | None, turn: float):
    """Vertices of a regular polygon (or a star, with an `inner` radius ratio) around (cx, cy)."""
    count = points * (2 if inner else 1)
    angles = turn + np.arange(count) * 2 * np.pi / count
    radii = np.where(np.arange(count) % 2 == 1, radius * inner, radius) if inner else np.full(count, radius)
    return cy + radii * np.sin(angles), cx + radii * np.cos(angles)


def _shape_pixels(shape: str, cx: float, cy: float, radius: float, turn: float, canvas: int):
    """`(rows, cols)` of a shape's pixels on a `canvas`-sized square."""
    dims = (canvas, canvas)
    if shape == "ellipse":
        return draw.ellipse(cy, cx, radius, radius * 0.6, shape=dims, rotation=turn)
    if shape == "ring":
        rows, cols = draw.disk((cy, cx), radius, shape=dims)
        keep = (rows - cy) ** 2 + (cols - cx) ** 2 >= (radius * 0.55) ** 2
        return rows[keep], cols[keep]
    if shape == "star":
        return draw.polygon(*_polygon(cx, cy, radius, 5, 0.45, turn), shape=dims)
    if shape == "hexagon":
        return draw.polygon(*_polygon(cx, cy, radius, 6, None, turn), shape=dims)
    # bar: a rotated thin rectangle
    along, across = np.array([np.cos(turn), np.sin(turn)]), np.array([-np.sin(turn), np.cos(turn)])
    corners = [np.array([cx, cy]) + a * radius * along + b * radius * 0.3 * across
               for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    return draw.polygon([c[1] for c in corners], [c[0] for c in corners], shape=dims)


def render_heldout_scene(rng: np.random.Generator, image_size: int) -> RenderedScene:
    canvas = image_size * _SCALE
    light = bool(rng.random() < 0.5)
    level = rng.uniform(200, 250) if light else rng.uniform(5, 60)
    top = np.clip(level + rng.normal(0, 12, 3), 0, 255)
    bottom = np.clip(top + (rng.uniform(-40, 40) if rng.random() < 0.4 else 0), 0, 255)
    ramp = np.linspace(0, 1, canvas)[:, None, None]
    pixels = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (canvas, canvas, 3)).copy()
    usable = {name: [c for c in colours if abs(np.mean(c) - level) > 60] for name, colours in PALETTES.items()}
    usable = {name: colours for name, colours in usable.items() if colours}  # e.g. no pastel on a light ground
    palette = list(usable)[int(rng.integers(0, len(usable)))]
    colours = usable[palette]
    count = int(rng.integers(0, MAX_HELDOUT_OBJECTS + 1))
    taken = np.zeros((canvas, canvas), dtype=np.int64)
    drawn = 0
    for _ in range(count):
        for _attempt in range(30):  # keep objects apart so that the count is what the eye sees
            radius = rng.uniform(0.06, 0.2) * canvas
            cx, cy = rng.uniform(radius, canvas - radius, 2)
            shape = HELDOUT_SHAPES[int(rng.integers(0, len(HELDOUT_SHAPES)))]
            rows, cols = _shape_pixels(shape, cx, cy, radius, rng.uniform(0, np.pi), canvas)
            if len(rows) and not taken[rows, cols].any():
                break
        else:
            continue
        drawn += 1
        taken[rows, cols] = drawn
        pixels[rows, cols] = colours[int(rng.integers(0, len(colours)))]
    image = Image.fromarray(np.uint8(pixels.round())).resize((image_size, image_size), Image.Resampling.BOX)
    labels = taken.reshape(image_size, _SCALE, image_size, _SCALE).max(axis=(1, 3))
    return RenderedScene(image, drawn, "light" if light else "dark", palette, labels)


class HeldOutScenes:
    """`len(scenes)` deterministic scenes of this renderer; `scenes[i]` is scene `i` of `seed`."""

    def __init__(self, num_scenes: int, image_size: int = 32, seed: int = 0):
        if num_scenes < 0 or image_size < 8:
            raise ValueError(f"need num_scenes >= 0 and image_size >= 8, got {num_scenes} and {image_size}.")
        self.num_scenes, self.image_size, self.seed = num_scenes, image_size, seed

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> RenderedScene:
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"scene {index} out of range for {self.num_scenes} scenes.")
        return render_heldout_scene(np.random.default_rng([self.seed, 0x4E1D, index]), self.image_size)
