"""Compatibility shims between the original LLaVA code (written for transformers 4.36) and the transformers this
project runs (5.x). Each is applied by `llava_patch.apply()` only when it is needed, and changes nothing else:

1. `transformers.trainer.ALL_LAYERNORM_LAYERS`: transformers 5 no longer re-exports it from `transformers.trainer`;
   `llava.train.llava_trainer` (so `llava.train.train`) imports it from there. The shim puts back the same list,
   `transformers.pytorch_utils.ALL_LAYERNORM_LAYERS`.
2. `cache=` in the LLaVA causal LMs' `forward`: transformers 5's `generate` passes the KV cache as `cache=`, which
   LLaVA's fixed `forward(..., past_key_values=...)` signature rejects. The shim hands `cache` to it as
   `past_key_values` (which transformers 5 still accepts, with a deprecation warning) and drops the other
   generation-only keywords LLaVA's `forward` has no parameter for (e.g. `logits_to_keep`: every logit is kept).
3. `LLaVATrainer` (llava.train.llava_trainer) against transformers 5's `Trainer`: `tokenizer=` is passed on as
   `processing_class=` (the keyword was renamed); `_get_train_sampler` accepts the `train_dataset` argument
   transformers 5 passes (LLaVA's override reads `self.train_dataset`, which is the same dataset);
   `_save_checkpoint(model, trial, metrics)` calls transformers 5's two-argument `_save_checkpoint` for full
   checkpoints (LLaVA's projector-only branch, `--tune_mm_mlp_adapter`, is unchanged).
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


def _shim_llava_trainer() -> None:
    try:
        from llava.train.llava_trainer import LLaVATrainer
    except ImportError:  # LLaVA's training module needs more than the shims give: training is not available
        return
    from transformers import Trainer

    if "tokenizer" not in inspect.signature(Trainer.__init__).parameters and "__init__" not in LLaVATrainer.__dict__:
        def __init__(self, *args, tokenizer=None, **kwargs):
            if tokenizer is not None:
                kwargs.setdefault("processing_class", tokenizer)
            Trainer.__init__(self, *args, **kwargs)

        LLaVATrainer.__init__ = __init__
        SHIMS_APPLIED.append("LLaVATrainer(tokenizer=...)")

    sampler = LLaVATrainer.__dict__.get("_get_train_sampler")
    if (sampler is not None and len(inspect.signature(sampler).parameters) == 1
            and "train_dataset" in inspect.signature(Trainer._get_train_sampler).parameters):
        def _get_train_sampler(self, train_dataset=None):
            if train_dataset is not None and train_dataset is not self.train_dataset:
                return Trainer._get_train_sampler(self, train_dataset)
            return sampler(self)

        LLaVATrainer._get_train_sampler = _get_train_sampler
        SHIMS_APPLIED.append("LLaVATrainer._get_train_sampler(train_dataset)")

    save = LLaVATrainer.__dict__.get("_save_checkpoint")
    if save is not None and "metrics" not in inspect.signature(Trainer._save_checkpoint).parameters:
        def _save_checkpoint(self, model, trial, metrics=None):
            if getattr(self.args, "tune_mm_mlp_adapter", False):
                return save(self, model, trial, metrics)
            return Trainer._save_checkpoint(self, model, trial)

        LLaVATrainer._save_checkpoint = _save_checkpoint
        SHIMS_APPLIED.append("LLaVATrainer._save_checkpoint(model, trial)")


def apply_shims() -> list[str]:
    """Apply the shims this transformers needs; returns the names of those applied (so far, in this process)."""
    from transformers import LlamaForCausalLM

    _shim_trainer_layernorms()
    _shim_llava_trainer()
    if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters:
        import llava.model as llava_model

        for name in ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaMptForCausalLM"):
            cls = getattr(llava_model, name, None)
            if cls is not None:
                _accept_cache_keyword(cls)
    return list(SHIMS_APPLIED)
