"""The output folder of a run (`dove_vlm/run_folder.py`): apart from every input, one run at a time (a lock held
across processes, its holder named), no silent reuse of an earlier run."""

import json
import os
import subprocess
import sys
import time

import pytest

from dove_vlm.run_folder import HOLDER_FILE, LOCK_FILE, RunFolderBusy, RunFolderError, check_apart, claim, entries


def test_an_output_that_is_contains_or_lies_inside_an_input_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(RunFolderError, match="is the input --data"):
        check_apart(data, {"--data": data})
    with pytest.raises(RunFolderError, match="lies inside the input --data"):
        check_apart(data / "out", {"--data": data})
    with pytest.raises(RunFolderError, match="contains the input --data"):
        check_apart(tmp_path, {"--data": data})
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(RunFolderError, match="is the input"):
        check_apart(tmp_path / "link", {"--data": data})
    check_apart(tmp_path / "out", {"--data": data, "--vqgan": "org/name", "--tower": None})  # apart; a hub id


def test_a_non_empty_folder_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    with claim(out):
        (out / "checkpoint-5").mkdir()
        (out / "notes.txt").write_text("mine")
    assert entries(out) == ["checkpoint-5", "notes.txt"] and not (out / HOLDER_FILE).exists()
    with pytest.raises(RunFolderError, match=r"already holds files \(checkpoint-5, notes.txt\); pass --resume"):
        with claim(out):
            pass
    with pytest.raises(RunFolderError, match="already holds files") as info:
        with claim(out, resume_hint=None):
            pass
    assert "--resume" not in str(info.value)
    with claim(out, resume=True):
        pass
    said = []
    with claim(out, overwrite=True, previous=("checkpoint-*",), log=said.append):
        pass
    assert entries(out) == ["notes.txt"] and "checkpoint-5" in said[0]  # only the previous run's own outputs
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        with claim(tmp_path / "file"):
            pass


def test_the_lock_keeps_a_second_process_out_and_names_the_holder(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time\nfrom dove_vlm.run_folder import claim\n"
            f"with claim({str(out)!r}, command='dove train --output-dir run'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"in use by another run \(pid {holder.pid} on host .*, started .*: "
                                                r"dove train --output-dir run\)"):
            with claim(out, resume=True):
                pass
        with pytest.raises(RunFolderBusy, match="lies inside .* which another run is using"):
            with claim(out / "stage", resume=True):
                pass
        info = json.loads((out / HOLDER_FILE).read_text())
        assert info["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 30
    while True:  # the OS releases the lock of a killed process
        try:
            with claim(out, resume=True):
                break
        except RunFolderBusy:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (out / LOCK_FILE).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with claim(out):
            1 / 0
    with claim(out):
        pass


def test_under_a_launcher_only_the_main_process_holds_the_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with claim(out):  # rank 0 of a torchrun group holds it ...
        monkeypatch.setenv("RANK", "1")
        with claim(out) as root:  # ... and rank 1 joins the same run instead of being refused
            assert root == out.resolve() or root == out
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunFolderBusy):
            with claim(out):
                pass
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RunFolderError, match="input"):  # the inputs are still checked on every process
        with claim(out, inputs={"--init-from": out}):
            pass


def test_another_processes_write_probe_does_not_make_the_folder_non_empty(tmp_path):
    # Under torchrun every rank probes the output folder (`.write-test-<pid>`) while rank 0 checks it is empty.
    out = tmp_path / "run"
    out.mkdir()
    (out / ".write-test-12345").write_bytes(b"ok")
    assert entries(out) == []
    with claim(out):
        pass
