"""Loading pretrained parts into a `DoveModel`: the VQGAN (diffusers `VQModel`, e.g. aMUSEd's `vqvae` subfolder)
and the generator (a Pythia / GPTNeoX checkpoint). Sources are local folders or hub ids; offline, hub ids fail
with the hub's own error."""

from __future__ import annotations

import os

import torch
from diffusers import VQModel
from transformers import GPTNeoXModel

from .modeling_dove import DoveModel


def _check_source(source: str | os.PathLike) -> str:
    """A local path that exists, or something shaped like a hub id (`org/name`); anything else is an error."""
    source = os.path.expanduser(str(source))
    if os.path.exists(source):
        return source
    parts = source.split("/")
    if len(parts) <= 2 and all(parts) and not source.startswith("."):
        return source
    raise FileNotFoundError(f"pretrained source {source!r} does not exist; pass an existing folder or a hub id.")


def _safe_load(cls, source: str, **kwargs):
    """`cls.from_pretrained` from safetensors only (a `.bin` is never unpickled), with clear errors."""
    try:
        return cls.from_pretrained(source, use_safetensors=True, **kwargs)
    except Exception as err:  # OSError/EnvironmentError for missing files, SafetensorError for corrupt ones
        if not (isinstance(err, (OSError, ValueError)) or type(err).__name__ == "SafetensorError"):
            raise
        raise ValueError(f"cannot load {cls.__name__} weights from {source!r} ({type(err).__name__}: {str(err)[:300]}); "
                         "only safetensors weights are read — convert a .bin checkpoint to safetensors first, or "
                         "re-download a truncated file.") from err


def load_vqgan(model: DoveModel, source: str | os.PathLike, subfolder: str | None = None) -> DoveModel:
    """Copy a pretrained `VQModel` into `model.vqgan`. With `subfolder=None`, a `vqvae/` subfolder (aMUSEd
    layout) is used when the source has one. The VQGAN's architecture must match `model.config.vqgan_config`."""
    source = _check_source(source)
    if subfolder is None and os.path.isdir(os.path.join(source, "vqvae")):
        subfolder = "vqvae"
    theirs = _safe_load(VQModel, source, subfolder=subfolder).state_dict()
    ours = model.vqgan.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours or theirs[k].shape != ours[k].shape]
    if missing or unexpected:
        raise ValueError(
            f"the VQGAN at {source!r} does not match this model's vqgan_config (missing {missing[:5]}, "
            f"unexpected or reshaped {unexpected[:5]}); build the DoveConfig with that VQGAN's config."
        )
    model.vqgan.load_state_dict(theirs)
    return model


def load_generator(model: DoveModel, source: str | os.PathLike) -> DoveModel:
    """Initialise the causal generator from a GPTNeoX/Pythia checkpoint. The vocabulary embedding and LM head
    are dropped: the generator only ever sees embeddings (H_v, queries, timesteps)."""
    source = _check_source(source)
    pythia = _safe_load(GPTNeoXModel, source, dtype=torch.float32)
    ours = model.config
    theirs = pythia.config
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if getattr(theirs, name) != getattr(ours, name):
            raise ValueError(
                f"generator checkpoint {source!r} has {name}={getattr(theirs, name)} but the model has "
                f"{getattr(ours, name)}; use a preset with the checkpoint's shape (e.g. `paper` for Pythia-70M)."
            )
    state = {k: v for k, v in pythia.state_dict().items() if not k.startswith("embed_in.")}
    missing, unexpected = model.generator.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("embed_in.")]
    if missing or unexpected:
        raise ValueError(f"generator checkpoint {source!r} is not a GPTNeoX: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    return model
