"""rFID: Fréchet distance between Inception features of the inputs and of their reconstructions.

The Inception network is torch-fidelity's `FeatureExtractorInceptionV3` (the TensorFlow-FID port that torchmetrics
also uses); its weights come only from a local file (torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`
or any state dict of that architecture). Nothing is downloaded: without a readable file, rFID is skipped with a
message and the other metrics still run."""

from __future__ import annotations

import os

import numpy as np
import torch

FEATURE = "2048"  # the pool3 features FID is defined on


class InceptionUnavailable(RuntimeError):
    """rFID cannot run; the message says why and what to pass."""


def load_inception(weights_path: str | None):
    """torch-fidelity's InceptionV3 with the weights in `weights_path` (a local file), in eval mode.

    The file is first read with `torch.load(weights_only=True)`, so a pickle that holds more than tensors is
    refused before torch-fidelity loads it."""
    if not weights_path:
        raise InceptionUnavailable("no Inception weights given (--inception-weights PATH to a local torch-fidelity "
                                   "pt_inception-2015-12-05 file); nothing is downloaded.")
    if not os.path.isfile(weights_path):
        raise InceptionUnavailable(f"the Inception weights file {weights_path!r} does not exist.")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or a pickle with code in it
        raise InceptionUnavailable(f"{weights_path!r} is not a plain torch state dict ({err}).") from err
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise InceptionUnavailable(f"{weights_path!r} does not hold InceptionV3 weights (no 'fc.weight').")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE], feature_extractor_weights_path=weights_path)
    except RuntimeError as err:  # keys or shapes that do not fit the architecture
        raise InceptionUnavailable(f"{weights_path!r} does not fit torch-fidelity's InceptionV3 ({err}).") from err


@torch.no_grad()
def inception_features(inception, pixels: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Pool3 features `(N, 2048)` of images `(N, 3, H, W)` in [-1, 1] (turned into the uint8 the network takes;
    it resizes to 299 px itself)."""
    out = []
    for start in range(0, len(pixels), batch_size):
        uint8 = ((pixels[start : start + batch_size].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out.append(inception(uint8)[0].double().cpu())
    return torch.cat(out).numpy()


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets, through torch-fidelity's statistics and distance."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (real, fake)]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)["frechet_inception_distance"])
