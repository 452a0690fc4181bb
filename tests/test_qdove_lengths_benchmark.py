"""benchmarks/qdove_lengths.py: the query-length analysis runs on a Q-DOVE model and reports every limit."""

import sys
from pathlib import Path

from tests.test_query_and_fast_inference import query_model  # noqa: F401 (the Q-DOVE micro model fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import qdove_lengths


def test_analysis_reports_each_limit_and_length_bucket(query_model):  # noqa: F811 (fixture)
    text = qdove_lengths.analyse(query_model, [(1, 16), (2, 4)], num_scenes=12, seed=0, fixed=4)
    assert "limits [1, 16]" in text and "limits [2, 4]" in text and "fixed 4 tokens" in text
    assert "query vs null code at the same length" in text
    assert query_model.config.query_max_tokens is None  # the analysis passes limits per call, config untouched
    # limits [2, 4] cap the tokens: at most 4 per query, so never more than the [1, 16] row's share
    shares = [int(line.split("tokens ")[1].split("%")[0]) for line in text.splitlines() if "limits" in line]
    assert len(shares) == 2 and all(s >= 0 for s in shares)
