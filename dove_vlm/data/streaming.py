"""`hf:NAME[:SPLIT]` as a `datasets` stream: rows are read as they are needed (nothing is downloaded in full),
with the image column found by its feature type or name and kept undecoded (`{"bytes", "path"}`), so that
images are decoded where the caller wants (DataLoader workers) and a corrupt one is caught and named."""

from __future__ import annotations

import io
import zlib

from PIL import Image, UnidentifiedImageError

from .images import ImageLoadError, to_rgb

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "jpeg", "png", "pixel_values")


def parse_hf_spec(spec: str) -> tuple[str, str]:
    """`hf:NAME[:SPLIT]` → `(NAME, SPLIT)` (`train` by default)."""
    name, _, split = spec[3:].partition(":") if spec.startswith("hf:") else (spec, "", "")
    if not name:
        raise ValueError(f"--data {spec!r}: expected hf:NAME[:SPLIT], e.g. hf:ILSVRC/imagenet-1k:train.")
    return name, split or "train"


def open_image_stream(spec: str):
    """`(stream, image_column)` for `hf:NAME[:SPLIT]`: a `datasets.IterableDataset` with only the image column,
    undecoded. Raises ValueError for a data set that cannot be opened or has no image column (naming the
    columns it has)."""
    import datasets

    name, split = parse_hf_spec(spec)
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # offline, unknown name, unknown split, ...: one clear message
        raise ValueError(f"could not open the data set {name!r} (split {split!r}) as a `datasets` stream ({err}). "
                         "Offline? Pass a local folder of data files as hf:FOLDER, or save it with `save_to_disk` "
                         "and pass that folder instead.") from err
    column = find_stream_image_column(stream, spec)
    stream = stream.select_columns([column])
    if stream.features is not None:
        stream = stream.cast_column(column, datasets.Image(decode=False))
    return stream, column


def find_stream_image_column(stream, spec: str) -> str:
    """The image column of a stream: an `Image` feature, else a column named like one; the first row is read when
    the stream does not declare its features."""
    from datasets import Image as ImageFeature

    features = stream.features
    if features is None:
        try:
            first = next(iter(stream.take(1)))
        except StopIteration:
            raise ValueError(f"--data {spec}: the data set is empty (no rows); check its data files.") from None
        columns = list(first)
        found = [c for c in columns if isinstance(first[c], (Image.Image, dict)) or c in IMAGE_COLUMN_NAMES]
    else:
        columns = list(features)
        found = [c for c, f in features.items() if isinstance(f, ImageFeature)]
        found = found or [c for c in columns if c in IMAGE_COLUMN_NAMES]
    if not found:
        raise ValueError(f"--data {spec}: the data set has no image column (columns found: {', '.join(columns)}); "
                         f"use a data set with an `Image` feature or a column named one of "
                         f"{', '.join(IMAGE_COLUMN_NAMES)}.")
    return found[0]


def decode_image_value(value, name: str) -> Image.Image:
    """An undecoded image cell (`{"bytes", "path"}`, raw bytes, or a PIL image) → 8-bit RGB; ImageLoadError
    (naming `name`) when it is missing or not a readable image."""
    if isinstance(value, Image.Image):
        return to_rgb(value, name=name)
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    else:
        data, path = value, None
    if data is None and path is None:
        raise ImageLoadError(f"{name} has no image (an empty cell).")
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            image.load()
            return to_rgb(image, name=name)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageLoadError):
            raise
        raise ImageLoadError(f"{name} is not a readable image ({err}).") from err


def image_key(value) -> int:
    """A content key of an undecoded image cell (CRC-32 of its bytes, or of its path), to recognise held-out rows."""
    if isinstance(value, dict):
        data = value.get("bytes") or (value.get("path") or "").encode()
    elif isinstance(value, Image.Image):
        data = value.tobytes()
    else:
        data = bytes(value or b"")
    return zlib.crc32(data)
