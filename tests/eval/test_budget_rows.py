"""The token-budget rows of `dove eval compare` (pool-K, random-K, fastv-K on the grid LLaVA, `auto` k), the
paired bootstrap, the Pareto front, the adapter's FastV options, and bad k / layers / folders named."""

import json

import pytest

from eval.bootstrap import matched_pairs, paired_bootstrap
from eval.compare import METRIC, pareto_front
from eval.rows import BudgetRows, matched_k, parse_k_list
from tests.llava.tiny_models import pil_images


def test_parse_k_list():
    assert parse_k_list("8, 16", "--pool-k") == [8, 16] and parse_k_list("AUTO", "--pool-k") == "auto"
    assert parse_k_list("", "--pool-k") is None
    for bad in ("0", "-3", "8,x"):
        with pytest.raises(ValueError, match=r"--pool-k .* is not a valid k; give whole numbers >= 1"):
            parse_k_list(bad, "--pool-k")


def test_auto_k_matches_the_measured_rows():
    rows = [{"name": "grid", "tokens_per_image_mean": 64.0}, {"name": "adaptive", "tokens_per_image_mean": 27.6},
            {"name": "query", "tokens_per_image_mean": 13.2}]
    assert matched_k(rows, 64) == [28, 13, 16]
    assert matched_k(rows[:1], 64) == [16]


def test_budget_rows_resolve_auto_and_check_k(grid_dir):
    budget = BudgetRows(grid_dir, pool_k="auto", random_k=[4], fastv_k=[64])
    budget.check()
    specs = budget.specs([{"name": "adaptive", "tokens_per_image_mean": 9.6}])
    assert [(s.name, s.mode, s.trained) for s in specs] == [
        ("pool-10", "pool-10", False), ("pool-16", "pool-16", False), ("random-4", "random-4", False),
        ("fastv-64", "grid", False)]
    assert specs[-1].model_args["fastv_layer"] == 1 and specs[-1].model_args["fastv_tokens"] == 64
    with pytest.raises(ValueError, match=r"--pool-k 65: k must be in \[1, 64\]"):
        BudgetRows(grid_dir, pool_k=[65]).check()
    with pytest.raises(ValueError, match=r"--fastv-layer 2: must be in \[1, 1\]"):
        BudgetRows(grid_dir, fastv_k=[8], fastv_layer=2).check()


def test_paired_bootstrap():
    a = {i: 100.0 * (i % 2) for i in range(200)}  # per-question points, as the task's vqa_accuracy
    same = paired_bootstrap(a, a)
    assert same["difference"] == 0.0 and same["low"] == 0.0 and same["high"] == 0.0
    better = paired_bootstrap({i: 100.0 for i in range(200)}, a)
    assert better["difference"] == 50.0 and 40.0 < better["low"] < 50.0 < better["high"] < 60.0
    assert better["num_questions"] == 200
    with pytest.raises(ValueError, match="share no question"):
        paired_bootstrap({0: 1.0}, {1: 1.0})


def test_pareto_front_and_matched_pairs():
    rows = [{"name": "grid", "tokens_per_image_mean": 64, "accuracy": 50}, {"name": "adaptive",
            "tokens_per_image_mean": 20.4, "accuracy": 52}, {"name": "pool-20", "tokens_per_image_mean": 20,
            "accuracy": 45}, {"name": "fastv-20", "tokens_per_image_mean": 20, "accuracy": 46}]
    assert [r["name"] for r in pareto_front(rows)] == ["fastv-20", "adaptive"]
    assert matched_pairs(rows) == [("adaptive", "pool-20"), ("adaptive", "fastv-20")]


def _fake_lmms_eval(calls):
    """A stand-in for the lmms-eval CLI: results with token accounting and per-question samples."""
    def run(spec, tasks, include, output_dir, batch_size=16, limit=None, timeout=None):
        calls.append(spec)
        tokens = {"grid": 64, "query": 10, "query-null": 12}.get(spec.name) or int(spec.name.split("-")[1])
        output_dir.mkdir(parents=True, exist_ok=True)
        scores = [100.0 * ((i + tokens) % 3 == 0) for i in range(6)]  # points per question, as the task's
        task = tasks[0]
        (output_dir / "r_results.json").write_text(json.dumps({
            "results": {task: {METRIC: sum(scores) / 6}}, "n-samples": {task: {"effective": 6}},
            "throughput": {"avg_image_tokens": tokens, "avg_image_tokens_sq": tokens**2, "avg_latency": 0.01}}))
        (output_dir / f"r_samples_{task}.jsonl").write_text(
            "".join(json.dumps({"doc_id": i, "vqa_accuracy": s}) + "\n" for i, s in enumerate(scores)))
        return output_dir / "r_results.json"
    return run


def test_compare_with_budget_rows(grid_dir, llava_dir, task_yaml, tmp_path, monkeypatch, capsys):
    from dove_vlm.commands.cli import main
    from eval import compare as compare_module

    calls = []
    monkeypatch.setattr(compare_module, "run_lmms_eval", _fake_lmms_eval(calls))
    out = tmp_path / "cmp"
    code = main(["eval", "compare", "--task", str(task_yaml), "--grid-model", grid_dir, "--qdove-model", llava_dir,
                 "--pool-k", "auto", "--fastv-k", "auto", "--random-k", "16", "--output-dir", str(out),
                 "--no-side-by-side"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    comparison = json.loads((out / "comparison.json").read_text())
    names = [r["name"] for r in comparison["rows"]]
    assert names == ["grid", "query", "query-null", "pool-10", "pool-16", "random-16", "fastv-10", "fastv-16"]
    assert [r["trained"] for r in comparison["rows"]] == [True] * 3 + [False] * 5
    assert {(p["row"], p["versus"]) for p in comparison["paired"]} == {("query", "pool-10"), ("query", "fastv-10")}
    accuracy = {r["name"]: r["accuracy"] for r in comparison["rows"]}
    for pair in comparison["paired"]:  # the paired mean is the rows' accuracy difference, in the same points
        assert abs(pair["difference"] - (accuracy[pair["row"]] - accuracy[pair["versus"]])) < 1e-9
    fastv = next(s for s in calls if s.name == "fastv-10")
    assert fastv.mode == "grid" and fastv.model_args["fastv_tokens"] == 10 and fastv.model_args["fastv_layer"] == 1
    assert "training-free" in printed.out and "Paired bootstrap" in printed.out
    assert (out / "accuracy_vs_tokens.png").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--pool-k", "0"], "--pool-k '0': '0' is not a valid k"),
    (["--random-k", "65"], r"--random-k 65: k must be in \[1, 64\]"),
    (["--fastv-k", "8", "--fastv-layer", "3"], r"--fastv-layer 3: must be in \[1, 1\]"),
    (["--fastv-layer", "1"], "--fastv-layer sets where FastV prunes; give --fastv-k too"),
])
def test_bad_budget_flags_are_named(grid_dir, task_yaml, tmp_path, capsys, flags, message):
    from dove_vlm.commands.cli import main

    code = main(["eval", "compare", "--task", str(task_yaml), "--grid-model", grid_dir, "--output-dir",
                 str(tmp_path / "o"), *flags])
    assert code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_budget_rows_need_the_grid_model_and_encoder_rows_the_encoder(llava_dir, task_yaml, tmp_path, capsys):
    from dove_vlm.commands.cli import main

    base = ["eval", "compare", "--task", str(task_yaml), "--output-dir", str(tmp_path / "o")]
    assert main([*base, "--qdove-model", llava_dir, "--pool-k", "8"]) == 2
    assert "--pool-k run on the grid LLaVA: give --grid-model" in capsys.readouterr().err
    assert main([*base, "--encoder-model", llava_dir]) == 2
    assert "was not trained on the encoder tower" in capsys.readouterr().err


def test_adapter_fastv_with_every_token_answers_as_the_grid(grid_dir):
    from eval.lmms_adapter import DoveLlava

    images, _ = pil_images(4)
    questions = ["what colour is the circle ?", "how many shapes are there ?", "is there a red square ?",
                 "where is the blue triangle ?"]
    grid = DoveLlava(pretrained=grid_dir, batch_size=2)
    full = DoveLlava(pretrained=grid_dir, batch_size=2, fastv_layer=1, fastv_tokens=64)
    pruned = DoveLlava(pretrained=grid_dir, batch_size=2, fastv_layer="1", fastv_tokens="8")
    texts, lengths, prompts, _, _ = grid._generate(images, questions, 3)
    assert full._generate(images, questions, 3)[:3] == (texts, lengths, prompts)
    _, pruned_lengths, pruned_prompts, _, _ = pruned._generate(images, questions, 3)
    assert lengths == [64] * 4 and pruned_lengths == [8] * 4
    assert [p - q for p, q in zip(prompts, pruned_prompts)] == [56] * 4
    with pytest.raises(ValueError, match="FastV needs both fastv_layer"):
        DoveLlava(pretrained=grid_dir, fastv_tokens=8)
