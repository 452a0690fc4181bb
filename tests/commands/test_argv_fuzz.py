"""Property-based test of every subcommand's argument space: hypothesis draws argv (each flag a valid value or an
edge/invalid one: out-of-range and non-finite numbers, wrong kinds of folders, missing and damaged files, unsafe
names, an output folder that is an input, lies inside one, is a file or holds an earlier run) on micro models and
data, and runs `dove` in process under a time limit. For every call:

- the exit code is 0 or 2 (argparse errors included), and a failure ends in one `dove CMD: error:` line;
- nothing on stderr is a traceback, and no call runs past its limit (a hang);
- nothing outside the `--output-dir` changes (every other path of the sandbox: names, sizes, modification times);
- no input changes (SHA-256 of every input file before and after).

Valid values are cheap (one step, a few scenes), so a fully valid draw is a tiny real run; `dove eval compare` and
`dove demo` draws always hold at least one invalid value (a valid one starts lmms-eval or the whole demo).
`ARGV_FUZZ_EXAMPLES` (environment) scales the examples per command; the counts run are printed (pytest -s)."""

import collections
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.commands.conftest import MICRO_JSON, run_dove
from tests.commands.test_validation import digest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from careless_inputs import paths_outside  # noqa: E402  (the benchmark's tree walk: one definition of a change)

SCALE = float(os.environ.get("ARGV_FUZZ_EXAMPLES", "1"))
RUN = collections.Counter()  # calls per command, and how many ended with 0 (a real tiny run)
SECONDS = collections.Counter()


def fuzz(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


BAD_INTS = ["0", "-1", "x", "1.5", "", "nan", "-99999999999999999999"]
BAD_FLOATS = ["nan", "inf", "-inf", "-1", "abc", "1e999", ""]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def slot(draw, flag, good, bad=(), optional=False, switch=False):
    """`(argv tokens, valid)` for one flag: mostly a good value, sometimes a bad one, sometimes left out."""
    if optional and draw(st.integers(0, 2)) == 0:
        return [], True
    has_bad = isinstance(bad, st.SearchStrategy) or len(bad) > 0
    if not good or (has_bad and draw(st.integers(0, 99)) >= 70):
        value = draw(st.sampled_from(list(bad)) if not isinstance(bad, st.SearchStrategy) else bad)
        return ([flag] if switch else [flag, value]), False
    value = draw(st.sampled_from(list(good)))
    return ([flag] if switch else [flag, value]), True


def output_choices(inputs):
    """`--output-dir` values in the sandbox: a fresh folder (good), one holding an earlier run's file, or a file."""
    return ["{sandbox}/out"], ["{sandbox}/full", "{sandbox}/file.txt"]


@st.composite
def overlap(draw, flag, copy):
    """Sometimes an input (`flag`, a copy in the sandbox) that the output folder is, lies inside or contains:
    appended last, so these win over the earlier draws (argparse keeps the last value)."""
    if draw(st.integers(0, 3)):
        return []
    where = draw(st.sampled_from([copy, copy + "/inside", "{sandbox}"]))
    return [flag, copy, "--output-dir", where]


@st.composite
def argv_of(draw, slots, require_invalid=False):
    argv, valid = [], True
    for strategy in slots:
        tokens, ok = draw(strategy)
        argv += tokens
        valid &= ok
    if require_invalid:
        assume(not valid)
    return argv


COPIES = {"{sandbox}/model": "dove", "{sandbox}/base": "base", "{sandbox}/data": "images"}


def _sandbox(argv, inputs: Path) -> Path:
    """A fresh folder per call: `full/` (an earlier run's file), `file.txt`, and copies of the inputs the argv
    names there (`model/`, `base/`, `data/`)."""
    root = Path(tempfile.mkdtemp(prefix="argv_"))
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("an earlier run's file")
    (root / "file.txt").write_text("a file where a folder is expected")
    for token, source in COPIES.items():
        if any(token in a for a in argv):
            shutil.copytree(inputs / source, root / token.split("/")[-1])
    if any("{sandbox}/data" in a for a in argv):
        (root / "data" / "vqa.json").write_text(json.dumps([{"image": "red.png", "question": "q?", "answer": "a"}]))
    return root


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _tree(root: Path, skip: Path | None) -> dict:
    found = {}
    for item, _ in paths_outside(root, skip):
        stat = item.lstat()
        found[str(item)] = (stat.st_size if item.is_file() else -1, stat.st_mtime_ns if item.is_file() else 0)
    return found


def check_drawn(data, inputs: Path, command: str, head: list[str], slots: list, flag: str, copy: str,
                limit: float = 120.0) -> int:
    """`dove COMMAND *head *argv`, the argv drawn from `slots` plus an output folder that may overlap `flag`'s input
    (`overlap`), run and checked by `check_call`."""
    argv = data.draw(argv_of(slots)) + data.draw(overlap(flag, copy))
    return check_call(command, [*command.split(), *head, *argv], inputs, limit)


def check_call(command: str, argv: list[str], inputs: Path, limit: float = 120.0) -> int:
    sandbox = _sandbox(argv, inputs)
    argv = [a.replace("{sandbox}", str(sandbox)) for a in argv]
    flags = [i for i, a in enumerate(argv) if a == "--output-dir"]
    output = Path(os.path.abspath(argv[flags[-1] + 1])) if flags else None
    named = [Path(a) for i, a in enumerate(argv)  # the inputs given on the command line (absolute paths here)
             if os.path.isabs(a) and os.path.exists(a) and not (i and argv[i - 1] == "--output-dir")]
    # Everything outside the output folder is checked; all of it when the output overlaps an input.
    skip = output if output is not None and not any(_overlaps(output, n) for n in named) else None
    before = (_tree(sandbox, skip), _tree(inputs, skip), digest(inputs), {n: _digest(n) for n in named})
    cwd = os.getcwd()
    os.chdir(sandbox)
    started = time.monotonic()
    try:
        code, _, err = run_dove(argv, limit=limit)
    finally:
        os.chdir(cwd)
    SECONDS[command] += time.monotonic() - started
    RUN[command] += 1
    RUN[f"{command} (exit 0)"] += code == 0
    shown = f"dove {' '.join(argv)}\n{err[-3000:]}"
    assert code in (0, 2), shown
    assert "Traceback" not in err, shown
    if code == 2:
        last = [line for line in err.splitlines() if line.strip()][-1]
        assert last.startswith(f"dove {command}: error: "), shown
    for name, a, b in zip(("outside --output-dir", "in the inputs folder"), before[:2],
                          (_tree(sandbox, skip), _tree(inputs, skip))):
        changed = sorted(set(a.items()) ^ set(b.items()))
        assert not changed, f"written {name}: {changed[:5]}\n{shown}"
    if skip is None or not _overlaps(skip, inputs):
        assert digest(inputs) == before[2], f"an input changed: {shown}"
    assert {n: _digest(n) for n in named} == before[3], f"an input named on the command line changed: {shown}"
    shutil.rmtree(sandbox, ignore_errors=True)
    return code


def _digest(path: Path) -> str:
    if path.is_dir():
        return digest(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nargv fuzz: {sum(v for k, v in RUN.items() if '(' not in k)} generated calls: "
          + ", ".join(f"{k} {v}" for k, v in sorted(RUN.items()))
          + "; seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(SECONDS.items())))


def _p(inputs, *names):
    return [str(inputs.joinpath(*name.split("/"))) for name in names]


@fuzz(30)
@given(data=st.data())
def test_encode_argv(inputs, data):
    images = data.draw(st.lists(st.sampled_from(
        _p(inputs, "images/red.png", "images/blue.png", "text.png", "cut.png", "bomb.png", "missing.png", "images")),
        min_size=1, max_size=3))
    argv = data.draw(argv_of([
        slot("--model", _p(inputs, "dove", "qdove"), _p(inputs, "base", "lora", "listcfg", "missing", "text.png")
             + ["org/not_cached", "runs_missing"]),
        slot("--max-tokens", ["4", "16"], BAD_INTS + ["99"], optional=True),
        slot("--min-tokens", ["1", "2"], BAD_INTS + ["20"], optional=True),
        slot("--eos-threshold", ["0.3", "0.7"], BAD_FLOATS + ["0", "1", "1.5", "-0.5"], optional=True),
        slot("--query", ["", "the red circle", "what colour is it ?"], TEXT, optional=True),
        slot("--batch-size", ["1", "2", "32"], BAD_INTS, optional=True),
        slot("--max-image-pixels", ["none", "100000000"], ["0", "-5", "x", "100"], optional=True),
        slot("--json", [None], optional=True, switch=True),
        slot("--features", [None], optional=True, switch=True),
    ]))
    check_call("encode", ["encode", *images, *argv], inputs)


@fuzz(25)
@given(data=st.data())
def test_train_argv(inputs, data):
    good_out, bad_out = output_choices(inputs)
    vg = f"vg:{inputs / 'vg' / 'images'}:{inputs / 'vg' / 'regions.json'}"
    argv = data.draw(argv_of([
        slot("--output-dir", good_out, bad_out),
        slot("--max-steps", ["1"], BAD_INTS),
        slot("--vqgan-steps", ["1"], ["-1", "x"]),
        slot("--num-train-scenes", ["4"], BAD_INTS),
        slot("--eval-scenes", ["0"], ["-2", "x"]),
        slot("--batch-size", ["2"], BAD_INTS),
        slot("--lpips-weight", ["0"], ["-1", "nan"]),
        slot("--model-overrides", [MICRO_JSON], ['{"hiden_size": 32}', '{"max_tokens": "16"}', "[1, 2]", "{bad",
                                                 '{"hidden_size": 30}', '{"num_attention_heads": 0}']),
        slot("--learning-rate", ["0.001"], BAD_FLOATS + ["0"], optional=True),
        slot("--data", ["synthetic:4", str(inputs / "images")],
             ["synthetic:0", "synthetic:x", str(inputs / "missing"), str(inputs / "ds_noimage"), vg, "hf:"],
             optional=True),
        slot("--preset", ["tiny"], ["huge", ""], optional=True),
        slot("--truncation-prob", ["0.25"], ["1.5", "-0.1", "nan"], optional=True),
        slot("--mixed-precision", ["no"], ["fp16", "bogus"], optional=True),
        slot("--checkpoint-every", ["1"], ["0", "-1"], optional=True),
        slot("--seed", ["0", "7"], ["-1", str(2**40)], optional=True),
        slot("--resume", [None], optional=True, switch=True),
        slot("--overwrite", [None], optional=True, switch=True),
    ]))
    if data.draw(st.booleans()):  # Q-DOVE from a checkpoint (the overrides then do not apply)
        argv = [a for i, a in enumerate(argv) if a != "--model-overrides" and (i == 0 or argv[i - 1] != "--model-overrides")]
        argv += data.draw(argv_of([
            slot("--query", [None], switch=True),
            slot("--init-from", _p(inputs, "dove", "qdove"), _p(inputs, "base", "missing", "listcfg", "images"),
                 optional=True),
            slot("--query-threshold", ["running"], ["teacher", "bogus"], optional=True),
        ]))
    argv += data.draw(overlap("--init-from", "{sandbox}/model"))
    check_call("train", ["train", *argv], inputs)


@fuzz(20)
@given(data=st.data())
def test_report_argv(inputs, data):
    good_out, bad_out = output_choices(inputs)
    check_drawn(data, inputs, "report", [], [
        slot("--model", _p(inputs, "dove"), _p(inputs, "base", "lora", "listcfg", "missing", "vqa.json")),
        slot("--output-dir", good_out, bad_out),
        slot("--data", ["synthetic:2", str(inputs / "images")],
             ["synthetic:0", str(inputs / "missing"), str(inputs / "text.png"), str(inputs / "vg")]),
        slot("--sections", ["lengths", "quality", "lengths,pca"], ["bogus", "", "lengths,,x"]),
        slot("--num-images", ["2"], BAD_INTS),
        slot("--no-lpips", [None], switch=True),
        slot("--batch-size", ["2"], BAD_INTS, optional=True),
        slot("--token-counts", ["4,8"], ["0", "x", "99", "4,,8"], optional=True),
        slot("--query-model", _p(inputs, "qdove"), _p(inputs, "dove", "missing"), optional=True),
        slot("--pca-images", ["2"], ["0", "-1"], optional=True),
        slot("--overwrite", [None], optional=True, switch=True),
    ], "--model", "{sandbox}/model")


@fuzz(30)
@given(data=st.data())
def test_eval_export_argv(inputs, data):
    good_out, bad_out = output_choices(inputs)
    source = data.draw(slot("--from-file", _p(inputs, "vqa.json"), _p(
        inputs, "vqa_types.json", "vqa_text_image.json", "vqa_escape.json", "vqa_latin1.jsonl", "vqa_cut.jsonl",
        "missing.json", "images", "badtask.yaml", "dove/config.json"), optional=True))
    check_drawn(data, inputs, "eval export", source[0], [
        slot("--output-dir", good_out, bad_out),
        slot("--task-name", ["t1", "my_vqa"], st.one_of(st.sampled_from(["../escaped", "a/b", "..", "", "1x"]), TEXT),
             optional=True),
        slot("--split", ["test", "validation"], ["bogus", ""], optional=True),
        slot("--num-scenes", ["1", "2"], BAD_INTS),
        slot("--questions-per-scene", ["0", "2"], ["-1", "x"], optional=True),
        slot("--seed", ["0"], ["-1", "x"], optional=True),
        slot("--image-size", ["32", "16"], ["0", "3", "x"], optional=True),
        slot("--overwrite", [None], optional=True, switch=True),
    ], "--from-file", "{sandbox}/data/vqa.json")


@fuzz(30)
@given(data=st.data())
def test_eval_compare_argv(inputs, task_yaml, data):
    argv = data.draw(argv_of([
        slot("--task", [str(task_yaml)], _p(inputs, "badtask.yaml", "missing.yaml", "vqa.json", "images")),
        slot("--grid-model", _p(inputs, "base"), _p(inputs, "dove", "lora", "missing", "text.png"), optional=True),
        slot("--dove-model", _p(inputs, "lora"), _p(inputs, "base", "dove", "qdove", "missing"), optional=True),
        slot("--qdove-model", [], _p(inputs, "lora", "qdove", "dove"), optional=True),
        slot("--fixed-k", ["4", "2,4"], ["0", "x", "99", "4,-1"], optional=True),
        slot("--modes", ["grid", "adaptive"], ["bogus", ""], optional=True),
        slot("--batch-size", ["4"], BAD_INTS, optional=True),
        slot("--limit", ["2"], BAD_INTS, optional=True),
        slot("--model-args", ["batch_invariant=false"], ["bucket_windw=2", "pretrained=x", "merge_lora=maybe",
                                                         "min_tokens=0", "x", "tower_mode=grid"], optional=True),
        slot("--output-dir", ["{sandbox}/cmp"], ["{sandbox}/file.txt", str(inputs / "task")]),
    ], require_invalid=True))
    argv += data.draw(overlap("--grid-model", "{sandbox}/base"))
    check_call("eval compare", ["eval", "compare", *argv], inputs, limit=60)


@fuzz(20)
@given(data=st.data())
def test_llava_train_argv(inputs, data):
    good_out, bad_out = output_choices(inputs)
    stage = data.draw(st.sampled_from(["base", "lora"]))
    micro = ["--num-hidden-layers", "1", "--intermediate-size", "64", "--checkpoint-every", "1"]
    slots = [
        slot("--output-dir", good_out, bad_out),
        slot("--tower", _p(inputs, "dove") + (_p(inputs, "qdove") if stage == "lora" else []),
             _p(inputs, "base", "lora", "listcfg", "missing")),
        slot("--max-steps", ["1"], BAD_INTS),
        slot("--num-train-scenes", ["4"], BAD_INTS),
        slot("--eval-scenes", ["0"], ["-1", "x"]),
        slot("--batch-size", ["4"], BAD_INTS),
        slot("--learning-rate", ["0.001"], BAD_FLOATS + ["0"], optional=True),
        slot("--hidden-size", ["32"], ["30", "0", "x"]),
        slot("--num-attention-heads", ["2"], ["0", "3", "x"]),
        slot("--lora-target-modules", ["q_proj,v_proj"], ["q_prj", ""], optional=True),
        slot("--turns-per-image", ["1"], ["0", "x"], optional=True),
        slot("--mode", ["adaptive"] if stage == "lora" else ["grid"], ["bogus", "fixed-x", "query"], optional=True),
        slot("--resume", [None], optional=True, switch=True),
        slot("--overwrite", [None], optional=True, switch=True),
    ]
    if stage == "lora":
        slots += [slot("--base-model", _p(inputs, "base"), _p(inputs, "dove", "lora", "missing", "wrongfile")),
                  slot("--init-adapter", _p(inputs, "lora"), _p(inputs, "base", "missing"), optional=True)]
    check_drawn(data, inputs, "llava-train", ["--stage", stage, *micro], slots, "--tower", "{sandbox}/model")


@fuzz(15)
@given(data=st.data())
def test_demo_argv(inputs, data):
    argv = data.draw(argv_of([
        slot("--output-dir", ["{sandbox}/demo"], ["{sandbox}/full", "{sandbox}/file.txt", "{sandbox}/model"]),
        slot("--seed", ["0"], ["-1", "x", str(2**40)], optional=True),
        slot("--jobs", ["1", "2"], ["0", "-1", "x"], optional=True),
        slot("--no-llava", [None], optional=True, switch=True),
    ], require_invalid=True))
    check_call("demo", ["demo", *argv], inputs, limit=60)


@pytest.mark.parametrize("argv", [
    ["encode", "{inputs}/images/red.png", "{inputs}/images/blue.png", "--model", "{inputs}/qdove", "--query", "red",
     "--json", "--features", "--max-tokens", "8", "--min-tokens", "2", "--eos-threshold", "0.4"],
    ["train", "--output-dir", "{sandbox}/out", "--max-steps", "1", "--vqgan-steps", "1", "--num-train-scenes", "4",
     "--eval-scenes", "2", "--batch-size", "2", "--lpips-weight", "0", "--model-overrides", MICRO_JSON],
    ["llava-train", "--stage", "lora", "--tower", "{inputs}/dove", "--base-model", "{inputs}/base", "--output-dir",
     "{sandbox}/out", "--max-steps", "1", "--num-train-scenes", "4", "--eval-scenes", "1", "--batch-size", "4"],
    ["report", "--model", "{inputs}/dove", "--output-dir", "{sandbox}/out", "--data", "synthetic:2", "--sections",
     "lengths", "--num-images", "2", "--no-lpips"],
    ["eval", "export", "--from-file", "{inputs}/vqa.json", "--output-dir", "{sandbox}/out", "--task-name", "mine"],
])
def test_valid_tiny_runs_keep_the_same_properties(inputs, argv):
    argv = [a.replace("{inputs}", str(inputs)) for a in argv]
    command = argv[0] + (f" {argv[1]}" if argv[0] == "eval" else "")
    assert check_call(command, argv, inputs) == 0
