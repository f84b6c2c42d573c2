"""kill -9 at many moments of a run that checkpoints every step: what is left on disk is always
a folder `--resume` continues from (or a finished run it says it will not touch), never a
traceback; and every folder named `checkpoint-N` is complete.

The runs are real `textgen-train train` command lines in child processes forked from a warm
forkserver (torch and transformers imported once), so a trial costs seconds, not an import.
Kill points: in the middle of the k-th `torch.save` (optimizer, scheduler, RNG state: the file
is left cut short, as a real crash would), at the k-th `os.replace` (the renames that publish,
rotate and finish), and at random moments after the first checkpoint started.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from trainer.checkpoints import problem

STEPS = 3
TRIALS = (
    [("torch.save", k) for k in (2, 6)]
    + [("os.replace", k) for k in (1, 4, 7, 12)]
    + [("random", seed) for seed in (1, 2)]
)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(kind: str, k: int) -> None:
    """Make this process SIGKILL itself at the k-th call of `kind`."""
    import torch

    calls = [0]
    if kind == "torch.save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            calls[0] += 1
            if calls[0] == k and isinstance(f, (str, os.PathLike)):
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                with open(f, "wb") as handle:  # a file cut short, as a crash mid-write leaves
                    handle.write(data[: len(data) // 2])
                _kill_self()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif kind == "os.replace":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                _kill_self()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace


def _run_cli(argv: list[str], log: str, kill: tuple[str, int] | None) -> None:
    """A child process: `textgen-train ARGV` with stdout and stderr in `log`."""
    import torch

    torch.set_num_threads(1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if kill is not None and kill[0] != "random":
        _install_kill(*kill)
    from trainer.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@pytest.fixture(scope="module")
def forkserver():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "trainer.cli", "trainer.train",
                                    "trainer.hf_trainer", __name__])
    return context


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(
            f"Chapter {i}. The lighthouse keeper counted the ships that passed the harbour. "
            * 30)
    return folder


def _start(context, argv: list[str], log: Path, kill=None):
    process = context.Process(target=_run_cli, args=(argv, str(log), kill))
    process.start()
    return process


def _kill_at_random(process, output: Path, seed: int) -> None:
    """Wait (on the child) until its first checkpoint save has begun, then kill it after a
    random delay; a child that finished first is simply done."""
    while process.is_alive() and not (output / "checkpoints").exists():
        process.join(timeout=0.05)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    if process.is_alive():
        process.kill()


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_a_run_resume_continues(forkserver, tiny_model_dir, corpus,
                                                            tmp_path):
    killed = 0
    for number, (kind, k) in enumerate(TRIALS):
        output = tmp_path / f"run{number}"
        argv = ["train", "--model", str(tiny_model_dir), "--train-files", str(corpus),
                "--output", str(output), "--block-size", "32", "--batch-size", "2",
                "--max-steps", str(STEPS), "--save-steps", "1",
                "--cache-dir", str(tmp_path / "cache")]
        first = _start(forkserver, argv, tmp_path / f"first{number}.log", (kind, k))
        if kind == "random":
            _kill_at_random(first, output, k)
        first.join(timeout=600)
        assert first.exitcode in (0, -signal.SIGKILL), (kind, k, first.exitcode)
        killed += first.exitcode == -signal.SIGKILL
        # whatever the moment, nothing named checkpoint-N is half-written
        for path in (output / "checkpoints").glob("checkpoint-*"):
            assert problem(path) is None, (kind, k, path, problem(path))

        log = tmp_path / f"resume{number}.log"
        second = _start(forkserver, [*argv, "--resume"], log)
        second.join(timeout=600)
        text = log.read_text()
        assert "Traceback" not in text, (kind, k, text[-3000:])
        if second.exitcode == 2:  # the first run had finished: nothing to resume, one line
            assert "holds a finished run" in text, (kind, k, text[-2000:])
            assert (output / "report.json").is_file()
        else:
            assert second.exitcode == 0, (kind, k, text[-3000:])
            assert "done: 3 steps" in text, (kind, k, text[-3000:])
            assert "resuming from checkpoint-" in text or "starting from step 0" in text \
                or "validation perplexity before" in text
        assert (output / "report.json").is_file() and (output / "model.safetensors").is_file()
    assert killed >= 6  # the deterministic kill points all hit a run in progress


class InterruptAt:
    """Sends this process a real SIGINT at a given step, as Ctrl+C would."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == step:
                    signal.raise_signal(signal.SIGINT)

        return Callback()


def test_resume_names_the_broken_checkpoint_it_skips(tiny_model_dir, corpus, tmp_path, capsys):
    import shutil

    from trainer.data import DataSpec
    from trainer.train import TrainOptions, run_training

    output = tmp_path / "run"
    options = TrainOptions(model=str(tiny_model_dir), output=output,
                           data=DataSpec(train_files=[str(corpus)]), max_steps=4, block_size=32,
                           batch_size=2, save_steps=100, cache_dir=tmp_path / "cache")
    assert run_training(options, extra_callbacks=[InterruptAt(1)]).status == "interrupted"
    saved = output / "checkpoints" / "checkpoint-2"
    assert problem(saved) is None
    # what an older writer (or a crash before this fix) leaves: a newer folder without state
    broken = output / "checkpoints" / "checkpoint-3"
    shutil.copytree(saved, broken)
    (broken / "trainer_state.json").unlink()
    (output / "checkpoints" / ".partial-3").mkdir()  # a staged save that never finished
    capsys.readouterr()
    options.resume = True
    outcome = run_training(options)
    out = capsys.readouterr().out
    assert outcome.status == "done" and outcome.report["steps"] == 4
    assert "skipped checkpoint-3: incomplete (missing trainer_state.json)" in out
    assert "resuming from checkpoint-2 (step 2)" in out
