"""benchmarks/qdove_lengths.py: the query-length analysis runs on a Q-DOVE model and reports every limit."""

import sys
from pathlib import Path

from tests.test_query_and_fast_inference import query_model  # noqa: F401 (the Q-DOVE micro model fixture)
from train_tokenizer.evaluate import evaluate_queries

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import qdove_lengths


def test_analysis_reports_each_limit_and_length_bucket(query_model):  # noqa: F811 (fixture)
    text = qdove_lengths.analyse(query_model, [(1, 16), (2, 4)], num_scenes=12, seed=0, fixed=4)
    assert "limits [1, 16]" in text and "limits [2, 4]" in text and "fixed 4 tokens" in text
    assert "query vs null code at the same length" in text
    assert query_model.config.query_max_tokens is None  # the analysis passes limits per call, config untouched
    # Each limits row gives what `dove train --query`'s evaluation reports for a model saved with those limits.
    rows = {line.split("]")[0].split("[")[1]: line for line in text.splitlines() if "limits" in line}
    assert set(rows) == {"1, 16", "2, 4"}
    for (low, high), key in (((1, 16), "1, 16"), ((2, 4), "2, 4")):
        share = int(rows[key].split("tokens ")[1].split("%")[0])
        in_box = float(rows[key].split("in-box ")[1].split(" dB")[0])
        query_model.config.query_min_tokens, query_model.config.query_max_tokens = low, high
        try:
            expected = evaluate_queries(query_model, num_scenes=12, seed=0)
        finally:
            query_model.config.query_min_tokens = query_model.config.query_max_tokens = None
        assert abs(share - 100 * expected["query_over_null_tokens"]) <= 1
        assert abs(in_box - expected["in_box_psnr_query_minus_null"]) <= 0.011
