"""Whole-pipeline latency (tower + language model, prefill + answer) of DOVE adaptive and Q-DOVE against grid on a
LLaVA over a real pretrained LM (SmolLM2-135M-Instruct offline), the rows timed side by side in one process.

Every row goes through the lmms-eval adapter's own inference path (`DoveLlava._generate`), interleaved window by
window with a rotating order (`eval.compare.side_by_side_latency`); the table puts each speed-up beside its limit,
the ratio of prompt lengths (text + image tokens).

Trained rows (`dove demo --language-model` writes them under `runs/demo/llava_lm_<name>/`):

    OMP_NUM_THREADS=2 python benchmarks/llava_lm_latency.py --grid-model runs/demo/llava_lm_x/grid \\
        --dove-model runs/demo/llava_lm_x/dove --qdove-model runs/demo/llava_lm_x/qdove

Untrained rows, built here on the language model (random projector: the answers are noise, so every row generates
exactly `--answer-tokens` tokens, the same work), from DOVE checkpoints (`--tower`, `--qdove-tower`), or, without
them, from a random tiny-preset DOVE cut to the demo's measured mean lengths (`--dove-mode fixed-27`,
`--qdove-mode fixed-13`: stand-ins for adaptive DOVE at 27.1 and Q-DOVE at 13.0 tokens):

    OMP_NUM_THREADS=2 python benchmarks/llava_lm_latency.py --language-model path/to/SmolLM2-135M-Instruct.Q4_1.gguf
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

from eval.compare import RunSpec, export_embedded, latency_table, side_by_side_latency  # noqa: E402
from dove_vlm.presets import COMPARE_MODEL_ARGS  # noqa: E402


def untrained_row(language_model: str, tower_dir: str, mode: str, out: Path) -> str:
    """An align-format folder (random projector) of `language_model` on the tower `tower_dir` in `mode`."""
    from dove_vlm.llava.language_model import build_llava_on_language_model
    from dove_vlm.llava.saved import save_aligned_projector, text_fingerprint, write_align_info
    from dove_vlm.tower_settings import TowerSettings
    from dove_vlm.vision_tower import DoveVisionTower

    if (out / "dove_llava_align.json").is_file():
        return str(out)
    tower = DoveVisionTower.from_pretrained(tower_dir, settings=TowerSettings.parse({"tower_mode": mode}))
    torch.manual_seed(0)
    model, tokenizer = build_llava_on_language_model(tower, language_model)
    out.mkdir(parents=True, exist_ok=True)
    tower.save_pretrained(out / "tower")
    tokenizer.save_pretrained(out)
    tower.image_processor.save_pretrained(out)
    save_aligned_projector(model, out)
    write_align_info(out, language_model, "language_model", tower_dir, tower.settings, text_fingerprint(model))
    return str(out)


def random_tiny_dove(out: Path, query: bool = False) -> str:
    from dove_vlm import DoveModel, preset_config

    if (out / "config.json").is_file():
        return str(out)
    torch.manual_seed(0)
    model = DoveModel(preset_config("tiny"))
    model.set_latent_statistics(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    model.save_pretrained(out)
    return str(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid-model"), parser.add_argument("--dove-model"), parser.add_argument("--qdove-model")
    parser.add_argument("--language-model", help="build untrained rows on this LM (hub id, folder or .gguf)")
    parser.add_argument("--tower", help="DOVE checkpoint of the untrained grid and DOVE rows (default: random tiny)")
    parser.add_argument("--qdove-tower", help="Q-DOVE checkpoint of the untrained query row")
    parser.add_argument("--dove-mode", default=None, help="tower mode of the DOVE row (default adaptive, or fixed-27 "
                        "on the random tiny DOVE)")
    parser.add_argument("--qdove-mode", default=None, help="tower mode of the Q-DOVE row (default query, or fixed-13 "
                        "on the random tiny DOVE)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=96, help="held-out questions per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=4, help="answer length (exactly this many for untrained "
                        "rows or with --fixed-length)")
    parser.add_argument("--fixed-length", action="store_true", help="every row generates exactly --answer-tokens")
    parser.add_argument("--work-dir", default="runs/lm_latency")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    ns = parser.parse_args(argv)

    work = Path(ns.work_dir)
    fixed = ns.fixed_length
    if ns.grid_model:
        specs = [RunSpec("grid", "grid", ns.grid_model, dict(COMPARE_MODEL_ARGS))]
        if ns.dove_model:
            specs.append(RunSpec("adaptive", ns.dove_mode or "adaptive", ns.dove_model, dict(COMPARE_MODEL_ARGS)))
        if ns.qdove_model:
            specs.append(RunSpec("query", ns.qdove_mode or "query", ns.qdove_model, dict(COMPARE_MODEL_ARGS)))
    elif ns.language_model:
        fixed = True
        tower = ns.tower or random_tiny_dove(work / "random_tiny_dove")
        dove_mode = ns.dove_mode or ("adaptive" if ns.tower else "fixed-27")
        qdove_tower = ns.qdove_tower or tower
        qdove_mode = ns.qdove_mode or ("query" if ns.qdove_tower else "fixed-13")
        rows = [("grid", "grid", tower), (f"DOVE {dove_mode}", dove_mode, tower),
                (f"Q-DOVE {qdove_mode}", qdove_mode, qdove_tower)]
        specs = []
        for name, mode, source in rows:
            folder = untrained_row(ns.language_model, source, mode, work / name.replace(" ", "_"))
            specs.append(RunSpec(name, mode, folder, dict(COMPARE_MODEL_ARGS)))
    else:
        parser.error("give --grid-model (trained rows) or --language-model (untrained rows)")
    task_yaml = export_embedded(work / "eval_data", "test", max(1, ns.limit // 2 + 1), 0, 32, 2)
    stats: dict = {}
    started = time.time()
    seconds = side_by_side_latency(specs, task_yaml, batch_size=ns.batch_size, limit=ns.limit, rounds=ns.rounds,
                                   stats=stats, max_new_tokens=ns.answer_tokens, fixed_length=fixed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(specs)} rows x {ns.limit} questions x {ns.rounds} rounds, batch {ns.batch_size}, "
          f"{torch.get_num_threads()} threads, load average {load:.1f}, {time.time() - started:.0f} s"
          + (f"; every row generates {ns.answer_tokens} tokens" if fixed else ""))
    print(latency_table(seconds, stats))
    if ns.output:
        Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.output).write_text(json.dumps({"seconds_per_sample": seconds, "stats": stats, "rows": [
            s.__dict__ for s in specs], "batch_size": ns.batch_size, "limit": ns.limit, "rounds": ns.rounds,
            "threads": torch.get_num_threads(), "load_average": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
