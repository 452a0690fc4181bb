"""The layout's promises: the core (`dove_vlm`) imports neither training nor evaluation code, inference never
imports a training module, and no module takes part in an import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dove_vlm", "train_tokenizer", "llava_patch", "eval")
TRAINING = ("train_tokenizer", "llava_patch.training")


def _modules(package: str) -> list[str]:
    root = REPO / package
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if "tasks" in parts and package == "eval":
            continue  # lmms-eval task helpers are loaded by lmms-eval from their YAML
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _import_blocked(modules: list[str], blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import `modules` in a fresh interpreter where importing any of `blocked` (or below) raises."""
    code = f"""
import importlib, importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"blocked import of {{name}}")
        return None
sys.meta_path.insert(0, Block())
for name in {modules!r}:
    if name.endswith("__main__"):
        continue
    importlib.import_module(name)
"""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_core_imports_neither_training_nor_evaluation():
    core = [m for m in _modules("dove_vlm") if not m.startswith("dove_vlm.commands")]
    result = _import_blocked(core, ("train_tokenizer", "eval", "llava_patch"))
    assert result.returncode == 0, result.stderr[-3000:]


def test_inference_never_imports_training():
    inference = ["eval.lmms_adapter", "eval.lmms_plugin", "llava_patch", "llava_patch.tower", "llava_patch.arch",
                 "dove_vlm.llava.saved"]
    result = _import_blocked(inference, TRAINING)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_blocker_really_blocks():
    """The check above can fail: the command line imports training code."""
    result = _import_blocked(["dove_vlm.commands.cli", "llava_patch.training"], TRAINING)
    assert result.returncode != 0 and "blocked import" in result.stderr


def _imports(module: str) -> set[str]:
    """Project modules that `module` imports at any depth of its body (lazy imports count too)."""
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {m for p in PACKAGES for m in _modules(p)}
    graph = {}
    for m in modules:
        targets = set()
        for name in _imports(m):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != m and not m.startswith(name + "."):  # a package's own __init__ is not a cycle
                targets.add(name)
        graph[m] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_fit_in_a_readers_head(package):
    """Modules of one concept each: none over 650 lines."""
    long = {str(p.relative_to(REPO)): n for p in (REPO / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 650}
    assert not long, long
