"""Bad flags are refused before anything loads; NaN and divergence stop a run with a finite
checkpoint named and a non-zero exit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainer.cli import main

MISSING_MODEL = "/nonexistent/model"  # loading it would fail: the flag must be refused first


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(
            f"Chapter {i}. The lighthouse keeper counted the ships that passed the harbour. "
            * 30)
    return folder


@pytest.mark.parametrize(("flags", "message"), [
    (["--warmup=-1"], "--warmup -1.0: use a number of steps"),
    (["--valid-fraction", "nan"], "--valid-fraction nan: use a fraction between 0 and 1"),
    (["--valid-fraction", "1"], "--valid-fraction 1.0:"),
    (["--max-steps", "0"], "--max-steps 0: use a positive number of steps"),
    (["--max-steps=-3"], "--max-steps -3:"),
    (["--epochs", "0"], "--epochs 0.0: use a positive number"),
    (["--epochs", "inf"], "--epochs inf:"),
    (["--lr", "nan"], "--lr nan: use a positive number"),
    (["--lr=-1e-4"], "--lr -0.0001:"),
    (["--weight-decay=-0.1"], "--weight-decay -0.1:"),
    (["--subset", "1.5"], "--subset 1.5: use a fraction in (0, 1]"),
    (["--batch-size", "0"], "--batch-size 0: use a positive whole number"),
    (["--grad-accum=-2"], "--grad-accum -2:"),
    (["--eval-steps", "0"], "--eval-steps 0:"),
    (["--eval-blocks", "0"], "--eval-blocks 0:"),
    (["--save-steps", "0"], "--save-steps 0:"),
    (["--lora-r", "0"], "--lora-r 0:"),
    (["--lstm-layers", "0"], "--lstm-layers 0:"),
    (["--block-size", "1"], "--block-size 1: use at least 2 tokens"),
    (["--seed=-1"], "--seed -1:"),
    (["--lora-save", "adapter"], "--lora-save is for LoRA runs"),
    (["--resume", "--overwrite"], "pick one"),
    (["--arch", "lstm", "--lora"], "the LSTM trains from scratch"),
])
def test_every_bad_flag_is_one_line_before_any_model_loads(tmp_path, capsys, flags, message):
    code = main(["train", "--model", MISSING_MODEL, "--train-files", str(tmp_path),
                 "--output", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("textgen-train: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_qlora_refusal_names_the_alternative(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "--model", MISSING_MODEL, "--output", str(tmp_path / "q"),
                 "--qlora"]) == 2
    err = capsys.readouterr().err
    assert "runs on a CUDA GPU only; on CPU use --lora" in err


def run(tiny_model_dir: Path, corpus: Path, output: Path, *flags: str) -> int:
    return main(["train", "--model", str(tiny_model_dir), "--train-files", str(corpus),
                 "--output", str(output), "--block-size", "32", "--batch-size", "2",
                 "--save-steps", "1", "--max-steps", "4", "--cache-dir",
                 str(output.parent / "cache"), *flags])


def finite_weights(folder: Path) -> bool:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    return all(bool(t.isfinite().all()) for t in tensors.values())


def named_checkpoint(err: str) -> Path:
    start = err.index("checkpoints/checkpoint-")
    end = start + len("checkpoints/checkpoint-")
    while end < len(err) and err[end].isdigit():
        end += 1
    return Path(err[err.rindex(" ", 0, start) + 1:end])


def test_a_nan_run_names_a_finite_checkpoint_and_fails(tiny_model_dir, corpus, tmp_path, capsys):
    # --warmup makes step 1 a step at lr 0 (a good checkpoint); step 2 at ~3e29 breaks it
    output = tmp_path / "huge-lr"
    assert run(tiny_model_dir, corpus, output, "--lr", "1e30", "--warmup", "3") == 1
    err = capsys.readouterr().err
    assert "became NaN/inf at step 2" in err and "stopped without saving" in err
    checkpoint = named_checkpoint(err)
    assert checkpoint.name == "checkpoint-1"
    assert finite_weights(checkpoint)
    assert not (output / "model.safetensors").exists()
    # every checkpoint left is finite: nothing broken was saved
    for path in (output / "checkpoints").glob("checkpoint-*"):
        assert finite_weights(path)


def test_nan_before_any_checkpoint_says_the_start_model_is_unchanged(tiny_model_dir, corpus,
                                                                    tmp_path, capsys):
    assert run(tiny_model_dir, corpus, tmp_path / "nan1", "--lr", "1e30") == 1
    err = capsys.readouterr().err
    assert "at step 1" in err and f"the starting model {tiny_model_dir} is unchanged" in err


def test_divergence_keeps_the_best_checkpoint_and_fails(tiny_model_dir, corpus, tmp_path,
                                                        capsys):
    from trainer.checkpoints import read_marker

    output = tmp_path / "diverge"
    # step 1 at lr 0 (warm-up), then lr 0.5-1: the validation perplexity explodes
    assert run(tiny_model_dir, corpus, output, "--lr", "1", "--warmup", "2") == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "training diverged: validation perplexity" in err
    assert "more than 4x the" in err and "before training" in err
    best = named_checkpoint(err)
    assert finite_weights(best)
    records = [json.loads(line) for line in (output / "logs" / "train.jsonl").read_text()
               .splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    diverged_at = max(evals)
    assert f"at step {diverged_at}," in err
    assert evals[diverged_at] > evals[0] + math.log(4)
    # the best is the kept checkpoint with the lowest validation loss, and it says which
    loss = read_marker(best)["validation_loss"]
    assert loss == min(v for step, v in evals.items() if 0 < step < diverged_at)
    assert f"(validation perplexity {math.exp(loss):,.2f})" in err
    assert "done:" not in captured.out
    assert not (output / "model.safetensors").exists()
