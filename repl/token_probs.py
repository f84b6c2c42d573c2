"""Token probabilities captured from the generation itself (inspect mode).

A `TokenTrace` rides on a `GenerationRequest`. What it records is the distribution each token
was drawn from: the model's scores after repetition penalty, temperature, top-k, top-p and min-p
(so a token that top-p ruled out has probability 0; with greedy decoding it is the model's own
softmax). The engine gives `generate` two small hooks (`generate_kwargs`): a logits processor
that keeps the processed scores of the step, and a stopping criterion, called once the token is
chosen, that pairs those scores with the token and stores its probability and the top
alternatives. No second forward pass: the cost is one softmax and one top-k per token.

`generate()` runs custom logits processors before its sampling warpers, so on that path the
warpers are built here, in `generate()`'s own order, ahead of the recorder (and switched off in
the arguments); the output is the same token for token. The llama.cpp backend runs the same
processors itself and calls `record` with each step's processed scores.

This module imports torch only inside the hooks, so the TUI can import it before a model loads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TOP = 10  # alternatives kept per token

# Probability bands for colouring, highest first: (lower bound, Textual style, legend label).
BANDS: tuple[tuple[float, str, str], ...] = (
    (0.9, "$success", ">90%"),
    (0.5, "$text", ">50%"),
    (0.1, "$warning", ">10%"),
    (0.0, "bold $error", "<10%"),
)


def band_style(prob: float) -> str:
    for lower, style, _ in BANDS:
        if prob > lower or lower == 0.0:
            return style
    return BANDS[-1][1]


@dataclass(frozen=True)
class TokenStep:
    """One generated token: its id, its probability and the most likely alternatives (ids and
    probabilities, highest first; the chosen token may be among them)."""

    token_id: int
    prob: float
    top_ids: tuple[int, ...]
    top_probs: tuple[float, ...]

    def alternatives(self) -> list[tuple[int, float]]:
        return list(zip(self.top_ids, self.top_probs, strict=True))


@dataclass(eq=False)
class TokenTrace:
    """The steps of one generation, appended by the worker thread as tokens are chosen.

    `steps` may start with copied steps (the kept part of a forced alternative); `recorded`
    counts only the ones this generation added.
    """

    steps: list[TokenStep] = field(default_factory=list)
    top: int = TOP
    recorded: int = 0
    _pending: Any = None  # the processed scores of the step in flight (plain generate path)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ids(self) -> list[int]:
        return [s.token_id for s in self.steps]

    def snapshot(self) -> list[TokenStep]:
        with self._lock:
            return list(self.steps)

    def add(self, step: TokenStep) -> None:
        """Record a step computed elsewhere (a remote server's logprobs)."""
        with self._lock:
            self.steps.append(step)
            self.recorded += 1

    def generate_kwargs(self, kwargs: dict[str, Any], plain: bool) -> dict[str, Any]:
        """`kwargs` for `generate`, with the recording hooks added (`plain=False`: only the
        stopping criterion, for a caller that applies the warpers itself)."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from repl.params import sampling_warpers

        keep_scores, record_token = self.hooks()
        kwargs = dict(kwargs)
        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [*(kwargs.get("stopping_criteria") or []), record_token])
        if not plain:
            return kwargs
        processors = LogitsProcessorList()
        if kwargs.get("do_sample"):
            processors.extend(sampling_warpers(*(kwargs.get(k) for k in
                                                 ("temperature", "top_k", "top_p", "min_p"))))
            kwargs.update(temperature=None, top_k=None, top_p=None, min_p=None)
        processors.append(keep_scores)
        kwargs["logits_processor"] = processors
        return kwargs

    def hooks(self) -> tuple[Any, Any]:
        """(logits processor, stopping criterion) for `model.generate`."""
        from transformers import LogitsProcessor, StoppingCriteria

        trace = self

        class KeepScores(LogitsProcessor):
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                trace._pending = scores
                return scores

        class RecordToken(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                dist = trace._pending if trace._pending is not None else scores
                trace._pending = None
                if isinstance(dist, torch.Tensor):
                    trace.record(int(input_ids[0, -1]), dist[0])
                return torch.zeros((input_ids.shape[0],), dtype=torch.bool,
                                   device=input_ids.device)

        return KeepScores(), RecordToken()

    def record(self, token_id: int, scores: Any) -> None:
        """Store the chosen token's probability under `scores` (1-D) and the top alternatives."""
        import torch

        probs = torch.softmax(scores.float(), dim=-1)
        top_probs, top_ids = probs.topk(self.top)
        step = TokenStep(token_id, float(probs[token_id]), tuple(top_ids.tolist()),
                         tuple(top_probs.tolist()))
        with self._lock:
            self.steps.append(step)
            self.recorded += 1


def token_spans(tokenizer: Any, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """Character span of each token in `text` (the decoded completion), [start, end).

    Decodes growing prefixes, as the streamer does, so spaces and merges come out the same. A
    token that ends inside a multi-byte character gets an empty span and the next one covers the
    character. Tokens past the end of `text` (cut by a stop string) get clipped or empty spans.
    """
    spans: list[tuple[int, int]] = []
    previous = 0
    for i in range(len(ids)):
        decoded = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True)
        end = previous if decoded.endswith("\ufffd") else len(decoded)
        end = max(previous, min(end, len(text)))
        spans.append((previous, end))
        previous = end
    return spans


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token as a user should see it: decoded, with whitespace made visible."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return text.replace("\n", "↵").replace("\t", "→").replace(" ", "␣") or "∅"
