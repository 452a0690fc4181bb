"""The report's configuration (light: no plotting or model imports, so the command line builds its flags from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

SECTIONS = ("quality", "lengths", "probe", "pca", "photos", "queries")


@dataclass
class ReportConfig:
    """What `run_report` runs (the `dove report` flags, one per field)."""

    model: str = field(metadata={"help": "a DOVE checkpoint folder"})
    output_dir: str = "runs/report"
    data: str = field(default="synthetic",
                      metadata={"help": "synthetic[:N], an image folder or a saved datasets folder"})
    split: str = field(default="test", metadata={"help": "split of a saved DatasetDict"})
    num_images: int = 200
    token_counts: list[int] | None = None  # default: 4, 8, 16, ... up to max_tokens
    batch_size: int = 50
    inception_weights: str | None = field(default=None, metadata={
        "help": "local InceptionV3 weights for rFID (torch-fidelity's pt_inception-2015-12-05 file); without it rFID "
                "is skipped"})
    fid_images: int = 500
    no_lpips: bool = field(default=False, metadata={"help": "skip LPIPS"})
    lpips_trunk_weights: str | None = field(default=None, metadata={
        "help": "local torchvision alexnet weights for LPIPS (default: a random trunk, noted in the report)"})
    probe_data: list[str] = field(default_factory=lambda: ["shapes", "digits"])  # or saved `datasets` folders
    probe_label_column: str | None = field(default=None,
                                           metadata={"help": "class column of --probe-data folders"})
    probe_images: int = field(default=2000, metadata={
        "help": "per probe data set (shapes: scenes drawn, single-object ones kept)"})
    query_model: str | None = field(default=None,
                                    metadata={"help": "a Q-DOVE checkpoint for the per-query section"})
    query_scenes: int = 200
    pca_images: int = 6
    sections: tuple[str, ...] = SECTIONS
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown report section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}.")
        if self.num_images < 1 or self.batch_size < 1:
            raise ValueError("--num-images and --batch-size must be >= 1.")
