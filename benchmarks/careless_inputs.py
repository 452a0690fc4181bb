"""Issue 22's careless-user cases, re-run through the real `dove` command line, with what each gives now.

Builds micro models and data in a temporary folder (the inputs of the command tests: `tests/commands/conftest.py`
`build_inputs`, plus a real 20000x20000 PNG and a finished micro `dove train` run), then runs every concrete case
the issue names (data loss, writes outside the output folder, silent wrong results, tracebacks and hangs,
misleading errors) as `python -m dove_vlm ...`, one subprocess per case under a time limit, in a fresh sandbox
folder per case (its working directory, so relative `--output-dir`s land there). Ctrl-C is a real SIGINT to the
run's process group once the run holds its output folder; "two runs at once" starts a second run while the first
holds the folder. A case is handled when all of these hold:

- exit: the expected code (2 for a refusal, 0 for a run that is fine, 130 after Ctrl-C); a refusal ends with
  one `dove CMD: error: ...` line;
- says: that line (or, for exit 0 and 130, stderr) names what the issue asks for (the flag, the file, the record,
  the real cause) and not the misleading advice the issue quotes;
- no traceback on stderr, and no hang (the time limit);
- inputs: every input (the shared inputs folder and the case's own copies) unchanged, by SHA-256;
- writes: nothing written outside the output folder (every file of the sandbox and the inputs, by SHA-256), and
  a refused run wrote nothing there either (its lock files apart).

Prints a table (case, command, exit code, the error line or first line of stderr, seconds, checks, handled) and
exits 1 when a case is not handled.

Usage:
    python benchmarks/careless_inputs.py [--only TEXT ...] [--list] [--limit SECONDS] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.commands.conftest import FAST_LLAVA, FAST_TRAIN

LOCK_NAMES = (".dove-run.lock", ".dove-run.json")
# `dove train` flags without the micro overrides (for --init-from, whose checkpoint's config is used)
TRAIN_NO_OVERRIDES = FAST_TRAIN[:-2]
TASK = "{in}/task/tasks/dove_vqa_test.yaml"
NOBODY = 65534
HOMES: list[str] = []  # the unprivileged user's home folders (removed at the end)


@dataclasses.dataclass
class Case:
    """One careless call. `argv` may hold `{in}` and `{extra}` (the inputs folders) and `{box}` (this case's
    sandbox, also the working directory)."""

    name: str
    group: str
    argv: list[str]
    says: tuple[str, ...] = ()  # in the error line (exit 2) or anywhere on stderr (exit 0, 130)
    never: tuple[str, ...] = ()  # nowhere on stderr or stdout
    expect: int = 2
    copies: dict[str, str] = dataclasses.field(default_factory=dict)  # sandbox name -> inputs name (more inputs)
    action: str = "run"  # run | interrupt (SIGINT once the run holds its folder) | second (a run while one holds it)
    as_nobody: bool = False  # run as an unprivileged user (root reads any file, so "permission denied" needs one)
    prepare: Callable[[Path], None] | None = None  # more set-up in the sandbox
    after: Callable[[Path], str | None] | None = None  # a last check on the sandbox: None or what is wrong
    quick: float | None = None  # refused within this many seconds (before any work)


@dataclasses.dataclass
class Result:
    case: Case
    code: int | None
    message: str
    seconds: float
    checks: dict[str, bool]
    detail: str = ""

    @property
    def handled(self) -> bool:
        return all(self.checks.values())


def _finished(box: Path) -> None:
    shutil.copytree(box.parent / "inputs_extra" / "finished", box / "run")


def _locked_image(box: Path) -> None:
    shutil.copy(box.parent / "inputs" / "images" / "red.png", box / "locked.png")
    os.chmod(box / "locked.png", 0)


def _vqgan_steps(expected: int) -> Callable[[Path], str | None]:
    def check(box: Path) -> str | None:
        stage = json.loads((box / "run" / "vqgan" / "dove_vqgan_stage.json").read_text())
        return None if stage.get("vqgan_steps") == expected else f"vqgan stage has {stage.get('vqgan_steps')} steps"
    return check


def _absent(*names: str) -> Callable[[Path], str | None]:
    def check(box: Path) -> str | None:
        found = [n for n in names if (box / n).exists()]
        return f"written: {', '.join(found)}" if found else None
    return check


ENCODE = ["encode", "{in}/images/red.png", "--model", "{in}/dove"]
VG = "vg:{in}/vg/images:{in}/vg/regions.json"


def cases() -> list[Case]:
    """Every example of issue 22, in the issue's order, plus the Build section's image and path cases."""
    loss, out, wrong, tb, mis = ("data loss", "writes outside the output folder", "silent wrong results",
                                 "tracebacks and hangs", "errors that mislead")
    train_again = ["train", "--output-dir", "run", *FAST_TRAIN]
    return [
        Case("train --query --init-from D --output-dir D", loss,
             ["train", "--query", "--init-from", "D", "--output-dir", "D", *TRAIN_NO_OVERRIDES],
             ("--output-dir D is the input --init-from D",), copies={"D": "dove"}),
        Case("train: output folder inside the --init-from folder", loss,
             ["train", "--query", "--init-from", "D", "--output-dir", "D/sub", *TRAIN_NO_OVERRIDES],
             ("lies inside the input --init-from",), copies={"D": "dove"}, after=_absent("D/sub")),
        Case("llava-train --stage lora --base-model B --output-dir B", loss,
             ["llava-train", "--stage", "lora", "--tower", "{in}/dove", "--base-model", "B", "--output-dir", "B",
              *FAST_LLAVA], ("--output-dir B is the input --base-model B",), copies={"B": "base"}),
        Case("llava-train: output folder that contains the base model", loss,
             ["llava-train", "--stage", "lora", "--tower", "{in}/dove", "--base-model", "runs/B", "--output-dir",
              "runs", *FAST_LLAVA], ("contains the input --base-model",), copies={"runs/B": "base"}),
        Case("two runs started into one folder at once (the second)", loss,
             ["train", "--output-dir", "run", *FAST_TRAIN, "--max-steps", "100000"],
             ("--output-dir run is in use by another run", "pid ", "started"), action="second"),
        Case("two runs into one folder, one after the other", loss, train_again,
             ("--output-dir run already holds files", "--resume", "--overwrite"), prepare=_finished),
        Case("finished run trained again, other VQGAN settings, no --resume", loss,
             [*train_again, "--vqgan-steps", "2"], ("already holds files", "--resume", "--overwrite"),
             prepare=_finished),
        Case("finished run trained again, other VQGAN settings, --resume", loss,
             [*train_again, "--vqgan-steps", "2", "--resume"], ("--vqgan-steps 1 -> 2", "--overwrite"),
             prepare=_finished),
        Case("finished run trained again, other VQGAN settings, --overwrite", loss,
             [*train_again, "--vqgan-steps", "2", "--overwrite"],
             ("--overwrite: removed the previous run's", "vqgan"), expect=0, prepare=_finished,
             after=_vqgan_steps(2)),
        Case("eval export --task-name ../escaped --output-dir ex/tr", out,
             ["eval", "export", "--task-name", "../escaped", "--output-dir", "ex/tr", "--num-scenes", "1"],
             ("--task-name", "letters, digits and _"), after=_absent("ex")),
        Case("eval export: a data file's image path ../outside.png", out,
             ["eval", "export", "--from-file", "{in}/vqa_escape.json", "--output-dir", "ex"],
             ("vqa_escape.json", "record 0", "points outside the file's folder")),
        Case("encode --eos-threshold nan", wrong, [*ENCODE, "--eos-threshold", "nan"], ("--eos-threshold",)),
        Case("encode --eos-threshold 1.5", wrong, [*ENCODE, "--eos-threshold", "1.5"], ("--eos-threshold",)),
        Case("encode --eos-threshold -1", wrong, [*ENCODE, "--eos-threshold", "-1"], ("--eos-threshold",)),
        Case("encode --min-tokens 20 --max-tokens 5", wrong, [*ENCODE, "--min-tokens", "20", "--max-tokens", "5"],
             ("min_tokens (20)",)),
        Case("encode --min-tokens -3", wrong, [*ENCODE, "--min-tokens", "-3"], ("--min-tokens",)),
        Case("train --model-overrides '{\"hiden_size\": 32}'", wrong,
             ["train", "--output-dir", "ov", "--model-overrides", '{"hiden_size": 32}'],
             ("'hiden_size'", "valid keys"), after=_absent("ov"), quick=30),
        Case("eval export: VQA question a number, answer a list", wrong,
             ["eval", "export", "--from-file", "{in}/vqa_types.json", "--output-dir", "ex"],
             ("vqa_types.json", "record 0", "'question' must be a string")),
        Case("eval export: a record whose image is a text file", wrong,
             ["eval", "export", "--from-file", "{in}/vqa_text_image.json", "--output-dir", "ex"],
             ("record 0", "text.png", "not an image")),
        Case("encode a 20000x20000 PNG (90 KB file)", tb, ["encode", "{extra}/bomb.png", "--model", "{in}/dove"],
             ("bomb.png", "20000x20000", "--max-image-pixels")),
        Case("train --learning-rate inf", tb, ["train", "--output-dir", "out", "--learning-rate", "inf"],
             ("--learning-rate",), after=_absent("out"), quick=30),
        Case("train --num-train-scenes 0", tb, ["train", "--output-dir", "out", "--num-train-scenes", "0"],
             ("--num-train-scenes",), after=_absent("out"), quick=30),
        Case("train --query --data vg:... (a region without y)", tb,
             ["train", "--query", "--data", VG, "--output-dir", "vg", *FAST_TRAIN],
             ("regions.json", "entry 0, regions[0]", "'y'")),
        Case("llava-train: tiny LLaVA, width 30 with 4 heads", tb,
             ["llava-train", "--stage", "base", "--tower", "{in}/dove", "--hidden-size", "30",
              "--num-attention-heads", "4", "--output-dir", "out"], ("not divisible",), after=_absent("out"),
             quick=30),
        Case("eval compare: a task YAML that does not parse", tb,
             ["eval", "compare", "--task", "{in}/badtask.yaml", "--grid-model", "{in}/base", "--output-dir", "cmp"],
             ("badtask.yaml", "not valid YAML", "line 3"), after=_absent("cmp"), quick=30),
        Case("eval compare --limit 0", tb,
             ["eval", "compare", "--task", TASK, "--grid-model", "{in}/base", "--limit", "0", "--output-dir", "cmp"],
             ("--limit must be >= 1",), after=_absent("cmp"), quick=30),
        Case("llava-train: a wrong weights file in the --base-model folder", tb,
             ["llava-train", "--stage", "lora", "--tower", "{in}/dove", "--base-model", "{in}/wrongfile",
              "--output-dir", "wf", *FAST_LLAVA], ("wrongfile", "do not fit its config.json", "another model's"),
             never=("ignore_mismatched_sizes", "LOAD REPORT"), after=_absent("wf"), quick=30),
        Case("eval compare: a wrong weights file in the --grid-model folder", tb,
             ["eval", "compare", "--task", TASK, "--grid-model", "{in}/wrongfile", "--output-dir", "cmp"],
             ("wrongfile", "do not fit its config.json"), never=("ignore_mismatched_sizes", "LOAD REPORT"),
             after=_absent("cmp"), quick=30),
        Case("eval compare --grid-model given a DOVE tokenizer folder", tb,
             ["eval", "compare", "--task", TASK, "--grid-model", "{in}/dove", "--output-dir", "cmp"],
             ("--grid-model", "DOVE tokenizer checkpoint"), after=_absent("cmp"), quick=30),
        Case("encode --model a missing local folder", mis,
             ["encode", "{in}/images/red.png", "--model", "runs_dove_missing"],
             ("--model runs_dove_missing", "no such file or folder"), never=("Hub", "connect")),
        Case("encode a permission-denied image (chmod 000, unprivileged user)", mis,
             ["encode", "locked.png", "--model", "{in}/dove"], ("locked.png", "permission denied"),
             never=("corrupt", "truncated"), prepare=_locked_image, as_nobody=True),
        Case("encode --model a folder whose config.json is a list", mis,
             ["encode", "{in}/images/red.png", "--model", "{in}/listcfg"], ("config.json", "holds a JSON list")),
        Case("eval export: a non-UTF-8 JSONL file", mis,
             ["eval", "export", "--from-file", "{in}/vqa_latin1.jsonl", "--output-dir", "ex"],
             ("vqa_latin1.jsonl, line 2", "not UTF-8")),
        Case("eval export: a JSONL line cut short", mis,
             ["eval", "export", "--from-file", "{in}/vqa_cut.jsonl", "--output-dir", "ex"],
             ("vqa_cut.jsonl, line 3", "cut short")),
        Case("train --data a datasets folder without an image column", mis,
             ["train", "--data", "{in}/ds_noimage", "--output-dir", "ds", *FAST_TRAIN],
             ("no image column", "label, text"), never=("image_column=",)),
        Case("Ctrl-C in eval compare", mis,
             ["eval", "compare", "--task", TASK, "--grid-model", "{in}/base", "--limit", "2", "--output-dir", "cmp"],
             ("interrupted", "reused"), never=("--resume",), expect=130, action="interrupt"),
        Case("Ctrl-C in train (its advice: --resume)", mis,
             ["train", "--output-dir", "run", *FAST_TRAIN, "--max-steps", "100000"], ("--resume",), expect=130,
             action="interrupt"),
        Case("train --eval-scenes -2", mis, ["train", "--output-dir", "out", "--eval-scenes", "-2"],
             ("--eval-scenes",), after=_absent("out"), quick=30),
        Case("encode a truncated PNG", mis, ["encode", "{in}/cut.png", "--model", "{in}/dove"],
             ("cut.png", "truncated")),
        Case("encode a text file named .png", mis, ["encode", "{in}/text.png", "--model", "{in}/dove"],
             ("text.png", "not an image")),
    ]


# --- inputs -------------------------------------------------------------------------------------------------------


def build(root: Path, log=print) -> None:
    """`root/inputs` (the command tests' inputs) and `root/inputs_extra` (a real 20000x20000 PNG and a finished
    micro `dove train` run), both read-only to the cases."""
    from PIL import Image

    from tests.commands.conftest import build_inputs

    started = time.monotonic()
    (root / "inputs").mkdir(parents=True, exist_ok=True)
    with open(root / "build.log", "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        build_inputs(root / "inputs")  # (its progress bars go to build.log)
    extra = root / "inputs_extra"
    extra.mkdir(exist_ok=True)
    Image.new("1", (20000, 20000), 1).save(extra / "bomb.png")  # constant colour: a 90 KB file
    proc = subprocess.run([sys.executable, "-m", "dove_vlm", "train", "--output-dir", str(extra / "finished"),
                           *FAST_TRAIN], check=False, env=_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"building the finished run failed:\n{proc.stderr[-3000:]}")
    for path in (root, *root.rglob("*")):  # readable by the unprivileged user of the permission case
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else path.stat().st_mode | 0o444)
    log(f"inputs built in {time.monotonic() - started:.0f} s")


def _env(home: str | None = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.setdefault("OMP_NUM_THREADS", "1")
    if home is not None:
        env.update(HOME=home, MPLCONFIGDIR=home, XDG_CACHE_HOME=home)
    return env


# --- checks -------------------------------------------------------------------------------------------------------


def paths_outside(root: Path, skip: Path | None = None):
    """`(path, is_folder)` for every entry under `root` (os.walk's order), apart from `skip` and what it holds."""
    for dirpath, dirnames, filenames in os.walk(root):
        path = Path(dirpath)
        if skip is not None and (path == skip or skip in path.parents):
            dirnames[:] = []
            continue
        for name, is_folder in [(d, True) for d in dirnames] + [(f, False) for f in filenames]:
            if path / name != skip:
                yield path / name, is_folder


def _files(root: Path, skip: Path | None = None) -> dict[str, str]:
    """SHA-256 of every file under `root` (names relative to it), apart from those under `skip`."""
    found = {}
    for item, is_folder in paths_outside(root, skip):
        name = str(item.relative_to(root))
        if is_folder:
            found[name + "/"] = "folder"
        elif item.is_file() and not item.is_symlink():
            try:
                found[name] = hashlib.sha256(item.read_bytes()).hexdigest()
            except PermissionError:
                found[name] = f"unreadable {item.stat().st_size}"
        else:
            found[name] = "other"
    return found


def _output_dir(argv: list[str], box: Path) -> Path | None:
    flags = [i for i, a in enumerate(argv) if a == "--output-dir"]
    return Path(os.path.abspath(box / argv[flags[-1] + 1])) if flags else None


def _diff(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


# --- running ------------------------------------------------------------------------------------------------------


def _start(argv: list[str], box: Path, as_nobody: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "dove_vlm", *argv]
    home = None
    if as_nobody and os.geteuid() == 0:
        home = tempfile.mkdtemp(prefix="careless_home_")
        os.chown(home, NOBODY, NOBODY)
        HOMES.append(home)
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.Popen(command, cwd=box, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _holds_folder(folder: Path, proc: subprocess.Popen, limit: float) -> bool:
    """Wait until the run `proc` holds `folder` (its holder record exists), at most `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if (folder / LOCK_NAMES[1]).is_file():
            return True
        time.sleep(0.2)
    return False


def _finish(proc: subprocess.Popen, limit: float) -> tuple[int | None, str, str]:
    try:
        out, err = proc.communicate(timeout=limit)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err + f"\n[careless_inputs: killed after {limit:.0f} s: a hang]"


def _call(case: Case, argv: list[str], box: Path, limit: float) -> tuple[int | None, str, str, str]:
    """Run the case; returns (exit code or None after the time limit, stdout, stderr, a note)."""
    out_dir = _output_dir(argv, box)
    if case.action == "run":
        return (*_finish(_start(argv, box, case.as_nobody), limit), "")
    first = _start(argv, box, False)
    if not _holds_folder(out_dir, first, limit):
        code, out, err = _finish(first, 10)
        return code, out, err, "the run never held its output folder"
    if case.action == "interrupt":
        time.sleep(2.0)  # into its work
        os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends (to the whole process group)
        return (*_finish(first, limit), "")
    # "second": the same command again while the first run holds the folder
    code, out, err = _finish(_start(argv, box, False), limit)
    alive = first.poll() is None
    os.killpg(first.pid, signal.SIGINT)
    first_code, _, first_err = _finish(first, 60)
    note = ("" if alive else "the first run ended before the second was refused; ") + \
        f"the first run, after Ctrl-C: exit {first_code}, {_message(first_code, first_err)!r}"
    return code, out, err, note


def _message(code: int | None, err: str) -> str:
    """The `dove CMD: error:` line, else the last `dove ...` line, else the first line of stderr."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line and line.startswith("dove ")]
    if errors:
        return errors[-1]
    notes = [line for line in lines if line.startswith("dove ")]
    return notes[-1] if notes else (lines[0] if lines else "")


def run_case(case: Case, root: Path, limit: float = 180.0) -> Result:
    """Run one case in a fresh sandbox `root/case-*` (next to `root/inputs`) and check it."""
    box = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    box.chmod(0o777)
    inputs = root / "inputs"
    for name, source in case.copies.items():
        (box / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(inputs / source, box / name)
    if case.prepare is not None:
        case.prepare(box)
    argv = [a.replace("{in}", str(inputs)).replace("{extra}", str(root / "inputs_extra")).replace("{box}", str(box))
            for a in case.argv]
    out_dir = _output_dir(argv, box)
    copies = [Path(os.path.abspath(box / name)) for name in case.copies]
    overlaps = out_dir is not None and any(out_dir == c or c in out_dir.parents or out_dir in c.parents
                                           for c in copies)
    skip = None if overlaps else out_dir  # an output folder that overlaps an input is checked whole
    before_out = _files(out_dir) if out_dir is not None and out_dir.is_dir() else None
    before = (_files(root, skip), {c: _files(c) for c in copies})
    started = time.monotonic()
    code, out, err, note = _call(case, argv, box, limit)
    seconds = time.monotonic() - started
    message = _message(code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    checks = {"exit": code == case.expect}
    if case.expect == 2:
        checks["exit"] &= bool(lines) and lines[-1].startswith("dove ") and ": error: " in lines[-1]
    where = message if case.expect == 2 else err
    checks["says"] = all(s in where for s in case.says) and not any(n in err + out for n in case.never)
    checks["no traceback"] = "Traceback" not in err and code is not None
    after = (_files(root, skip), {c: _files(c) for c in copies})
    changed_inputs = [str(c) for c in copies if before[1][c] != after[1][c]]
    changed_inputs += [k for k in _diff(before[0], after[0]) if k.startswith(("inputs/", "inputs_extra/"))]
    checks["inputs unchanged"] = not changed_inputs
    outside = [k for k in _diff(before[0], after[0]) if not k.startswith(("inputs/", "inputs_extra/"))]
    if case.expect == 2 and out_dir is not None and not overlaps and case.action != "second":
        now = _files(out_dir) if out_dir.is_dir() else None
        if now is not None:  # a refused run: only its lock files (and the empty folder) may be new
            outside += [f"{out_dir.name}/{k}" for k in _diff(before_out or {}, now) if Path(k).name not in LOCK_NAMES]
    problem = case.after(box) if case.after is not None else None
    checks["writes"] = not outside and problem is None
    if case.quick is not None:
        checks["no traceback"] &= seconds < case.quick
    detail = "; ".join(filter(None, [note, problem, f"changed inputs: {changed_inputs[:3]}" if changed_inputs else "",
                                     f"written: {outside[:3]}" if outside else ""]))
    if not all(checks.values()):
        detail += f"\n    stderr tail: {err[-1500:]}"
    shutil.rmtree(box, ignore_errors=True)
    return Result(case, code, message, seconds, checks, detail)


def short(argv: list[str], limit: int = 100) -> str:
    """The case's command line, the shared fast-run flags named (FAST_TRAIN, FAST_LLAVA: tests/commands/conftest.py)."""
    tokens, i = [], 0
    while i < len(argv):
        for name, flags in (("FAST_TRAIN", FAST_TRAIN), ("FAST_TRAIN[:-2]", TRAIN_NO_OVERRIDES),
                            ("FAST_LLAVA", FAST_LLAVA)):
            if argv[i : i + len(flags)] == flags:
                tokens.append(name)
                i += len(flags)
                break
        else:
            tokens.append(argv[i].replace("{in}/", "").replace("{extra}/", ""))
            i += 1
    text = "dove " + " ".join(t if t and " " not in t else repr(t) for t in tokens)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(results: list[Result]) -> str:
    names = ("exit", "says", "no traceback", "inputs unchanged", "writes")
    rows = ["| # | case | command | exit | stderr (error line, else first line) | s | "
            + " | ".join(names) + " | handled |", "|" + "---|" * (7 + len(names))]
    for i, r in enumerate(results, 1):
        message = r.message.replace("|", "\\|")
        message = message if len(message) <= 300 else message[:297] + "..."
        rows.append(f"| {i} | {r.case.name} | `{short(r.case.argv)}` | {r.code} | {message} | {r.seconds:.0f} | "
                    + " | ".join("ok" if r.checks[n] else "FAIL" for n in names)
                    + f" | {'yes' if r.handled else 'NO'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run the cases whose name holds any of these")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--limit", type=float, default=180.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--keep", default=None, help="build the inputs in this folder and keep it")
    args = parser.parse_args(argv)
    chosen = [c for c in cases() if args.only is None or any(t in c.name for t in args.only)]
    if args.list or not chosen:
        print("\n".join(f"{c.group}: {c.name}" for c in chosen) or "no case matches --only")
        return 0 if chosen else 2
    root = Path(args.keep or tempfile.mkdtemp(prefix="careless_"))
    try:
        if not (root / "inputs_extra" / "finished").is_dir():  # a kept folder's inputs are reused
            build(root, log=lambda m: print(m, file=sys.stderr))
        results = []
        for case in chosen:
            results.append(run_case(case, root, args.limit))
            r = results[-1]
            print(f"[{len(results)}/{len(chosen)}] {'handled' if r.handled else 'NOT HANDLED'}: {case.name} "
                  f"({r.seconds:.0f} s)", file=sys.stderr, flush=True)
    finally:
        for home in HOMES:
            shutil.rmtree(home, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    bad = [r for r in results if not r.handled]
    print(f"\n{len(results) - len(bad)} of {len(results)} cases handled")
    for r in bad:
        failed = ", ".join(k for k, v in r.checks.items() if not v)
        print(f"NOT HANDLED: {r.case.name} ({failed}) {r.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
