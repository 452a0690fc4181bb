"""Compatibility shims between the original LLaVA code (written for transformers 4.36) and the transformers this
project runs (5.x). Each is applied by `llava_patch.apply()` only when it is needed, and changes nothing else:

1. `transformers.trainer.ALL_LAYERNORM_LAYERS`: transformers 5 no longer re-exports it from `transformers.trainer`;
   `llava.train.llava_trainer` (so `llava.train.train`) imports it from there. The shim puts back the same list,
   `transformers.pytorch_utils.ALL_LAYERNORM_LAYERS`.
2. `cache=` in the LLaVA causal LMs' `forward`: transformers 5's `generate` passes the KV cache as `cache=`, which
   LLaVA's fixed `forward(..., past_key_values=...)` signature rejects. The shim hands `cache` to it as
   `past_key_values` (which transformers 5 still accepts, with a deprecation warning) and drops the other
   generation-only keywords LLaVA's `forward` has no parameter for (e.g. `logits_to_keep`: every logit is kept).
"""

from __future__ import annotations

import functools
import inspect

SHIMS_APPLIED: list[str] = []


def _shim_trainer_layernorms() -> None:
    import transformers.pytorch_utils
    import transformers.trainer

    if not hasattr(transformers.trainer, "ALL_LAYERNORM_LAYERS"):
        transformers.trainer.ALL_LAYERNORM_LAYERS = transformers.pytorch_utils.ALL_LAYERNORM_LAYERS
        SHIMS_APPLIED.append("transformers.trainer.ALL_LAYERNORM_LAYERS")


def _accept_cache_keyword(cls) -> None:
    forward = cls.forward
    parameters = inspect.signature(forward).parameters
    if getattr(forward, "_llava_patch_shim", False) or "cache" in parameters or "past_key_values" not in parameters:
        return
    known = set(parameters)

    @functools.wraps(forward)
    def patched_forward(self, *args, cache=None, **kwargs):
        if cache is not None and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = cache
        return forward(self, *args, **{k: v for k, v in kwargs.items() if k in known})

    patched_forward._llava_patch_shim = True
    cls.forward = patched_forward
    SHIMS_APPLIED.append(f"{cls.__name__}.forward(cache=...)")


def apply_shims() -> list[str]:
    """Apply the shims this transformers needs; returns the names of those applied (so far, in this process)."""
    from transformers import LlamaForCausalLM

    _shim_trainer_layernorms()
    if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters:
        import llava.model as llava_model

        for name in ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaMptForCausalLM"):
            cls = getattr(llava_model, name, None)
            if cls is not None:
                _accept_cache_keyword(cls)
    return list(SHIMS_APPLIED)
