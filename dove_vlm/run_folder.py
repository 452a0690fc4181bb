"""A run's output folder: never one of its inputs, one run at a time, and no silent reuse of an earlier run.

Every `dove` command that writes a folder claims it here before any work ([`claim`]):

1. the folder is not, does not contain and does not lie inside any input (a model, a data folder or file), so
   a run can never overwrite what it reads ([`check_apart`]);
2. an exclusive lock (`.dove-run.lock`, held with `filelock` for the run's lifetime, released by the OS when the
   process dies) keeps a second run out; the holder (pid, host, start time, command) is recorded beside it in
   `.dove-run.json`, so the second run's error names it. A lock held on a folder above (e.g. `dove demo` in
   its root) counts too;
3. a folder holding files is an error unless the command resumes (`--resume`, or a command that reuses
   finished work by design) or `--overwrite` is given; `--overwrite` first removes the previous run's own
   outputs (the names the command passes: checkpoints, trained stages), so nothing stale is picked up later.

Under a multi-process launcher (`torchrun`, `accelerate launch`) the run is one run: only the main process
(global rank 0) locks, checks and clears the folder; the other processes check the inputs and go on.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .checkpoints import looks_local

LOCK_FILE = ".dove-run.lock"
HOLDER_FILE = ".dove-run.json"
# Names that do not make a folder "non-empty": the lock itself and the training loop's write probes (one per
# process, `.write-test-<pid>`: another rank may be probing the folder while this one checks it).
IGNORED = (LOCK_FILE, HOLDER_FILE)
WRITE_PROBE_PREFIX = ".write-test"


class RunFolderError(ValueError):
    """The output folder cannot be used as asked (overlaps an input, is busy, or holds an earlier run)."""


class RunFolderBusy(RunFolderError):
    """Another run holds the output folder's lock."""


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_apart(output_dir: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None],
                output_flag: str = "--output-dir") -> None:
    """Refuse an output folder that is, contains or lies inside one of `inputs` (`{flag: path}`; `None` and hub
    ids are skipped). Paths are compared as given and with symbolic links resolved."""
    for flag, source in inputs.items():
        if source is None or str(source) == "" or not looks_local(source):
            continue
        for out, src in ((_absolute(output_dir), _absolute(source)), (_resolved(output_dir), _resolved(source))):
            if out == src:
                how = "is"
            elif _within(out, src):
                how = "lies inside"
            elif _within(src, out):
                how = "contains"
            else:
                continue
            raise RunFolderError(f"{output_flag} {output_dir} {how} the input {flag} {source}: the run would write "
                                 f"over what it reads. Choose an output folder apart from every input.")


def entries(output_dir: str | os.PathLike) -> list[str]:
    """What a folder holds, apart from the lock files (sorted names; `[]` for a missing folder)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(name for name in os.listdir(root)
                  if name not in IGNORED and not name.startswith(WRITE_PROBE_PREFIX))


def _holder(root: Path) -> str:
    try:
        info = json.loads((root / HOLDER_FILE).read_text())
        return (f"pid {info['pid']} on host {info['host']}, started {info['started']}"
                + (f": {_short(info['command'])}" if info.get("command") else ""))
    except (OSError, ValueError, KeyError, TypeError):
        return "a process whose details are not recorded"


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _try_lock(path: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None
    return lock


def _busy_above(root: Path) -> Path | None:
    """The nearest folder above `root` whose run lock another run holds (e.g. `dove demo` in its root)."""
    for parent in root.parents:
        if (parent / LOCK_FILE).is_file():
            try:
                lock = _try_lock(parent / LOCK_FILE)
            except OSError:  # a read-only folder above: nobody can be writing there through us
                continue
            if lock is None:
                return parent
            lock.release()
    return None


def remove_previous(output_dir: str | os.PathLike, patterns: Iterable[str]) -> list[str]:
    """Delete the entries of `output_dir` matching `patterns` (an earlier run's outputs); returns their names.
    Each is renamed away first, so an interruption never leaves half of one behind."""
    root = Path(output_dir)
    removed = []
    for name in entries(root):
        if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            path = root / name
            trash = root / f".trash-overwrite-{name}"
            if trash.exists():
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(path, trash)
            if trash.is_dir():
                shutil.rmtree(trash)
            else:
                trash.unlink()
            removed.append(name)
    return removed


def _launcher_rank() -> int:
    """This process's global rank under torchrun / accelerate launch (which set RANK); 0 when launched alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextmanager
def claim(output_dir: str | os.PathLike, *, inputs: Mapping[str, str | os.PathLike | None] | None = None,
          resume: bool = False, overwrite: bool = False, previous: Iterable[str] = (), resume_hint: str = "--resume",
          command: str | None = None, log=None) -> Iterator[Path]:
    """Hold `output_dir` for one run (see the module docstring); yields it as a `Path`.

    Args:
        inputs: `{flag: path}` of everything the run reads.
        resume: the run continues (or reuses) what the folder holds; a non-empty folder is then fine.
        overwrite: a non-empty folder is fine; the entries matching `previous` (glob patterns of the previous
            run's outputs) are removed first, and `log` is told which.
        resume_hint: how the command resumes, for the error about a non-empty folder (`None`: it cannot).
        command: recorded for a second run's error (default: this process's command line).
    Raises:
        RunFolderError: overlap with an input, a file where the folder should be, a folder that cannot be
            created, or an earlier run's files without `resume`/`overwrite`; [`RunFolderBusy`] when held.
    """
    check_apart(output_dir, inputs or {})
    root = _absolute(output_dir)
    if _launcher_rank() != 0:
        # The main process holds the folder for the whole group; a launcher stops every process when one fails.
        yield root
        return
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"--output-dir {output_dir} is a file, not a folder; choose a folder.")
    above = _busy_above(root)
    if above is not None:
        raise RunFolderBusy(f"--output-dir {output_dir} lies inside {above}, which another run is using "
                            f"({_holder(above)}); wait for it to finish or choose another folder.")
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = _try_lock(root / LOCK_FILE)
    except OSError as err:
        raise RunFolderError(f"cannot create or lock the output folder {output_dir} ({err.strerror or err}); choose "
                             "a folder you can write to.") from err
    if lock is None:
        raise RunFolderBusy(f"--output-dir {output_dir} is in use by another run ({_holder(root)}); wait for it to "
                            "finish or choose another folder.")
    try:
        found = entries(root)
        if found and not resume and not overwrite:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            how = (f"pass {resume_hint} to continue that run, " if resume_hint else "") + "pass --overwrite to replace"
            raise RunFolderError(f"--output-dir {output_dir} already holds files ({shown}); {how} the previous "
                                 "run's outputs, or choose an empty folder.")
        if overwrite and not resume and found:
            removed = remove_previous(root, previous)
            if removed and log is not None:
                log(f"--overwrite: removed the previous run's {', '.join(removed)} from {output_dir}")
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                  "command": command if command is not None else " ".join(sys.argv)}
        (root / HOLDER_FILE).write_text(json.dumps(holder))
        yield root
    finally:
        try:
            (root / HOLDER_FILE).unlink(missing_ok=True)
        finally:
            lock.release()


__all__ = ["HOLDER_FILE", "LOCK_FILE", "RunFolderBusy", "RunFolderError", "check_apart", "claim", "entries",
           "remove_previous"]
