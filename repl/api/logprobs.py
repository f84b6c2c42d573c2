"""Token log-probabilities in OpenAI's two shapes, from a generation's `TokenTrace`.

What the trace records is the distribution each token was drawn from (after temperature,
top-k, top-p: see repl/token_probs.py), so a token those ruled out has probability 0, which
OpenAI spells -9999.0 (JSON has no -infinity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from repl.token_probs import TokenStep

UNLIKELY = -9999.0


def logprob(prob: float) -> float:
    return math.log(prob) if prob > 0 else UNLIKELY


class TokenTexts:
    """Each token id's text, decoded once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self._cache:
            self._cache[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self._cache[token_id]


def completion_logprobs(steps: Sequence[TokenStep], top: int, text_of: TokenTexts,
                        offset: int) -> dict[str, Any]:
    """`/v1/completions`' shape: parallel lists; `offset` is where the first token starts in
    the prompt + completion text."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for step in steps:
        token = text_of(step.token_id)
        tokens.append(token)
        token_logprobs.append(logprob(step.prob))
        tops.append({text_of(i): logprob(p) for i, p in step.alternatives()[:top]})
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
            "text_offset": offsets}


def chat_logprobs(steps: Sequence[TokenStep], top: int, text_of: TokenTexts
                  ) -> dict[str, Any]:
    """`/v1/chat/completions`' shape: one entry per token with its top alternatives."""
    def entry(token_id: int, prob: float) -> dict[str, Any]:
        token = text_of(token_id)
        return {"token": token, "logprob": logprob(prob), "bytes": list(token.encode("utf-8"))}

    return {"content": [
        {**entry(step.token_id, step.prob),
         "top_logprobs": [entry(i, p) for i, p in step.alternatives()[:top]]}
        for step in steps
    ]}
