"""Per-sample VQA latency of the tower modes against the grid baseline, measured side by side in one process.

Every row goes through the lmms-eval adapter's own inference path (`DoveLlava._generate`: tower once per image,
processor, length-bucketed greedy generation), interleaved window by window with a rotating order
(`eval.compare.side_by_side_latency`), for each batch size. Ratios measured this way hold on a loaded machine;
absolute milliseconds do not (the machine load is printed with them).

    OMP_NUM_THREADS=1 python benchmarks/vqa_latency.py --batch-sizes 8,32,64 \\
        --grid-model runs/demo/llava_base --dove-model runs/demo/llava_dove \\
        --qdove-model runs/demo/llava_qdove --output runs/eval_latency/latency.json

`--lm-sizes 512x4,1024x8` repeats the comparison with wider/deeper language models (random weights, built with
`build_tiny_llava` on each row's own trained tower, so tokens per image are the real ones; no end-of-sequence
token, so every row generates the same number of answer tokens): how the ratio grows as the LM's share of the
work grows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dove_vlm.commands.cli import _key_value  # noqa: E402
from dove_vlm.presets import COMPARE_MODEL_ARGS  # noqa: E402
from eval.compare import mode_matrix, side_by_side_latency  # noqa: E402


def scaled_model(spec, width: int, layers: int, root: Path) -> str:
    """A copy of `spec`'s model with a random `width`×`layers` Llama (the row's trained tower kept), saved under
    `root`; returns its folder."""
    from dove_vlm.llava.tiny import build_tiny_llava
    from eval.lmms_adapter import load_for_inference

    out = root / f"{Path(spec.pretrained).name}_{spec.mode}_{width}x{layers}"
    if (out / "config.json").is_file():
        return str(out)
    _, processor, tower = load_for_inference(spec.pretrained, spec.mode)
    torch.manual_seed(0)
    heads = max(1, width // 64)
    model = build_tiny_llava(tower, processor.tokenizer, hidden_size=width, intermediate_size=width * 8 // 3,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads)
    model.generation_config.eos_token_id = None  # random weights: every row generates max_new_tokens tokens
    model.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    return str(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="runs/demo/eval_data/tasks/dove_vqa_test.yaml")
    parser.add_argument("--grid-model", default="runs/demo/llava_base")
    parser.add_argument("--dove-model", default="runs/demo/llava_dove")
    parser.add_argument("--qdove-model", default="runs/demo/llava_qdove")
    parser.add_argument("--modes", default="grid,adaptive,query", help="rows to time (grid is the reference)")
    parser.add_argument("--batch-sizes", default="64")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-args", default="", help="adapter options for every row, KEY=VALUE,... (default "
                        + ",".join(f"{k}={v}" for k, v in COMPARE_MODEL_ARGS.items()) + ")")
    parser.add_argument("--lm-sizes", default="", help="WIDTHxLAYERS,... random language models to compare too")
    parser.add_argument("--scale-dir", default="runs/eval_latency_lm", help="where the scaled models are saved")
    parser.add_argument("--output", default=None, help="write the results as json here")
    ns = parser.parse_args(argv)

    model_args = dict(COMPARE_MODEL_ARGS, **dict(_key_value(kv) for kv in ns.model_args.split(",") if kv.strip()))
    specs = [s for s in mode_matrix(ns.grid_model, ns.dove_model, ns.qdove_model, model_args=model_args)
             if s.name in ns.modes.split(",")]
    sizes = [None] + [tuple(int(x) for x in size.split("x")) for size in ns.lm_sizes.split(",") if size.strip()]
    results = []
    print(f"threads {torch.get_num_threads()}, adapter options {model_args}")
    print("| LM | batch | mode | tokens / image | prompt tokens | ms / sample | vs grid | tower + LM ms | LM vs grid "
          "| load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        rows = specs
        if size is not None:
            rows = [type(s)(s.name, s.mode, scaled_model(s, *size, Path(ns.scale_dir)), dict(s.model_args))
                    for s in specs]
        for batch_size in [int(b) for b in ns.batch_sizes.split(",")]:
            stats, load = {}, os.getloadavg()[0]
            started = time.time()
            seconds = side_by_side_latency(rows, ns.task, batch_size, ns.limit, rounds=ns.rounds, stats=stats)
            grid = seconds.get("grid")
            grid_lm = stats["grid"]["language_model_seconds_per_sample"] if grid else None
            for name, value in seconds.items():
                tower, lm = stats[name]["tower_seconds_per_sample"], stats[name]["language_model_seconds_per_sample"]
                row = {"lm": "trained" if size is None else f"{size[0]}x{size[1]}", "batch_size": batch_size,
                       "mode": name, "ms_per_sample": 1000 * value, "speedup_vs_grid": grid / value if grid else None,
                       "tower_ms_per_sample": 1000 * tower, "language_model_ms_per_sample": 1000 * lm,
                       "language_model_speedup_vs_grid": grid_lm / lm if grid else None,
                       "tokens_per_image": stats[name]["tokens_per_image"],
                       "prompt_tokens": stats[name]["prompt_tokens_mean"], "load_1min": load,
                       "load_1min_after": os.getloadavg()[0], "wall_seconds": time.time() - started}
                results.append(row)
                speed = f"{row['speedup_vs_grid']:.2f}×" if grid else "—"
                lm_speed = f"{row['language_model_speedup_vs_grid']:.2f}×" if grid else "—"
                print(f"| {row['lm']} | {batch_size} | {name} | {row['tokens_per_image']:.1f} | "
                      f"{row['prompt_tokens']:.1f} | {row['ms_per_sample']:.2f} | {speed} | "
                      f"{row['tower_ms_per_sample']:.2f} + {row['language_model_ms_per_sample']:.2f} | {lm_speed} | "
                      f"{load:.1f}→{row['load_1min_after']:.1f} |", flush=True)
    if ns.output:
        Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.output).write_text(json.dumps({"model_args": model_args, "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
