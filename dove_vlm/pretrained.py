"""Loading pretrained parts into a `DoveModel`: the VQGAN (diffusers `VQModel`, e.g. aMUSEd's `vqvae` subfolder)
and the generator (a Pythia / GPTNeoX checkpoint). Sources are local folders or hub ids (`amused/amused-256`,
`EleutherAI/pythia-70m`), read through the Hugging Face cache (offline with HF_HUB_OFFLINE=1); a hub id that is
neither cached nor reachable fails with the hub's own error. Only safetensors weights are read."""

from __future__ import annotations

import os

import torch
from diffusers import VQModel
from transformers import GPTNeoXModel, PretrainedConfig

from .checkpoints import has_file, looks_local, weights_problem
from .modeling_dove import DoveModel
from .vqgan import check_vqgan_config

# aMUSEd's layout: the VQGAN is the `vqvae` subfolder of the pipeline repository.
VQGAN_SUBFOLDER = "vqvae"
GENERATOR_SHAPE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "rotary_pct")


def _check_source(source: str | os.PathLike) -> str:
    """A local path that exists, or something shaped like a hub id (`org/name`); anything else is an error."""
    source = os.path.expanduser(str(source))
    if os.path.exists(source):
        return source
    parts = source.split("/")
    if len(parts) <= 2 and all(parts) and not source.startswith(".") and not looks_local(source):
        return source
    raise FileNotFoundError(f"pretrained source {source!r} does not exist; pass an existing folder or a hub id.")


def _load_error(what: str, source: str, err: Exception, subfolder: str | None = None) -> ValueError:
    problem = weights_problem(source, subfolder)
    if problem:
        return ValueError(f"cannot load the {what} from {source!r}: {problem}")
    if not looks_local(source):
        import huggingface_hub

        if huggingface_hub.is_offline_mode() and not has_file(source, "config.json", subfolder):
            return ValueError(
                f"cannot load the {what} from {source!r}: it is not in the local Hugging Face cache "
                f"({huggingface_hub.constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading it; download "
                f"it where there is network (`hf download {source}`) into that cache, or pass a local folder.")
    if "config" in what:
        return ValueError(f"cannot read the {what} of {source!r} ({type(err).__name__}: {str(err)[:300]}); pass a "
                          "folder (or hub id) holding the model's config.json and safetensors weights.")
    return ValueError(f"cannot load the {what} from {source!r} ({type(err).__name__}: {str(err)[:300]}); "
                      "only safetensors weights are read — convert a .bin checkpoint to safetensors first, or "
                      "re-download a truncated file.")


def _safe_load(cls, source: str, what: str, **kwargs):
    """`cls.from_pretrained` from safetensors only (a `.bin` is never unpickled), with clear errors."""
    try:
        return cls.from_pretrained(source, use_safetensors=True, **kwargs)
    except Exception as err:  # OSError/EnvironmentError for missing files, SafetensorError for corrupt ones
        if not (isinstance(err, (OSError, ValueError)) or type(err).__name__ == "SafetensorError"):
            raise
        raise _load_error(what, source, err, kwargs.get("subfolder")) from err


def vqgan_subfolder(source: str) -> str | None:
    """`vqvae` when `source` (a folder or a hub id, through the cache) has the aMUSEd layout, else `None`."""
    if has_file(source, "config.json"):
        return None
    return VQGAN_SUBFOLDER if has_file(source, "config.json", VQGAN_SUBFOLDER) else None


def load_vqgan(model: DoveModel, source: str | os.PathLike, subfolder: str | None = None) -> DoveModel:
    """Copy a pretrained `VQModel` into `model.vqgan`. With `subfolder=None`, a `vqvae/` subfolder (aMUSEd layout)
    is used when the source (a folder or a hub id) has one. The VQGAN's config must match
    `model.config.vqgan_config` (checked before any weight is read)."""
    source = _check_source(source)
    if subfolder is None:
        subfolder = vqgan_subfolder(source)
    try:
        found = VQModel.load_config(source, subfolder=subfolder)
    except (OSError, ValueError) as err:
        raise _load_error("VQGAN config", source, err, subfolder) from err
    check_vqgan_config(found, dict(model.vqgan.config), source)
    theirs = _safe_load(VQModel, source, "VQGAN weights", subfolder=subfolder).state_dict()
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
    """Initialise the causal generator from a GPTNeoX/Pythia checkpoint (a folder or a hub id such as
    `EleutherAI/pythia-70m`). The vocabulary embedding and LM head are dropped: the generator only ever sees
    embeddings (H_v, queries, timesteps). Its shape is checked from its config before any weight is read."""
    source = _check_source(source)
    try:
        theirs, _ = PretrainedConfig.get_config_dict(source)
    except (OSError, ValueError) as err:
        raise _load_error("generator config", source, err) from err
    if theirs.get("model_type") != "gpt_neox":
        raise ValueError(f"generator checkpoint {source!r} is a {theirs.get('model_type')!r} model, not a GPTNeoX "
                         "(Pythia); pass a Pythia checkpoint such as EleutherAI/pythia-70m.")
    ours = model.config
    for name in GENERATOR_SHAPE:
        value = theirs.get(name, 0.25 if name == "rotary_pct" else None)
        if value != getattr(ours, name):
            raise ValueError(
                f"generator checkpoint {source!r} has {name}={value} but the model has {getattr(ours, name)}; use a "
                "preset with the checkpoint's shape (e.g. `paper` for Pythia-70M) or --model-overrides with its "
                f"{', '.join(GENERATOR_SHAPE)}."
            )
    pythia = _safe_load(GPTNeoXModel, source, "generator weights", dtype=torch.float32)
    state = {k: v for k, v in pythia.state_dict().items() if not k.startswith("embed_in.")}
    missing, unexpected = model.generator.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("embed_in.")]
    if missing or unexpected:
        raise ValueError(f"generator checkpoint {source!r} is not a GPTNeoX: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    return model
