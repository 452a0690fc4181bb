"""`dove demo` orchestration: finished stages are reused on a rerun only when their arguments match."""

import json

from dove_vlm.commands.demo import finished_stage
from tests.train_tokenizer.test_train import micro_args
from train_tokenizer import train as train_module


def test_finished_tokenizer_stage_is_reused_only_with_the_same_arguments(tmp_path):
    assert finished_stage(micro_args(tmp_path, eval_scenes=4)) is None  # nothing trained yet
    metrics = train_module.train(micro_args(tmp_path, eval_scenes=4))
    reused = finished_stage(micro_args(tmp_path, eval_scenes=4))
    assert reused is not None and reused["eval"] == json.loads(json.dumps(metrics["eval"]))
    assert finished_stage(micro_args(tmp_path, eval_scenes=4, max_steps=8)) is None  # other arguments: retrain
    (tmp_path / "metrics.json").write_text("{truncated")  # a metrics file cut off by an interruption
    assert finished_stage(micro_args(tmp_path, eval_scenes=4)) is None


def test_thread_boost_raises_the_thread_count_once_the_sibling_is_done(monkeypatch):
    import os
    import threading

    import torch

    from dove_vlm.commands.demo import ThreadBoost

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored after the test (the boost sets it for subprocesses)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        event = threading.Event()
        boost = ThreadBoost(event, 2)
        boost(1)
        assert torch.get_num_threads() == 1
        event.set()
        boost(2)
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)
