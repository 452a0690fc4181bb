"""Linear probe (as in the paper): a logistic regression on mean-pooled DOVE tokens against the same probe on
mean-pooled raw VQGAN latents, with the same train/test split.

Features per image: `dove_tokens` (the kept tokens, mean-pooled: `token_dim` numbers), `dove_hidden` (the
generator's hidden states at the kept slots, mean-pooled: the input of the token head), `dove_hidden_pca` (those
reduced by PCA to the VQGAN latents' width, a control for dimension) and `vqgan_latents` (the continuous latents
mean-pooled over the grid). Each probe standardises its features and picks the inverse
regularisation C by 3-fold cross-validation on the training part only.

Data sets: `shapes` (embedded single-object scenes: `SyntheticScenes(max_objects=1)`, empty scenes dropped; the
class is the object's shape, 5 classes), `digits` (scikit-learn's 8×8 digits, 10 classes, upscaled to the model's
size) and a local `datasets` folder with an image column and a class-label column."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from dove_vlm import DoveModel
from dove_vlm.data import SHAPES, SyntheticScenes
from train_tokenizer.evaluate import scenes_to_pixels

from .images import batches

FEATURES = ("dove_tokens", "dove_hidden", "vqgan_latents")


@dataclass
class ProbeData:
    name: str
    pixels: torch.Tensor
    labels: np.ndarray
    class_names: list[str]


def shapes_probe_data(image_size: int, count: int = 600, seed: int = 0) -> ProbeData:
    scenes = [s for s in SyntheticScenes(count, image_size=image_size, seed=seed, split="test", max_objects=1)
              if s.num_objects == 1]
    labels = np.asarray([SHAPES.index(s.objects[0].shape) for s in scenes])
    return ProbeData("shapes", scenes_to_pixels(scenes), labels, list(SHAPES))


def digits_probe_data(processor, count: int | None = None) -> ProbeData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = (digits.images[:count] / 16.0 * 255).round().astype(np.uint8)  # 0..16 → 0..255
    pixels = processor([np.repeat(g[..., None], 3, axis=-1) for g in grey])["pixel_values"]
    return ProbeData("digits", pixels, digits.target[:count], [str(d) for d in range(10)])


def hf_probe_data(path: str, processor, label_column: str | None = None, count: int | None = None,
                  split: str = "test") -> ProbeData:
    """A data set saved with `datasets.save_to_disk` (a folder; a DatasetDict uses `split`, else its first split)."""
    import datasets

    from dove_vlm.data import HFImageDataset

    try:
        dataset = datasets.load_from_disk(path)
    except IndexError as err:  # a data set saved with no rows
        raise ValueError(f"the probe data set {path!r} has no images (datasets cannot load it: {err!r}).") from err
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split] if split in dataset else dataset[next(iter(dataset))]
    if len(dataset) == 0:
        raise ValueError(f"the probe data set {path!r} has no images.")
    if label_column is None:
        label_column = next((n for n, f in dataset.features.items() if isinstance(f, datasets.ClassLabel)),
                            "label" if "label" in dataset.column_names else None)
    if label_column is None or label_column not in dataset.column_names:
        raise ValueError(f"no class-label column in {path!r} (columns: {dataset.column_names}); "
                         "pass --probe-label-column.")
    if count is not None:
        dataset = dataset.select(range(min(count, len(dataset))))
    images = HFImageDataset(dataset, processor)
    pixels = torch.stack([images[i]["pixel_values"] for i in range(len(images))])
    feature = dataset.features[label_column]
    raw = list(dataset[label_column])
    names = feature.names if isinstance(feature, datasets.ClassLabel) else sorted({str(v) for v in raw})
    labels = np.asarray(raw if isinstance(feature, datasets.ClassLabel) else [names.index(str(v)) for v in raw])
    return ProbeData(path, pixels, labels, list(names))


@torch.no_grad()
def pooled_features(model: DoveModel, pixels: torch.Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The three mean-pooled feature sets of `FEATURES` for every image, from one encode pass per batch."""
    out: dict[str, list] = {name: [] for name in FEATURES}
    for rows in tqdm(batches(len(pixels), batch_size), desc="probe features", leave=False):
        enc = model.encode(pixels[rows], output_hidden_states=True)
        count = enc.lengths.clamp(min=1).unsqueeze(1).to(enc.tokens.dtype)
        out["dove_tokens"].append(enc.tokens.sum(1) / count)  # tokens past the length are zero
        out["dove_hidden"].append(enc.hidden_states.sum(1) / count)
        out["vqgan_latents"].append(enc.latents.flatten(2).mean(2))
    return {name: torch.cat(v).double().numpy() for name, v in out.items()}


def fit_probe(train_x, train_y, test_x, test_y, seed: int = 0) -> dict:
    """Standardise, choose C by 3-fold CV on the training part, fit, and score on the test part."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))
    folds = int(min(3, np.bincount(train_y).min())) if len(np.unique(train_y)) > 1 else 0
    if folds >= 2:
        search = GridSearchCV(pipeline, {"logisticregression__C": [0.01, 0.1, 1.0, 10.0, 100.0]}, cv=folds)
        search.fit(train_x, train_y)
        model, c = search.best_estimator_, search.best_params_["logisticregression__C"]
    else:
        model, c = pipeline.fit(train_x, train_y), 1.0
    return {"accuracy": float(model.score(test_x, test_y)), "train_accuracy": float(model.score(train_x, train_y)),
            "C": float(c), "dim": int(train_x.shape[1])}


def linear_probe(model: DoveModel, data: ProbeData, test_fraction: float = 0.3, seed: int = 0,
                 batch_size: int = 64) -> dict:
    """Accuracy of each feature set on one stratified split (the same split for every feature set)."""
    from sklearn.model_selection import train_test_split

    if len(data.labels) == 0:
        raise ValueError(f"the probe data set {data.name!r} has no images.")
    classes, counts = np.unique(data.labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"the probe data set {data.name!r} has a single class; a probe needs two or more.")
    features = pooled_features(model, data.pixels, batch_size)
    index = np.arange(len(data.labels))
    stratify = data.labels if counts.min() >= 2 else None
    train, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=stratify)
    results = {name: fit_probe(f[train], data.labels[train], f[test], data.labels[test], seed)
               for name, f in features.items()}
    # Control for dimension: the hidden states reduced by PCA (fitted on the training part) to the VQGAN's width.
    from sklearn.decomposition import PCA

    width = min(features["vqgan_latents"].shape[1], len(train), features["dove_hidden"].shape[1])
    reduced = PCA(width, random_state=seed).fit(features["dove_hidden"][train]).transform(features["dove_hidden"])
    results["dove_hidden_pca"] = fit_probe(reduced[train], data.labels[train], reduced[test], data.labels[test], seed)
    majority = float(np.mean(data.labels[test] == np.bincount(data.labels[train]).argmax()))
    return {"data": data.name, "num_train": len(train), "num_test": len(test), "num_classes": len(classes),
            "chance_majority": majority, "features": results,
            "dove_tokens_minus_vqgan": results["dove_tokens"]["accuracy"] - results["vqgan_latents"]["accuracy"],
            "dove_hidden_minus_vqgan": results["dove_hidden"]["accuracy"] - results["vqgan_latents"]["accuracy"]}
