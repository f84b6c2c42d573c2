"""The bf16 fast path on CPU: `auto` picks it where the CPU does bf16 natively, the fused head and
loss give transformers' loss and gradients, a run trains with finite loss, bad values are one
line, and validation stays fp32 on CPU (the same number for either precision)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from repl.engine.cpu_features import cpu_flags, native_bf16
from repl.errors import TextgenError
from trainer.cli import main
from trainer.data import DataSpec
from trainer.plan import resolve_precision
from trainer.train import TrainOptions, run_training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "doc.txt").write_text("The lighthouse keeper counted the ships. " * 60)
    return folder


def test_auto_is_bf16_on_a_cpu_with_native_bf16_and_fp32_elsewhere():
    assert resolve_precision("auto", cuda=False, bf16_ok=True) == "bf16"
    assert resolve_precision("auto", cuda=False, bf16_ok=False) == "fp32"
    assert resolve_precision("auto", cuda=True, bf16_ok=True) == "bf16"
    assert resolve_precision("auto", cuda=True, bf16_ok=False) == "fp16"
    assert resolve_precision("bf16", cuda=False, bf16_ok=False) == "bf16"  # asked: emulated


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_tile amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert "amx_bf16" in cpu_flags(info) and native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert not native_bf16(info)
    assert not native_bf16(tmp_path / "missing")


def _no_dropout(model):
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.train()


def test_fused_head_and_loss_match_transformers_loss_and_gradients():
    import torch

    from tests.tiny_models import random_gpt2
    from trainer.fused_loss import causal_lm_loss, supports_fused_loss

    model = _no_dropout(random_gpt2())
    assert supports_fused_loss(model)
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (3, 20))
    labels = ids.clone()
    labels[0, :7] = -100  # a prompt that carries no loss, as chat data has
    reference = model(input_ids=ids, labels=labels).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        model.zero_grad()
        loss = causal_lm_loss(model, {"input_ids": ids, "labels": labels}, dtype=dtype)
        loss.backward()
        assert loss.item() == pytest.approx(reference.item(), rel=tolerance / 10)
        for name, param in model.named_parameters():
            scale = expected[name].abs().max().clamp(min=1e-12)
            assert ((param.grad - expected[name]).abs().max() / scale).item() < tolerance, name
    # Normalised by the accumulated batch's token count when the Trainer passes it.
    counted = int((labels[:, 1:] != -100).sum())
    loss = causal_lm_loss(model, {"input_ids": ids, "labels": labels},
                          num_items_in_batch=torch.tensor(100), dtype=torch.float32)
    assert loss.item() == pytest.approx(reference.item() * counted / 100, rel=1e-5)


def _options(model: Path, corpus: Path, output: Path, precision: str) -> TrainOptions:
    prompts = output.parent / "prompt.txt"
    prompts.write_text("The\n")  # one 1-token sample per evaluation: keeps each run ~3 s
    return TrainOptions(model=str(model), output=output,
                        data=DataSpec(train_files=[str(corpus)]), max_steps=2, block_size=32,
                        batch_size=2, save_steps=100, eval_blocks=2, precision=precision,
                        cache_dir=output.parent / "cache", sample_prompts=prompts,
                        sample_tokens=1)


@pytest.fixture(scope="module")
def bf16_run(tiny_model_dir, corpus, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("runs") / "bf16"
    return run_training(_options(tiny_model_dir, corpus, output, "bf16")).report


def test_bf16_trains_a_couple_of_steps_with_finite_loss(bf16_run, tmp_path):
    assert bf16_run["precision"] == "bf16" and bf16_run["fused_loss"] is True
    assert bf16_run["steps"] == 2
    assert math.isfinite(bf16_run["final_train_loss"])
    assert math.isfinite(bf16_run["validation"]["loss_after"])
    assert bf16_run["validation"]["loss_after"] < bf16_run["validation"]["loss_before"]


def test_validation_stays_fp32_on_cpu_under_bf16(bf16_run, tiny_model_dir, corpus, tmp_path):
    """The number before training is the fp32 model's loss on the validation blocks."""
    import torch

    from repl.models import load_model
    from trainer.data import prepare_training_data

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    valid = prepare_training_data(DataSpec(train_files=[str(corpus)]), loaded.tokenizer, 32,
                                  tmp_path / "cache").valid.head(2)
    ids = torch.stack([valid[i]["input_ids"] for i in range(len(valid))])
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[:, :-1].float()
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                 ids[:, 1:].reshape(-1)).item()
    assert bf16_run["validation"]["loss_before"] == pytest.approx(expected, rel=1e-6)


def test_bad_precision_is_one_line(tiny_model_dir, corpus, tmp_path, capsys):
    with pytest.raises(TextgenError, match=r"--precision int8: use one of auto, fp32, bf16"):
        run_training(_options(tiny_model_dir, corpus, tmp_path / "x", "int8"))
    with pytest.raises(SystemExit):
        main(["train", "--model", str(tiny_model_dir), "--train-files", str(corpus),
              "--output", str(tmp_path / "y"), "--precision", "int8"])
    err = capsys.readouterr().err
    assert "argument --precision: invalid choice: 'int8'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
