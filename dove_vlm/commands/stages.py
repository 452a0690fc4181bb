"""What `dove demo`'s stages share: whether a stage has already finished with exactly the same arguments."""

from __future__ import annotations

import json
from pathlib import Path


def finished_stage(args) -> dict | None:
    """The metrics of a stage (tokenizer or LLaVA training arguments) already trained and scored (when it scores:
    an align stage with `eval_scenes=0` does not) with exactly `args`, else `None`: a rerun of the demo, or its parallel branch, then neither rebuilds data nor re-evaluates."""
    path = Path(args.output_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    scored = "eval" in metrics or not (getattr(args, "eval_scenes", 1) or getattr(args, "eval_data_path", None))
    done = metrics.get("args") == json.loads(json.dumps(args.to_dict())) and scored
    if done:
        print(f"[dove demo] reusing the finished stage in {args.output_dir} (trained and scored with the same "
              "arguments)", flush=True)
    return metrics if done else None
