"""Run one of LLaVA's scripts with the DOVE patch applied:

    python -m llava_patch MODULE_OR_SCRIPT [its arguments...]

e.g. `python -m llava_patch llava.train.train --vision_tower dove:/ckpt/dove ...` or
`python -m llava_patch llava.serve.cli --model-path ...`. A path ending in `.py` runs that file. Launchers work
too: `torchrun ... -m llava_patch llava.train.train_mem ...`, `deepspeed --module llava_patch llava.train.train_mem ...`
(options a launcher puts before the script, such as deepspeed's `--local_rank=N`, are passed on after it).
"""

from __future__ import annotations

import runpy
import sys

from . import apply


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if argv else 2)
    leading = []
    while argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        leading.append(argv.pop(0))
    if not argv:
        raise SystemExit(f"llava_patch: no LLaVA module or script to run after {leading}.")
    apply(strict=True)
    target, sys.argv = argv[0], argv + leading
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
