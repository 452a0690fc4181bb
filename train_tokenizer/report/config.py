"""The report's configuration (light: no plotting or model imports, so the command line builds its flags from it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dove_vlm.checks import check_int, check_seed, synthetic_count

SECTIONS = ("quality", "lengths", "probe", "pca", "photos", "generalization", "queries")


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
    heldout_images: int = field(default=96, metadata={
        "help": "generalization section: renderer scenes and held-out photo crops (foolbox: all its samples)"})
    sections: tuple[str, ...] = SECTIONS
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown report section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}.")
        if not self.sections:
            raise ValueError(f"--sections is empty; choose from {', '.join(SECTIONS)}.")
        for name in ("num_images", "batch_size", "fid_images", "probe_images", "query_scenes", "pca_images",
                     "heldout_images"):
            check_int(name, getattr(self, name), 1)
        check_seed(self.seed)
        if self.token_counts is not None:
            if not self.token_counts or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                            for k in self.token_counts):
                raise ValueError(f"--token-counts must be whole numbers >= 1, got {self.token_counts}.")
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError("--data must be synthetic[:N], an image folder or a saved datasets folder.")
        if self.data == "synthetic" or self.data.startswith("synthetic:"):
            synthetic_count(self.data)

    def inputs(self) -> dict[str, str | None]:
        """`{flag: path}` of everything the report reads (for the output-folder checks)."""
        data = None if self.data == "synthetic" or self.data.startswith(("synthetic:", "hf:")) else self.data
        found = {"--model": self.model, "--query-model": self.query_model, "--data": data,
                 "--inception-weights": self.inception_weights, "--lpips-trunk-weights": self.lpips_trunk_weights}
        for i, spec in enumerate(self.probe_data):
            if spec not in ("shapes", "digits"):
                found[f"--probe-data ({spec})"] = spec
        return found

    def check_inputs(self) -> None:
        """The inputs exist and are of the right kind, before any work: DOVE checkpoint folders (`--query-model` a
        Q-DOVE one), an existing data folder with images, existing weight files, known probe data."""
        from dove_vlm.checkpoints import check_checkpoint_dir, check_source, model_kind, supports_queries
        from dove_vlm.data import list_image_files

        for name, path in (("--model", self.model), ("--query-model", self.query_model)):
            if path is None:
                continue
            check_source(path, name, "a DOVE checkpoint folder (`dove train` output)")
            if os.path.exists(path):
                if model_kind(path) != "dove":
                    raise ValueError(f"{name} {path} is not a DOVE checkpoint (its config.json has no model_type "
                                     "'dove'); pass a folder written by `dove train`.")
                check_checkpoint_dir(path)
        if self.query_model and os.path.exists(self.query_model) and not supports_queries(self.query_model):
            raise ValueError(f"--query-model {self.query_model} is a plain DOVE model; pass a Q-DOVE checkpoint "
                             "(`dove train --query`).")
        if self.lpips_trunk_weights and not os.path.isfile(self.lpips_trunk_weights):
            raise FileNotFoundError(f"--lpips-trunk-weights {self.lpips_trunk_weights}: no such file.")
        data = self.inputs()["--data"]
        if data is not None and not self.data.startswith("hf:") and {"quality", "lengths", "pca"} & set(self.sections):
            if not os.path.isdir(data):
                raise FileNotFoundError(f"--data {data}: no such folder (pass synthetic[:N], an image folder or a saved "
                                        "datasets folder).")
            saved = os.path.isfile(os.path.join(data, "dataset_info.json")) or \
                os.path.isfile(os.path.join(data, "dataset_dict.json"))
            if not saved and not list_image_files(data):
                raise ValueError(f"no image files under {data} (looked for .png, .jpg, ...).")
        if "probe" in self.sections:
            for spec in self.probe_data:
                if spec not in ("shapes", "digits") and not os.path.isdir(spec):
                    raise FileNotFoundError(f"--probe-data {spec}: neither shapes, digits nor a saved datasets folder.")
