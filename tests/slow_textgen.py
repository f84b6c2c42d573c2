"""`python tests/slow_textgen.py ARGS...`: textgen with every GPT-2 forward pass slowed by 20 ms,
so that a test's signal lands while a generation is running (the tiny model is otherwise done
with hundreds of tokens before a signal can be sent)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import transformers.models.gpt2.modeling_gpt2 as gpt2

_forward = gpt2.GPT2LMHeadModel.forward


def _slow_forward(self, *args, **kwargs):
    time.sleep(0.02)
    return _forward(self, *args, **kwargs)


gpt2.GPT2LMHeadModel.forward = _slow_forward

if __name__ == "__main__":
    from repl.cli import main

    sys.argv[0] = "textgen"
    main()  # argv from sys.argv: a real process, ended by main itself
