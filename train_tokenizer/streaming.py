"""`dove train --data hf:NAME[:SPLIT]`: training batches from a `datasets` stream, for data too large to download.

Each process reads its own part (`split_dataset_by_node`), shuffled with a seeded buffer and reshuffled every
epoch; DataLoader workers each read their own shards and decode the images (undecodable rows are skipped, with
a warning). The first `held_out` decodable rows of the unshuffled stream are the evaluation images and are never
trained on (recognised by a hash of their bytes). Resumable: every batch carries its worker's position (epoch,
rows read), the loader hands batches out in the workers' round-robin order, and a resumed worker re-reads (without
decoding) up to its position, so a resumed run sees the batches of the uninterrupted one (same processes and
workers)."""

from __future__ import annotations

import warnings
from collections import deque

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dove_vlm.data import ImageLoadError
from dove_vlm.data.datasets import to_uint8
from dove_vlm.data.streaming import decode_image_value, image_key, open_image_stream

SHUFFLE_BUFFER = 1000


def _data_files(stream) -> list[str]:
    """The data files behind a stream, where `datasets` exposes them (for error messages)."""
    node, seen = getattr(stream, "_ex_iterable", None), 0
    while node is not None and seen < 20:
        files = getattr(node, "kwargs", {}).get("files")
        if files:
            flat = [f for group in files for f in (group if isinstance(group, (list, tuple)) else [group])]
            return [str(f) for f in flat]
        node, seen = getattr(node, "ex_iterable", None), seen + 1
    return []


class StreamedBatches(IterableDataset):
    """Whole batches of decoded images from one process's part of a stream, in each DataLoader worker."""

    def __init__(self, stream, column: str, processor, batch_size: int, spec: str, held_keys: set[int],
                 positions: dict[int, tuple[int, int]], rank: int):
        self.stream, self.column, self.processor, self.batch_size = stream, column, processor, batch_size
        self.spec, self.held_keys, self.positions, self.rank = spec, held_keys, positions, rank

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch, start = self.positions.get(worker, (0, 0))
        pending: list[torch.Tensor] = []
        while True:
            self.stream.set_epoch(epoch)
            rows = good = bad = held = 0
            for row in self.stream:
                rows += 1
                if rows <= start:  # resuming: rows this worker had read before (not decoded again)
                    continue
                value = row[self.column]
                if self.held_keys and image_key(value) in self.held_keys:
                    held += 1
                    continue
                try:
                    image = decode_image_value(value, f"{self.spec}: row {rows} of process {self.rank}'s part")
                except ImageLoadError as err:
                    bad += 1
                    if bad <= 3:
                        warnings.warn(f"skipping an undecodable row: {err}", stacklevel=2)
                    continue
                good += 1
                pending.append(to_uint8(self.processor(image)["pixel_values"][0]))
                if len(pending) == self.batch_size:
                    yield {"pixels": torch.stack(pending), "worker": worker, "epoch": epoch, "rows": rows}
                    pending = []
            if good == 0 and start == 0:
                files = _data_files(self.stream)
                where = f" (files: {', '.join(files[:5])}{' ...' if len(files) > 5 else ''})" if files else ""
                raise ValueError(
                    f"--data {self.spec}: the part read by process {self.rank}, DataLoader worker {worker}{where} "
                    f"holds no decodable training image (an epoch read {rows} rows: {bad} undecodable, {held} held "
                    "out for evaluation). Check that the data files are not empty and hold images, or lower "
                    "--eval-scenes / the number of processes or workers.")
            epoch, start = epoch + 1, 0


class StreamLoader:
    """An endless iterator over `StreamedBatches` through a DataLoader, handing batches out in the workers'
    round-robin order from where the previous run stopped; `state_dict()` is what a checkpoint keeps."""

    def __init__(self, batches: StreamedBatches, num_workers: int, turn: int = 0):
        self.batches, self.workers, self.turn = batches, max(1, num_workers), turn
        self.positions = dict(batches.positions)
        self.loader = DataLoader(batches, batch_size=None, num_workers=num_workers,
                                 prefetch_factor=4 if num_workers else None, pin_memory=torch.cuda.is_available())
        self.pending: dict[int, deque] = {k: deque() for k in range(self.workers)}
        self.iterator = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.iterator is None:
            self.iterator = iter(self.loader)
        while not self.pending[self.turn]:
            batch = next(self.iterator)
            self.pending[int(batch["worker"])].append(batch)
        batch = self.pending[self.turn].popleft()
        self.positions[self.turn] = (int(batch["epoch"]), int(batch["rows"]))
        self.turn = (self.turn + 1) % self.workers
        return batch

    def state_dict(self) -> dict:
        return {"num_workers": self.workers, "turn": self.turn,
                "positions": {str(k): list(v) for k, v in self.positions.items()}}


class ImageStream:
    """An `hf:` data set opened as a stream, with its held-out evaluation images."""

    def __init__(self, spec: str, stream, column: str, processor, held_out: list[torch.Tensor], held_keys: set[int]):
        self.spec, self.stream, self.column, self.processor = spec, stream, column, processor
        self.held_out, self.held_keys = held_out, held_keys

    @classmethod
    def open(cls, spec: str, processor, held_out: int = 0) -> ImageStream:
        stream, column = open_image_stream(spec)
        images, keys = [], set()
        if held_out > 0:
            for value, image in cls._decoded(stream, column, spec, held_out, set()):
                images.append(processor(image)["pixel_values"][0])
                keys.add(image_key(value))
        return cls(spec, stream, column, processor, images, keys)

    @staticmethod
    def _decoded(stream, column: str, spec: str, count: int, skip: set[int]):
        """The first `count` decodable rows of the unshuffled stream (not in `skip`), as `(value, image)`."""
        found = bad = 0
        for rows, row in enumerate(stream, 1):
            if found >= count:
                return
            value = row[column]
            if skip and image_key(value) in skip:
                continue
            try:
                image = decode_image_value(value, f"{spec}: row {rows}")
            except ImageLoadError:
                bad += 1
                continue
            found += 1
            yield value, image
        if found == 0:
            raise ValueError(f"--data {spec}: the data set holds no decodable image ({bad} undecodable rows); check "
                             "that its data files are not empty and hold images.")

    def held_out_images(self):
        return _PixelList(self.held_out) if self.held_out else None

    def first_images(self, count: int) -> torch.Tensor:
        """Up to `count` training images (the first decodable rows that are not held out)."""
        return torch.stack([self.processor(image)["pixel_values"][0]
                            for _, image in self._decoded(self.stream, self.column, self.spec, count, self.held_keys)])

    def loader(self, batch_size: int, seed: int, rank: int = 0, world: int = 1, num_workers: int = 0,
               state: dict | None = None) -> StreamLoader:
        from datasets.distributed import split_dataset_by_node

        part = split_dataset_by_node(self.stream, rank, world) if world > 1 else self.stream
        part = part.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
        workers = min(num_workers, max(1, part.num_shards)) if num_workers else 0
        if workers != num_workers:
            warnings.warn(f"--data {self.spec}: {part.num_shards} data file(s) per process, so "
                          f"{workers} DataLoader workers instead of {num_workers}.", stacklevel=2)
        positions, turn = {}, 0
        if state:
            if int(state["num_workers"]) != max(1, workers):
                raise ValueError(f"the checkpoint read --data {self.spec} with {state['num_workers']} DataLoader "
                                 f"worker(s) per process, this run with {max(1, workers)}: resume with the same "
                                 "--dataloader-num-workers (each worker reads its own files).")
            positions = {int(k): tuple(v) for k, v in state["positions"].items()}
            turn = int(state["turn"])
        batches = StreamedBatches(part, self.column, self.processor, batch_size, self.spec, self.held_keys,
                                  positions, rank)
        return StreamLoader(batches, workers, turn)


class _PixelList(torch.utils.data.Dataset):
    def __init__(self, images: list[torch.Tensor]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index]}
