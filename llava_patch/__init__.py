"""DOVE / Q-DOVE in the original LLaVA code base (haotian-liu/LLaVA, package `llava`).

`llava_patch.apply()` (idempotent) registers the DOVE tower with LLaVA's vision-tower builder (towers named
`dove:PATH[?options]`, or a folder holding a DOVE checkpoint), threads each image's question into
`encode_images` so that Q-DOVE sees it, lets LLaVA's merge take per-image variable-length features, and applies
the small transformers-5 shims of `llava_patch.compat`. Without `llava` it patches nothing and says why.

LLaVA's own scripts run unchanged through the launcher, which applies the patch first:

    python -m llava_patch llava.train.train --vision_tower dove:/path/to/dove ...
    python -m llava_patch llava.eval.run_llava --model-path ... --image-file ... --query ...

See docs/llava_original.md.
"""

from __future__ import annotations

import warnings

from .questions import image_questions, question_from_prompt, question_from_text

INSTALL_HINT = (
    "install the original LLaVA code base without its pinned (transformers 4.36 era) dependencies: "
    "`pip install --no-deps git+https://github.com/haotian-liu/LLaVA.git` (or its PyPI build, "
    "`pip install --no-deps llava-torch`)"
)

_state = {"applied": False}


class LlavaNotInstalledError(ImportError):
    """The original LLaVA package is not importable (or the `llava` found is not haotian-liu/LLaVA)."""


def _import_llava():
    try:
        import llava
    except ImportError as err:
        raise LlavaNotInstalledError(f"the original LLaVA package (`llava`) is not importable ({err}); {INSTALL_HINT}.") from err
    try:
        import llava.model.builder
        import llava.model.llava_arch
        import llava.model.multimodal_encoder.builder
    except ImportError as err:
        where = getattr(llava, "__file__", None) or list(getattr(llava, "__path__", []))
        raise LlavaNotInstalledError(
            f"the `llava` package at {where} is not haotian-liu/LLaVA or does not import ({err}); PyPI's `llava` is "
            f"an empty placeholder. {INSTALL_HINT}."
        ) from err
    return llava


def is_applied() -> bool:
    return _state["applied"]


def apply(strict: bool = False) -> bool:
    """Patch the original LLaVA code base for DOVE towers. Idempotent.

    Args:
        strict (`bool`): raise [`LlavaNotInstalledError`] when `llava` is missing instead of warning.

    Returns:
        `True` when LLaVA is patched, `False` when `llava` is not importable (nothing was changed; a warning
        says how to install it).
    """
    if _state["applied"]:
        return True
    try:
        from . import compat

        _import_llava()
        compat.apply_shims()
    except LlavaNotInstalledError as err:
        if strict:
            raise
        warnings.warn(f"llava_patch.apply() did nothing: {err}", stacklevel=2)
        return False
    import sys

    import llava.model.builder as model_builder
    import llava.model.multimodal_encoder.builder as encoder_builder
    from llava.model import llava_arch

    from . import arch

    arch.ORIGINALS.update(
        build_vision_tower=encoder_builder.build_vision_tower,
        encode_images=llava_arch.LlavaMetaForCausalLM.encode_images,
        prepare_inputs_labels_for_multimodal=llava_arch.LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal,
        initialize_vision_tokenizer=llava_arch.LlavaMetaForCausalLM.initialize_vision_tokenizer,
        load_pretrained_model=model_builder.load_pretrained_model,
    )
    # Module-level names: the builder's own, and every `llava` module that already imported them by name.
    for module_name, module in list(sys.modules.items()):
        if module_name == "llava" or module_name.startswith("llava."):
            for name in ("build_vision_tower", "load_pretrained_model"):
                if getattr(module, name, None) is arch.ORIGINALS[name]:
                    setattr(module, name, getattr(arch, name))
    for name in ("encode_images", "prepare_inputs_labels_for_multimodal", "initialize_vision_tokenizer"):
        setattr(llava_arch.LlavaMetaForCausalLM, name, getattr(arch, name))
    _state["applied"] = True
    return True


def __getattr__(name):  # the LLaVA-side names import `llava`-independent code only when asked for
    if name in ("DoveLlavaVisionTower", "LlavaDoveImageProcessor", "parse_tower_name"):
        from . import tower

        return getattr(tower, name)
    if name in ("attach_tokenizer", "EncodedImages"):
        from . import arch

        return getattr(arch, name)
    raise AttributeError(f"module 'llava_patch' has no attribute {name!r}")


__all__ = [
    "INSTALL_HINT",
    "DoveLlavaVisionTower",
    "LlavaDoveImageProcessor",
    "LlavaNotInstalledError",
    "apply",
    "attach_tokenizer",
    "image_questions",
    "is_applied",
    "parse_tower_name",
    "question_from_prompt",
    "question_from_text",
]
