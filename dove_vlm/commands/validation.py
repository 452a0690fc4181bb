"""The validation step of the `dove` commands whose flags are not a dataclass (`encode`, `eval export`, `eval
compare`, `demo`), plus what every command shares: the names a run writes (removed by `--overwrite`), what a
resumed run must keep, and the advice after Ctrl-C. `dove train`, `llava-train` and `report` validate in their
argument dataclasses (`validate` / `check_inputs`, next to the fields). Nothing here does any work: it reads
config files and headers only."""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path

from ..checkpoints import check_checkpoint_dir, check_source, describe_kind, model_kind, read_config, supports_queries
from ..checks import check_choice, check_float, check_int, check_seed, flag

# What each command writes into its output folder: `--overwrite` removes these first, so nothing of the
# previous run (a checkpoint that outranks the new ones, a trained VQGAN) is picked up later.
TRAIN_OUTPUTS = ("checkpoint-*", ".checkpoint-*", ".trash-*", "vqgan", "vqgan.tmp", "metrics.json", "model.safetensors",
                 "config.json", "preprocessor_config.json", "query_tokenizer", "reconstructions.png",
                 "length_histogram.png", "length_vs_complexity.png", "psnr_vs_tokens.png")
LLAVA_OUTPUTS = ("checkpoint-*", ".checkpoint-*", ".trash-*", "adapter", "tower", "merged", "metrics.json",
                 "dove_llava_lora.json", "model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "preprocessor_config.json")
REPORT_OUTPUTS = ("report.json", "quality_vs_tokens.png", "reconstructions.png", "length_histogram.png",
                  "length_vs_complexity.png", "linear_probe.png", "pca_features.png", "photos_length_vs_complexity.png",
                  "queries.png")
# What `dove demo` writes (patterns): a finished demo folder is reused, by `dove demo --language-model` too.
DEMO_ENTRIES = ("tokenizer", "qdove", "llava_base", "llava_dove", "llava_qdove", "eval_data", "eval_compare",
                "report.md", "llava_report.md", "llava_results.json", "llava_lm_*")

# Settings a resumed run cannot change: its checkpoint was trained with them.
TRAIN_FIXED = ("preset", "data", "num_train_scenes", "seed", "vqgan", "vqgan_steps", "vqgan_batch_size",
               "vqgan_learning_rate", "generator_init", "model_overrides", "query", "init_from", "query_tokenizer")
LLAVA_FIXED = ("stage", "tower", "base_model", "init_adapter", "seed", "num_train_scenes", "questions_per_scene",
               "captions", "turns_per_image", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "lora_r", "lora_alpha", "lora_target_modules", "mode", "num_tokens", "feature",
               "eos_threshold", "min_tokens", "max_tokens", "query_min_tokens", "query_max_tokens")

INTERRUPTED = {
    "train": "interrupted; rerun the same command with --resume to continue from the last checkpoint",
    "llava-train": "interrupted; rerun the same command with --resume to continue from the last checkpoint",
    "demo": "interrupted; rerun the same `dove demo` command: finished stages are reused and the interrupted one "
            "continues from its last checkpoint",
    "eval compare": "interrupted; rerun the same command: rows whose lmms-eval run finished are reused (--rerun runs "
                    "every row again)",
}


def interrupted_advice(command: str) -> str:
    return INTERRUPTED.get(command, "interrupted")


def check_resume(output_dir: str | os.PathLike, args: dict, fixed: tuple[str, ...], log) -> None:
    """Before `--resume`: say what is reused, and refuse settings the newest checkpoint was not trained with."""
    from train_tokenizer.checkpointing import latest_checkpoint, load_trainer_state

    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        log(f"--resume: no complete checkpoint in {output_dir} yet; starting from scratch"
            + (" (a finished VQGAN stage there is reused if it was trained with the same settings)"
               if (Path(output_dir) / "vqgan").is_dir() else ""))
        return
    old = load_trainer_state(checkpoint, verify=False).get("args") or {}
    import json

    new = json.loads(json.dumps(args, default=str))
    changed = [f"{flag(k)} {old[k]!r} -> {new[k]!r}" for k in fixed if k in old and k in new and old[k] != new[k]]
    if changed:
        raise ValueError(f"--resume: {checkpoint} was trained with other settings ({'; '.join(changed)}); a resumed "
                         "run keeps them. Rerun with the checkpoint's values, or start again with --overwrite.")
    other = [f"{flag(k)} {old[k]!r} -> {new[k]!r}" for k in new if k in old and old[k] != new[k] and k != "resume"]
    log(f"--resume: continuing from {checkpoint} (step {checkpoint.name.split('-')[-1]})"
        + (f"; changed from here on: {'; '.join(other)}" if other else ""))


# --- dove encode ------------------------------------------------------------------------------------------------


def check_encode(ns) -> dict:
    """`dove encode`'s flags and inputs; returns the model's config."""
    from ..data.images import image_size
    from ..tower_settings import TowerSettings

    check_int("batch_size", ns.batch_size, 1)
    config = check_dove_folder(ns.model, "--model")
    values = {"eos_threshold": ns.eos_threshold, "min_tokens": ns.min_tokens, "max_tokens": ns.max_tokens}
    for name, value in values.items():
        try:
            TowerSettings.parse({name: value})
        except ValueError as err:
            raise ValueError(f"{flag(name)} {value}: {err}") from None
    try:
        TowerSettings.parse(values)
    except ValueError as err:
        raise ValueError(f"--min-tokens / --max-tokens: {err}") from None
    longest = config.get("max_tokens")
    for name in ("min_tokens", "max_tokens"):
        value = values[name]
        if value is not None and isinstance(longest, int) and value > longest:
            raise ValueError(f"{flag(name)} {value} is more than the model's max_tokens ({longest}).")
    if ns.query is not None and ns.query.strip() and not config.get("query_vocab_size"):
        raise ValueError(f"--query: the model in {ns.model} was trained without text queries (plain DOVE); use a "
                         "Q-DOVE checkpoint (`dove train --query`) or drop --query.")
    for path in ns.images:
        if not os.path.exists(path):
            raise FileNotFoundError(f"image file not found: {path}")
        image_size(path)  # readable, an image, under the pixel limit (decoded batch by batch later)
    return config


def check_dove_folder(path: str, name: str) -> dict:
    """A DOVE / Q-DOVE checkpoint folder (`dove train` output); returns its config."""
    check_source(path, name, "a DOVE checkpoint folder (`dove train` output)")
    if not os.path.exists(path):  # a hub id: transformers resolves it
        return {}
    kind = model_kind(path)
    if kind != "dove":
        raise ValueError(f"{name} {path} holds {describe_kind(kind)}, not a DOVE checkpoint; pass a folder written by "
                         "`dove train`.")
    check_checkpoint_dir(path)
    return read_config(path)




# --- dove eval export -------------------------------------------------------------------------------------------

SPLITS = ("train", "test", "validation")


def check_export(ns) -> None:
    from eval.export import check_task_name

    if ns.task_name is not None:
        check_task_name(ns.task_name)
    if ns.from_file is not None:
        if not os.path.isfile(ns.from_file):
            raise FileNotFoundError(f"--from-file {ns.from_file}: no such file (a json, jsonl or parquet VQA file).")
        return
    check_choice("split", ns.split, SPLITS)
    check_int("num_scenes", ns.num_scenes, 1, 1_000_000)
    check_int("questions_per_scene", ns.questions_per_scene, 0)
    check_seed(ns.seed)
    check_int("image_size", ns.image_size, 8, 4096)


def task_files(output_dir: str, task_name: str) -> list[Path]:
    """The files an export of `task_name` writes into `output_dir`."""
    root = Path(output_dir)
    return [root / f"{task_name}.json", root / "tasks" / f"{task_name}.yaml", root / f"{task_name}.export.json"]


# --- dove eval compare ------------------------------------------------------------------------------------------

ADAPTER_OPTIONS = ("batch_invariant", "merge_lora", "merged", "bucket_window", "base_model", "device", "max_new_tokens",
                   "fastv_layer", "fastv_tokens")
_BOOLEAN_OPTIONS = ("batch_invariant", "merge_lora", "merged")
ROW_FLAGS = {"grid": "--grid-model", "dove": "--dove-model", "qdove": "--qdove-model", "encoder": "--encoder-model"}


def load_task_yaml(path: str) -> dict:
    """A task YAML as a mapping (lmms-eval's `!function` tags kept as text); one clear error naming the file and
    the line when it does not parse."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--task {path}: no such file; write one with `dove eval export`.")
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.load(handle, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except UnicodeDecodeError as err:
        raise ValueError(f"--task {path} is not UTF-8 text ({err.reason}).") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"--task {path} is not valid YAML{where}: {problem}.") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str) or not config["task"].strip():
        raise ValueError(f"--task {path} has no `task: NAME` entry; pass a task YAML written by `dove eval export`.")
    return config


def check_compare(ns) -> list[str]:
    """`dove eval compare`'s flags and inputs (before lmms-eval starts); returns the task's data files."""
    from eval.export import read_records, task_data_file

    config = load_task_yaml(ns.task)
    files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
    names = [f for v in (files.values() if isinstance(files, dict) else [files])
             for f in ([v] if isinstance(v, str) else v or [])]
    data_files = []
    for name in names:
        if not isinstance(name, str) or "://" in name:
            continue
        name = task_data_file(ns.task, name)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"the data file {name} of task {ns.task} does not exist; write it with "
                                    "`dove eval export`.")
        read_records(name)  # every record and image valid before any model loads
        data_files.append(name)
    check_int("batch_size", ns.batch_size, 1)
    check_int("limit", ns.limit, 1, optional=True)
    given = {row: getattr(ns, f"{row}_model") for row in ROW_FLAGS if getattr(ns, f"{row}_model")}
    if not given:
        raise ValueError("nothing to compare: give at least one of " + ", ".join(ROW_FLAGS.values()) + ".")
    max_tokens = None
    for row, path in given.items():
        found = check_llava_folder(path, ROW_FLAGS[row], row)
        if row == "dove":
            max_tokens = found
    if ns.fixed_k:
        if "dove" not in given:
            raise ValueError("--fixed-k truncates the DOVE model's tokens: give --dove-model too.")
        for item in ns.fixed_k.split(","):
            text = item.strip()
            if not text:
                continue
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"--fixed-k takes comma-separated whole numbers >= 1, got {item!r}.")
            if max_tokens and int(text) > max_tokens:
                raise ValueError(f"--fixed-k {text} is more than the DOVE model's max_tokens ({max_tokens}).")
    check_model_args(ns.model_args)
    budget_rows(ns)
    return data_files


def budget_rows(ns):
    """The training-free token-budget rows of `--pool-k`, `--random-k`, `--fastv-k` (with `--fastv-layer`) on
    `--grid-model`, checked (k within the grid, the layer within the language model); `None` without them."""
    from eval.rows import BudgetRows, parse_k_list

    ks = {kind: parse_k_list(getattr(ns, f"{kind}_k", None), f"--{kind}-k") for kind in ("pool", "random", "fastv")}
    if getattr(ns, "fastv_layer", None) is not None and not ks["fastv"]:
        raise ValueError("--fastv-layer sets where FastV prunes; give --fastv-k too.")
    if not any(ks.values()):
        return None
    if not ns.grid_model:
        flags = ", ".join(f"--{kind}-k" for kind, k in ks.items() if k)
        raise ValueError(f"{flags} run on the grid LLaVA: give --grid-model (a `dove llava-train --stage base` folder).")
    budget = BudgetRows(ns.grid_model, ks["pool"], ks["random"], ks["fastv"], ns.fastv_layer)
    budget.check()
    return budget


def check_llava_folder(path: str, name: str, row: str) -> int | None:
    """A `dove llava-train` output for a comparison row (grid: a base stage on the grid tower; dove: any DOVE-LLaVA;
    qdove: one on a Q-DOVE tower); returns its DOVE model's max_tokens when known. Read from config files only,
    so a wrong folder is refused at once, not after lmms-eval has loaded it."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{name} {path}: no such folder; pass a `dove llava-train` output folder.")
    kind = model_kind(path)
    if kind not in ("dove_llava", "llava_lora"):
        raise ValueError(f"{name} {path} holds {describe_kind(kind)}, not a `dove llava-train` output folder"
                         + (" (train one with `dove llava-train --stage base --tower THIS_FOLDER`)." if kind == "dove"
                            else "."))
    if kind == "dove_llava":
        check_checkpoint_dir(path)
        vision = read_config(path).get("vision_config") or {}
    else:
        tower = os.path.join(path, "tower")
        vision = read_config(tower) if os.path.isfile(os.path.join(tower, "config.json")) else {}
    if row == "grid" and (kind != "dove_llava" or vision.get("mode") != "grid"):
        raise ValueError(f"{name} {path} was not trained on the grid tower; pass a `dove llava-train --stage base` "
                         "folder.")
    if row != "grid" and vision.get("mode") == "grid":
        raise ValueError(f"{name} {path} was trained on the grid tower (a base stage); the {'Q-DOVE' if row == 'qdove' else 'DOVE'} rows need a "
                         "`dove llava-train --stage lora` folder trained on a DOVE tower.")
    if (row == "encoder") != (vision.get("mode") == "encoder"):
        raise ValueError(f"{name} {path} was " + ("not trained on the encoder tower; pass a `dove llava-train --tower "
                         "efficientnet-lite0` folder." if row == "encoder" else "trained on the pretrained encoder "
                         "tower; pass it as --encoder-model."))
    if row == "qdove" and not supports_queries(path):
        raise ValueError(f"{name} {path} has a plain DOVE tower; the query rows need one trained on Q-DOVE "
                         "(`dove llava-train --tower QDOVE_CHECKPOINT --mode query`).")
    return (vision.get("dove_config") or {}).get("max_tokens")


def check_model_args(text: str) -> dict[str, str]:
    """`--model-args KEY=VALUE,...`: known adapter options and tower settings with valid values."""
    from ..tower_settings import TowerSettings

    values = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"--model-args takes KEY=VALUE pairs separated by commas, got {item!r}.")
        values[key] = value
    known = ADAPTER_OPTIONS + tuple(n for n in TowerSettings.names() if n != "mode")
    for key, value in values.items():
        if key in ("pretrained", "tower_mode", "mode"):
            raise ValueError(f"--model-args {key}= is set by each row (--grid-model/--dove-model/--qdove-model and the "
                             "mode); use --modes to pick rows.")
        if key not in known:
            raise ValueError(f"--model-args: unknown option {key!r}; valid: {', '.join(known)}.")
        if key in _BOOLEAN_OPTIONS and value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--model-args {key}={value!r}: write true or false.")
        if key in ("bucket_window", "max_new_tokens") and (not value.isdigit() or int(value) < 1):
            raise ValueError(f"--model-args {key}={value!r}: write a whole number >= 1.")
        if key == "base_model":
            check_source(value, "--model-args base_model=", "a `dove llava-train --stage base` folder")
    settings = {k: v for k, v in values.items() if k in TowerSettings.names()}
    if settings:
        TowerSettings.parse(settings)
    return values


# --- dove demo --------------------------------------------------------------------------------------------------


def check_demo(ns) -> None:
    from ..run_folder import entries

    check_seed(ns.seed)
    check_int("jobs", ns.jobs, 1, 64, optional=True)
    foreign = [name for name in entries(ns.output_dir) if not any(fnmatch(name, p) for p in DEMO_ENTRIES)]
    if foreign:
        raise ValueError(f"--output-dir {ns.output_dir} holds files that are not a dove demo's ({', '.join(foreign[:5])}"
                         f"); `dove demo` resumes its stages in an earlier demo folder, so choose an empty folder or "
                         "one written by `dove demo`.")


__all__ = ["check_compare", "check_demo", "check_encode", "check_export", "check_float", "check_resume",
           "interrupted_advice", "load_task_yaml"]
