"""`dove demo`: the whole pipeline at tiny scale on the embedded data, resumable stage by stage.

1. DOVE tokenizer (all threads);
2. in parallel, one process each: Q-DOVE (text queries, from the DOVE checkpoint) | the tiny LLaVA on the grid
   tower, then DOVE adaptive LoRA on it, then the lmms-eval runs of the grid and DOVE rows — both branches need
   only stage 1, and tiny models use a second thread poorly, so two one-thread processes finish sooner than the
   same work in sequence. The LLaVA branch is the shorter one (on the 2-core CPU: 12 minutes of Q-DOVE against 10
   of LLaVA), so when it ends, Q-DOVE takes every thread for its remaining steps;
3. Q-DOVE LoRA, started from the DOVE LoRA (needs both branches), with every thread;
4. the lmms-eval comparison (accuracy, tokens per image and latency of every tower mode) as the closing report; the
   runs of stage 2 are reused.

With `language_model` (`dove demo --language-model PATH`, e.g. SmolLM2-135M-Instruct's GGUF file), stages 2-4 run
LLaVA-1.5's recipe on that pretrained LM instead of the tiny from-scratch one: in stage 2 the grid and DOVE rows
(align, then finetune) train beside Q-DOVE and take every thread once it ends; stage 3 is the Q-DOVE row; stage 4
times the three rows side by side (tower + LM, prefill + answer) on a share of the held-out questions.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..presets import QDOVE_DEMO_SCHEDULE
from .stages import finished_stage


def _tokenizer_args(output_dir: Path, seed: int, query: bool):
    from train_tokenizer.config import TrainingArguments

    if not query:
        return TrainingArguments(output_dir=str(output_dir / "tokenizer"), preset="tiny", seed=seed, resume=True)
    return TrainingArguments(output_dir=str(output_dir / "qdove"), preset="tiny", seed=seed, resume=True, query=True,
                             init_from=str(output_dir / "tokenizer"), **QDOVE_DEMO_SCHEDULE)


def _train_tokenizer(output_dir: str, seed: int, query: bool, threads: int | None = None,
                     step_callback=None) -> str:
    """One tokenizer stage; returns its text report (a top-level function: it runs in a worker process).
    `step_callback` goes to `train` (e.g. a `ThreadBoost`)."""
    from train_tokenizer.train import train

    from train_tokenizer.summary import format_report

    if threads:
        _set_threads(threads)
    args = _tokenizer_args(Path(output_dir), seed, query)
    return format_report(finished_stage(args) or train(args, step_callback=step_callback), args.output_dir)


class ThreadBoost:
    """A training step callback: once `event` is set (the sibling worker has finished), go on with `threads`
    threads. Torch resizes its thread pool between steps. The event may live in a manager process, so it is asked
    once per step until it is set, never after."""

    def __init__(self, event, threads: int):
        self.event, self.threads, self.boosted = event, threads, False

    def __call__(self, steps_done: int) -> None:
        if not self.boosted and self.event.is_set():
            _set_threads(self.threads)
            self.boosted = True


def _llava_stages(output_dir: str, seed: int, only: tuple[str, ...] | None = None,
                  threads: int | None = None) -> tuple[str, dict]:
    """LLaVA stages (`base`, `dove`, `qdove`; all and the report when `only` is None; finished ones are reused)."""
    from .llava_demo import run_llava_demo

    if threads:
        _set_threads(threads)
    root = Path(output_dir)
    return run_llava_demo(str(root / "tokenizer"), str(root / "qdove"), output_dir, seed=seed, only=only)


def _llava_branch(output_dir: str, seed: int, threads: int | None = None) -> None:
    """Stage 2's LLaVA worker: the grid base and the DOVE LoRA, then their lmms-eval runs (reused by stage 4)."""
    from eval.compare import demo_comparison

    _llava_stages(output_dir, seed, ("base", "dove"), threads)
    demo_comparison(output_dir, seed=seed, runs_only=True)


def _llava_lm_stages(output_dir: str, seed: int, language_model: str, only: tuple[str, ...] | None = None,
                     threads: int | None = None, step_callback=None) -> tuple[str, dict]:
    """The LLaVA rows on a pretrained LM (`grid`, `dove`, `qdove`; all and the report when `only` is None)."""
    from .llava_demo import run_llava_lm_demo

    if threads:
        _set_threads(threads)
    root = Path(output_dir)
    return run_llava_lm_demo(language_model, str(root / "tokenizer"), str(root / "qdove"), output_dir, seed=seed,
                             only=only, step_callback=step_callback)


def _qdove_beside(root: Path, seed: int, threads: int, branch, *branch_args, boost_branch: bool) -> str:
    """Stage 2's two spawned workers: Q-DOVE's training beside `branch(root, seed, *branch_args, threads[, boost])`;
    returns Q-DOVE's report. The worker that finishes first sets an event, and the other one (the branch when
    `boost_branch`, else Q-DOVE) then goes on with every thread (`ThreadBoost`)."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        first_done = manager.Event()
        boost = ThreadBoost(first_done, os.cpu_count() or 2)
        qdove = pool.submit(_train_tokenizer, str(root), seed, True, threads, None if boost_branch else boost)
        other = pool.submit(branch, str(root), seed, *branch_args, threads, *([boost] if boost_branch else []))
        (qdove if boost_branch else other).add_done_callback(lambda _: first_done.set())
        report = qdove.result()
        other.result()
    return report


def _set_threads(threads: int) -> None:
    """Torch's thread count, and that of the processes started from here (the lmms-eval runs)."""
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(output_dir: str | os.PathLike = "runs/demo", seed: int = 0, llava: bool = True, jobs: int | None = None,
             log=_say, language_model: str | None = None) -> str:
    """Run every stage (each resumes or is reused when already finished) and return the markdown report, also
    written to `output_dir/report.md`.

    Args:
        output_dir: `tokenizer/`, `qdove/`, `llava_base/`, `llava_dove/`, `llava_qdove/`, `eval_compare/`.
        seed: data order and initialisation of every stage.
        llava: also train the LLaVA stages and end with the lmms-eval comparison.
        jobs: 2 runs stage 2 as two processes (the default on a machine with 2 or more cores); 1 runs every
            stage in sequence.
        language_model: LLaVA-1.5's recipe on this pretrained LM (hub id, folder or `.gguf` file) instead of the
            tiny from-scratch LM; its stages go to `llava_lm_<name>/`.
    """
    if language_model is not None and llava:
        return _run_lm_demo(Path(output_dir), seed, jobs, log, language_model)
    from eval.compare import demo_comparison

    started = time.time()
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = jobs or (2 if (os.cpu_count() or 1) >= 2 else 1)
    total = 4 if llava else 2
    log(f"[dove demo] stage 1/{total}: training the tiny DOVE tokenizer into {root / 'tokenizer'}")
    reports = [_train_tokenizer(str(root), seed, query=False)]
    parallel = llava and jobs > 1
    if parallel:
        threads = max(1, (os.cpu_count() or 2) // 2)
        log(f"[dove demo] stage 2/{total}: in parallel ({threads} thread(s) per process): Q-DOVE into "
            f"{root / 'qdove'} | LLaVA on the grid tower, then DOVE LoRA and their lmms-eval runs, into {root}")
        reports.append(_qdove_beside(root, seed, threads, _llava_branch, boost_branch=False))
    else:
        log(f"[dove demo] stage 2/{total}: Q-DOVE (text queries) from it into {root / 'qdove'}")
        reports.append(_train_tokenizer(str(root), seed, query=True))
    if llava:
        if not parallel:
            log(f"[dove demo] stage 3/{total}: LLaVA stages (grid base, DOVE LoRA, Q-DOVE LoRA) into {root}")
        else:
            log(f"[dove demo] stage 3/{total}: Q-DOVE LoRA (from the DOVE LoRA) on the grid LLaVA into "
                f"{root / 'llava_qdove'}")
        table, _ = _llava_stages(str(root), seed)  # every stage (reused when already trained) and the table
        reports.append(table)
        log(f"[dove demo] stage 4/{total}: lmms-eval comparison of the tower modes into {root / 'eval_compare'}")
    comparison = demo_comparison(root, seed=seed)  # closing report: accuracy vs tokens through lmms-eval
    if comparison:
        reports.append(comparison)
    report = "\n\n".join(reports) + f"\n\ndemo finished in {time.time() - started:.0f} s"
    (root / "report.md").write_text("# dove demo report\n\n```\n" + report + "\n```\n")
    return report


def _run_lm_demo(root: Path, seed: int, jobs: int | None, log, language_model: str) -> str:
    """`run_demo` with the LLaVA rows on a pretrained language model (see the module docstring)."""
    from .llava_demo import lm_demo_dir, lm_latency_report

    started = time.time()
    root.mkdir(parents=True, exist_ok=True)
    jobs = jobs or (2 if (os.cpu_count() or 1) >= 2 else 1)
    log(f"[dove demo] stage 1/4: training the tiny DOVE tokenizer into {root / 'tokenizer'}")
    reports = [_train_tokenizer(str(root), seed, query=False)]
    lm_root = lm_demo_dir(root, language_model)
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 2) // 2)
        log(f"[dove demo] stage 2/4: in parallel ({threads} thread(s) per process): Q-DOVE into {root / 'qdove'} | "
            f"LLaVA on {language_model} (grid and DOVE rows: align, finetune) into {lm_root}")
        # the LLaVA rows are the longer branch here: they take Q-DOVE's threads once it is done
        reports.append(_qdove_beside(root, seed, threads, _llava_lm_stages, language_model, ("grid", "dove"),
                                     boost_branch=True))
    else:
        log(f"[dove demo] stage 2/4: Q-DOVE (text queries) from it into {root / 'qdove'}")
        reports.append(_train_tokenizer(str(root), seed, query=True))
    log(f"[dove demo] stage 3/4: LLaVA rows on {language_model} (Q-DOVE on the DOVE adapter) into {lm_root}")
    table, _ = _llava_lm_stages(str(root), seed, language_model)
    reports.append(table)
    log(f"[dove demo] stage 4/4: the rows' latency side by side (tower + LM, prefill + answer) into {lm_root}")
    reports.append(lm_latency_report(root, language_model, seed=seed))
    report = "\n\n".join(reports) + f"\n\ndemo finished in {time.time() - started:.0f} s"
    (lm_root / "report.md").write_text(f"# dove demo report (LLaVA on {language_model})\n\n```\n" + report + "\n```\n")
    return report
