"""Samples while training: prompts read and checked, greedy continuations that only change when
the model does, records in train.jsonl and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repl.errors import TextgenError
from trainer.samples import (
    DEFAULT_PROMPTS,
    MAX_PROMPTS,
    SampleRecorder,
    generate_samples,
    read_prompts,
    samples_from_log,
)


def test_prompts_one_a_line_or_the_built_in_ones(tmp_path):
    assert read_prompts(None) == list(DEFAULT_PROMPTS)
    path = tmp_path / "prompts.txt"
    path.write_text("Once upon a time\n\n  The river  \n")
    assert read_prompts(path) == ["Once upon a time", "The river"]
    path.write_text("\n \n")
    with pytest.raises(TextgenError, match="no prompts"):
        read_prompts(path)
    path.write_text("p\n" * (MAX_PROMPTS + 1))
    with pytest.raises(TextgenError, match="at most"):
        read_prompts(path)
    with pytest.raises(TextgenError, match="cannot read"):
        read_prompts(tmp_path / "missing.txt")


def test_samples_are_greedy_and_leave_the_mode_alone(tiny_loaded):
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    model.train()
    try:
        first = generate_samples(model, tokenizer, ["The harbour", "A ship"], 8)
        assert model.training
        again = generate_samples(model, tokenizer, ["The harbour", "A ship"], 8)
    finally:
        model.eval()
    assert first == again
    assert [s["prompt"] for s in first] == ["The harbour", "A ship"]
    assert all(len(tokenizer(s["text"]).input_ids) >= 4 for s in first)


def test_recorder_writes_the_log_and_tensorboard_once_per_step(tiny_loaded, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = tmp_path / "train.jsonl"
    log.write_text(json.dumps({"step": 0, "eval_loss": 3.0}) + "\n")
    board = tmp_path / "tensorboard"
    recorder = SampleRecorder(["The harbour"], tiny_loaded.tokenizer, log, board,
                              max_new_tokens=6, tokens_per_step=10)
    recorder.record(tiny_loaded.model, 0)
    recorder.record(tiny_loaded.model, 5)
    recorder.record(tiny_loaded.model, 5)  # the final evaluation at the same step: kept once
    recorder.close()
    assert [r["step"] for r in recorder.records] == [0, 5]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines if "samples" in line] == [0, 5]
    assert lines[-1]["tokens"] == 50
    assert samples_from_log(log) == recorder.records
    events = EventAccumulator(str(board), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("samples/0/text_summary")
    assert [t.step for t in texts] == [0, 5]
    assert b"**The harbour**" in texts[0].tensor_proto.string_val[0]


def test_a_disabled_recorder_generates_nothing(tiny_loaded, tmp_path):
    recorder = SampleRecorder(["x"], tiny_loaded.tokenizer, tmp_path / "log", None,
                              enabled=False)
    assert recorder.record(tiny_loaded.model, 1) is None
    assert not (tmp_path / "log").exists()


def test_log_without_samples_gives_none(tmp_path: Path):
    assert samples_from_log(tmp_path / "missing.jsonl") == []


def test_a_run_records_samples_at_every_evaluation(tiny_model_dir, tmp_path, capsys):
    """--eval-steps 2 over 4 steps: samples before training, at step 2 and at the end, in
    report.json, train.jsonl (what F5 reads) and TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The lighthouse keeper counted the ships that passed the harbour. " * 60)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The lighthouse\nA ship\n")
    output = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--train-files", str(corpus),
                 "--output", str(output), "--block-size", "32", "--batch-size", "2",
                 "--max-steps", "4", "--eval-steps", "2", "--lr", "1e-3", "--sample-prompts",
                 str(prompts), "--sample-tokens", "5", "--cache-dir",
                 str(tmp_path / "cache")]) == 0
    report = json.loads((output / "report.json").read_text())
    by_step = report["samples_by_step"]
    assert [entry["step"] for entry in by_step] == [0, 2, 4]
    assert all([s["prompt"] for s in entry["samples"]] == ["The lighthouse", "A ship"]
               for entry in by_step)
    assert samples_from_log(output / "logs" / "train.jsonl") == by_step
    events = EventAccumulator(str(output / "logs" / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert [t.step for t in events.Tensors("samples/1/text_summary")] == [0, 2, 4]
    capsys.readouterr()
    assert main(["train", "--model", str(tiny_model_dir), "--train-files", str(corpus),
                 "--output", str(tmp_path / "bad"), "--sample-tokens", "0"]) == 2
    assert "--sample-tokens 0" in capsys.readouterr().err
