"""LoRA saved as the adapter alone (loadable as a model spec: base + adapter), and bf16 saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repl.engine import GenerationRequest, Generator
from repl.engine.convert import NotConvertible, gguf_model
from repl.models import load_model, resolve_spec
from repl.params import SamplingParams
from trainer.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(
            f"Chapter {i}. The lighthouse keeper counted the ships that passed the harbour. "
            * 30)
    return folder


def train(model: Path, corpus: Path, output: Path, *extra: str) -> int:
    return main(["train", "--model", str(model), "--train-files", str(corpus), "--output",
                 str(output), "--block-size", "32", "--batch-size", "2", "--max-steps", "2",
                 "--cache-dir", str(output.parent / "cache"), *extra])


def logits(loaded, text: str = "The lighthouse keeper") -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


def test_lora_adapter_alone_is_small_and_loads_as_base_plus_adapter(tiny_model_dir, corpus,
                                                                    tmp_path):
    output = tmp_path / "adapter"
    assert train(tiny_model_dir, corpus, output, "--lora", "--lora-save", "adapter",
                 "--lr", "1e-2") == 0
    assert (output / "adapter_config.json").is_file()
    assert not (output / "config.json").exists() and not (output / "model.safetensors").exists()
    adapter = (output / "adapter_model.safetensors").stat().st_size
    base = (tiny_model_dir / "model.safetensors").stat().st_size
    assert adapter < base / 20  # the adapter, not a copy of the model
    assert json.loads((output / "textgen_adapter.json").read_text())["base"] == \
        str(tiny_model_dir.resolve())
    report = json.loads((output / "report.json").read_text())
    assert report["lora_save"] == "adapter"

    assert resolve_spec(str(output))[0] == "adapter"
    tuned = load_model(str(output), device="cpu")
    assert tuned.info.name.endswith(f"+ {output.name}")
    assert type(tuned.model).__name__ == "GPT2LMHeadModel"  # merged on load: a plain model
    assert not torch.allclose(logits(tuned), logits(load_model(str(tiny_model_dir),
                                                               device="cpu")))
    _text, stats = Generator(tuned).generate(
        GenerationRequest("The lighthouse", SamplingParams(max_new_tokens=4, seed=1)))
    assert stats.new_tokens == 4
    # Every face opens it: llama.cpp cannot, so the backend is transformers, saying why.
    with pytest.raises(NotConvertible, match="LoRA adapter"):
        gguf_model(str(output), convert=False)


def test_save_dtype_bf16_halves_the_weights_and_still_loads(tiny_model_dir, corpus, tmp_path):
    from safetensors import safe_open

    output = tmp_path / "bf16"
    assert train(tiny_model_dir, corpus, output, "--save-dtype", "bf16") == 0
    with safe_open(str(output / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {torch.bfloat16}
    size = (output / "model.safetensors").stat().st_size
    assert size < 0.6 * (tiny_model_dir / "model.safetensors").stat().st_size
    assert load_model(str(output), device="cpu").model is not None


def test_an_adapter_without_a_base_is_one_clear_error(tmp_path):
    from repl.errors import TextgenError

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(TextgenError, match="does not say its base model"):
        load_model(str(tmp_path), device="cpu")
