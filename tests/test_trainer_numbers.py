"""Numbers a run reports can be trusted: TensorBoard holds the final evaluation, a resumed run's
report covers every step, its log has each step once, and validation shows progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data import DataSpec
from trainer.train import TrainOptions, run_training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(
            f"Chapter {i}. The lighthouse keeper counted the ships that passed the harbour. "
            * 30)
    return folder


def options(model: Path, corpus: Path, output: Path, **extra) -> TrainOptions:
    return TrainOptions(model=str(model), output=output, data=DataSpec(train_files=[str(corpus)]),
                        block_size=32, batch_size=2, cache_dir=output.parent / "cache",
                        **extra)


def records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "logs" / "train.jsonl").read_text()
            .splitlines()]


def test_tensorboard_gets_the_final_evaluation_and_validation_shows_progress(
        tiny_model_dir, corpus, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "tb"
    outcome = run_training(options(tiny_model_dir, corpus, output, max_steps=3))
    assert outcome.status == "done"
    err = capsys.readouterr().err
    assert "validation: 100%" in err  # the pass before training has its bar
    events = EventAccumulator(str(output / "logs" / "tensorboard"))
    events.Reload()
    evals = {e.step: e.value for e in events.Scalars("eval/loss")}
    assert 3 in evals  # the final evaluation, written before the writer closed
    assert evals[3] == pytest.approx(outcome.report["validation"]["loss_after"], rel=1e-6)


class CrashAt:
    """Raises at the start of a step, after the previous steps were logged: a crash."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise RuntimeError("simulated crash")

        return Callback()


def test_a_resumed_run_logs_each_step_once_and_reports_the_mean_of_all(tiny_model_dir, corpus,
                                                                      tmp_path, capsys):
    output = tmp_path / "resume"
    first = options(tiny_model_dir, corpus, output, max_steps=5, save_steps=2, eval_steps=100)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(first, extra_callbacks=[CrashAt(3)])  # step 3 logged, checkpoint-2 saved
    assert [r["step"] for r in records(output) if "loss" in r] == [1, 2, 3]
    capsys.readouterr()
    first.resume = True
    outcome = run_training(first)
    assert "resuming from checkpoint-2 (step 2)" in capsys.readouterr().out
    losses = [r for r in records(output) if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5]  # step 3 once, from the resumed run
    report = outcome.report
    assert report["steps"] == 5 and report["steps_this_run"] == 3
    assert report["resumed_from"] == "checkpoint-2"
    assert report["mean_train_loss"] == pytest.approx(
        sum(r["loss"] for r in losses) / len(losses), rel=1e-9)
    assert report["validation"]["loss_before"] == records(output)[0]["eval_loss"]
