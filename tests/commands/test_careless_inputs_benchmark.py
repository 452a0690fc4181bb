"""benchmarks/careless_inputs.py: its case runner runs issue 22's cases through the real `dove` command line and
tells a handled case from one that is not (the full table is the script's; here two cases and one made to fail)."""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import careless_inputs


def _root(inputs, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(inputs, root / "inputs")  # the runner checks every file under root/inputs is left unchanged
    return root


def test_issue_cases_are_handled_and_a_wrong_expectation_is_caught(inputs, tmp_path):
    root = _root(inputs, tmp_path)
    by_name = {case.name: case for case in careless_inputs.cases()}
    assert len(by_name) == len(careless_inputs.cases()) >= 35  # every example of the issue, each named once
    assert {case.group for case in by_name.values()} == {
        "data loss", "writes outside the output folder", "silent wrong results", "tracebacks and hangs",
        "errors that mislead"}
    for name in ("train --query --init-from D --output-dir D", "eval export --task-name ../escaped --output-dir ex/tr"):
        result = careless_inputs.run_case(by_name[name], root, limit=120)
        assert result.handled, (name, result.checks, result.detail)
        assert result.code == 2 and result.message.startswith("dove ")
    # A valid export expected to be refused: the exit check and the "a refused run writes nothing" check fail.
    wrong = careless_inputs.Case("a valid export", "test", ["eval", "export", "--output-dir", "ex", "--num-scenes",
                                                            "1"], says=("never said",))
    result = careless_inputs.run_case(wrong, root, limit=120)
    assert result.code == 0 and not result.handled
    assert {k for k, ok in result.checks.items() if not ok} == {"exit", "says", "writes"}
    assert "| a valid export |" in careless_inputs.table([result]) and "| NO |" in careless_inputs.table([result])
    assert sorted(p.name for p in root.iterdir()) == ["inputs"]  # each case's sandbox is removed
