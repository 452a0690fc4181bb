"""The `lmms_eval.models` entry point: lmms-eval calls `manifest()` when it builds its model registry, so
`lmms-eval --model dove_llava` resolves to `eval.lmms_adapter.DoveLlava` with no edit inside lmms-eval.
Kept import-light on purpose (lmms-eval loads it on every start)."""

import sys
import types

MODEL_NAME = "dove_llava"
ADAPTER_CLASS = "eval.lmms_adapter.DoveLlava"


def filelock_compat() -> None:
    """lmms-eval 0.7.3's evaluator imports `filelock._api` (filelock 3.x); filelock 4 moved `FileLockMeta` and
    `BaseFileLock` to `filelock._core`. Expose them under the old name (only when it is missing)."""
    try:
        import filelock._api  # noqa: F401
    except ImportError:
        try:
            from filelock._core import BaseFileLock, FileLockMeta
        except ImportError:  # an unknown filelock layout: leave lmms-eval's own error
            return
        module = types.ModuleType("filelock._api")
        module.BaseFileLock, module.FileLockMeta = BaseFileLock, FileLockMeta
        sys.modules["filelock._api"] = module


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    filelock_compat()
    return ModelManifest(model_id=MODEL_NAME, simple_class_path=ADAPTER_CLASS)
