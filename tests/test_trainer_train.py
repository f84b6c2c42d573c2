"""textgen-train train on a tiny random GPT-2: outputs, refusals, Ctrl+C/resume, NaN, full disk,
LSTM, LoRA, and two gloo processes under torchrun."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from repl.engine import GenerationRequest, Generator
from repl.errors import TextgenError
from repl.models import load_model
from repl.params import SamplingParams
from trainer import train as train_module
from trainer.cli import main
from trainer.data import DataSpec
from trainer.train import TrainOptions, run_training

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(
            f"Chapter {i}. The lighthouse keeper counted the ships that passed the harbour. "
            * 30)
    return folder


def train_args(model: Path, corpus: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--train-files", str(corpus), "--output",
            str(output), "--block-size", "32", "--batch-size", "2", "--cache-dir",
            str(output.parent / "cache"), *extra]


def streams_text(model_dir: Path) -> str:
    loaded = load_model(str(model_dir), device="cpu")
    text, stats = Generator(loaded).generate(
        GenerationRequest("The lighthouse", SamplingParams(max_new_tokens=5, seed=1)))
    assert stats.new_tokens == 5
    return text


def test_train_saves_a_loadable_model_with_report_plot_and_logs(tiny_model_dir, corpus,
                                                                tmp_path, capsys):
    output = tmp_path / "ft"
    assert main(train_args(tiny_model_dir, corpus, output, "--max-steps", "4",
                           "--lr", "1e-3")) == 0
    out = capsys.readouterr().out
    assert "validation perplexity before:" in out and "done: 4 steps" in out
    report = json.loads((output / "report.json").read_text())
    assert report["steps"] == 4
    assert report["tokens_seen"] == 4 * 2 * 32
    assert report["tokens_per_s"] > 0 and report["wall_time_s"] > 0
    assert report["validation"]["loss_after"] < report["validation"]["loss_before"]
    assert report["data"]["train_documents"] == 3
    assert (output / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((output / "training_args.json").read_text())["textgen"]["max_steps"] == 4
    records = [json.loads(line) for line in (output / "logs" / "train.jsonl").read_text()
               .splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert any(p.name.startswith("events.out.tfevents")
               for p in (output / "logs" / "tensorboard").iterdir())
    assert not (output / "checkpoints").exists()
    assert (output / "model.safetensors").stat().st_mode & 0o044  # readable, not mkstemp's 0600
    streams_text(output)

    # a second run into the same folder is refused and changes nothing
    before = (output / "report.json").read_bytes()
    assert main(train_args(tiny_model_dir, corpus, output, "--max-steps", "1")) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (output / "report.json").read_bytes() == before


@pytest.mark.parametrize(("extra", "message"), [
    (["--block-size", "512"], "larger than the model's context of 256"),
    (["--precision", "fp16"], "fp16 needs a GPU"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--resume"], "nothing to resume"),
])
def test_bad_options_get_one_line(tiny_model_dir, corpus, tmp_path, capsys, extra, message):
    assert main(train_args(tiny_model_dir, corpus, tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_non_text_training_file_is_refused(tiny_model_dir, tmp_path, capsys):
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    assert main(["train", "--model", str(tiny_model_dir), "--train-files", str(binary),
                 "--output", str(tmp_path / "x")]) == 2
    assert "not a text file" in capsys.readouterr().err


class InterruptAt:
    """Sends this process a real SIGINT at a given step, as Ctrl+C would."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == step:
                    signal.raise_signal(signal.SIGINT)

        return Callback()


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same_schedule(tiny_model_dir, corpus,
                                                                         tmp_path):
    output = tmp_path / "run"
    options = TrainOptions(model=str(tiny_model_dir), output=output,
                           data=DataSpec(train_files=[str(corpus)]), max_steps=6, block_size=32,
                           batch_size=2, save_steps=100, cache_dir=tmp_path / "cache",
                           command=["textgen-train", "train", "--output", str(output)])
    outcome = run_training(options, extra_callbacks=[InterruptAt(3)])  # during the 4th step
    assert outcome.status == "interrupted"
    assert (output / "checkpoints" / "checkpoint-4").is_dir()  # the step in flight finished
    assert "interrupted at step 4" in outcome.message and "checkpoint-4" in outcome.message
    assert "resume with: textgen-train train --output" in outcome.message
    assert outcome.message.endswith("--resume")
    assert not (output / "model.safetensors").exists()

    options.resume = True
    outcome = run_training(options)
    assert outcome.status == "done"
    report = outcome.report
    assert report["steps"] == 6 and report["steps_this_run"] == 2
    assert report["validation"]["loss_before"] is not None  # carried over from the first part
    steps = [json.loads(line)["step"] for line in (output / "logs" / "train.jsonl")
             .read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # continued at step 5, not restarted
    # the learning-rate schedule continued too: linear decay to 0 over 6 steps
    rates = [json.loads(line)["learning_rate"] for line in (output / "logs" / "train.jsonl")
             .read_text().splitlines() if "loss" in json.loads(line)]
    assert rates == pytest.approx([5e-5 * (6 - s) / 6 for s in range(6)], rel=1e-6)


def test_broken_weights_are_refused_before_training(tmp_path, corpus, capsys):
    import torch

    from tests.tiny_models import gpt2_tokenizer, random_gpt2

    model = random_gpt2()
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    broken = tmp_path / "nan-model"
    model.save_pretrained(broken)
    gpt2_tokenizer().save_pretrained(broken)
    assert main(train_args(broken, corpus, tmp_path / "nan-run", "--max-steps", "3")) == 2
    assert "validation loss is nan before any training" in capsys.readouterr().err


class PoisonAfter:
    """Turns a weight into NaN after a given step, so the next step's loss is NaN."""

    def __new__(cls, step: int):
        import torch
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step == step:
                    with torch.no_grad():
                        model.transformer.ln_f.weight.fill_(float("nan"))

        return Callback()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, corpus, tmp_path):
    output = tmp_path / "nan-run"
    options = TrainOptions(model=str(tiny_model_dir), output=output,
                           data=DataSpec(train_files=[str(corpus)]), max_steps=6, block_size=32,
                           batch_size=2, save_steps=2, eval_steps=100,
                           cache_dir=tmp_path / "cache")
    outcome = run_training(options, extra_callbacks=[PoisonAfter(3)])
    assert outcome.status == "nan"
    assert "the training loss became NaN/inf at step 4" in outcome.message
    assert "checkpoint-2" in outcome.message and "lower --lr" in outcome.message
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert not (output / "model.safetensors").exists()


def test_full_disk_gives_one_message(tiny_model_dir, corpus, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_module, "save_model", full)
    assert main(train_args(tiny_model_dir, corpus, tmp_path / "full", "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert "the disk is full while writing" in err and "--resume" in err
    assert "Traceback" not in err


def test_lstm_baseline_trains_loads_streams_and_evaluates(tiny_model_dir, corpus, tmp_path,
                                                         capsys):
    output = tmp_path / "lstm"
    assert main(train_args(tiny_model_dir, corpus, output, "--arch", "lstm", "--max-steps", "6",
                           "--lstm-hidden", "32", "--lstm-layers", "1")) == 0
    report = json.loads((output / "report.json").read_text())
    assert report["arch"] == "lstm" and report["learning_rate"] == 2e-3
    assert report["validation"]["loss_after"] < report["validation"]["loss_before"]
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "textgen-lstm"
    assert load_model(str(output), device="cpu").info.context_length is None
    streams_text(output)
    capsys.readouterr()
    assert main(["eval", "--model", str(output), "--files", str(corpus), "--window", "32",
                 "--max-tokens", "300", "--samples", "1", "--json",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["perplexity"]["tokens_scored"] == 299
    assert record["perplexity"]["perplexity"] > 1


def test_lora_trains_adapters_and_saves_a_plain_merged_model(tiny_model_dir, corpus, tmp_path,
                                                             capsys):
    output = tmp_path / "lora"
    assert main(train_args(tiny_model_dir, corpus, output, "--lora", "--max-steps", "2",
                           "--lr", "1e-3")) == 0
    assert "LoRA r=8: training" in capsys.readouterr().out
    assert not (output / "adapter_config.json").exists()
    assert json.loads((output / "config.json").read_text())["model_type"] == "gpt2"
    streams_text(output)


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun(tiny_model_dir, corpus, tmp_path):
    output = tmp_path / "ddp"
    odd_blocks = ["--valid-fraction", "0.1", "--eval-blocks", "3"]  # 3 blocks on 2 ranks
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CHECKOUT)}
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "trainer",
         *train_args(tiny_model_dir, corpus, output, "--max-steps", "3", *odd_blocks)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    report = json.loads((output / "report.json").read_text())
    assert report["processes"] == 2
    assert report["tokens_seen"] == 3 * 2 * 32 * 2  # steps x batch x block x processes
    assert report["steps"] == 3
    streams_text(output)
    # the validation loss sums per-token losses over both ranks: a single process agrees
    single = tmp_path / "single"
    assert main(train_args(tiny_model_dir, corpus, single, "--max-steps", "1", *odd_blocks)) == 0
    alone = json.loads((single / "report.json").read_text())["validation"]["loss_before"]
    assert report["validation"]["loss_before"] == pytest.approx(alone, rel=1e-6)


def test_overwrite_keeps_the_old_model_when_the_new_run_is_refused(tiny_model_dir, corpus,
                                                                   tmp_path, capsys):
    output = tmp_path / "old"
    output.mkdir()
    (output / "config.json").write_text("{}")
    assert main(train_args(tiny_model_dir, corpus, output, "--overwrite",
                           "--block-size", "4096")) == 2
    assert "larger than the model's context" in capsys.readouterr().err
    assert (output / "config.json").read_text() == "{}"


def test_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(TextgenError, match="not a folder textgen-train wrote"):
        train_module.check_output(TrainOptions(model="x", output=tmp_path, overwrite=True))
    assert (tmp_path / "thesis.tex").exists()


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_the_next(tmp_path):
    (tmp_path / "logs" / "tensorboard").mkdir(parents=True)
    (tmp_path / "logs" / "train.jsonl").write_text('{"loss": NaN}\n')
    assert train_module.check_output(TrainOptions(model="x", output=tmp_path)) is True
    (tmp_path / "logs" / "notes.txt").write_text("mine")  # not only ours: keep refusing
    with pytest.raises(TextgenError, match="already exists"):
        train_module.check_output(TrainOptions(model="x", output=tmp_path))


def test_check_output_refuses_resume_with_overwrite(tmp_path):
    with pytest.raises(TextgenError, match="pick one"):
        train_module.check_output(TrainOptions(model="x", output=tmp_path, resume=True,
                                               overwrite=True))
