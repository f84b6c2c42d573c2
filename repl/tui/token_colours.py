"""Inspect mode's colours: each generated token's span of a completion, styled by its
probability band. Shared by the transcript (F2) and the token screen (F3); no widgets here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from textual.content import Content

from repl.session import Completion
from repl.token_probs import BANDS, TokenStep, band_style, token_spans

# The tokenizer of the model that made a completion, None when that model is not loaded.
TokenizerFor = Callable[[Completion], Any]


@dataclass(frozen=True)
class Piece:
    """One generated token of a completion and where its text is."""

    segment: int  # which recorded generation (0: the first, then continuations)
    index: int  # token index within that generation
    start: int
    end: int
    step: TokenStep


def pieces(completion: Completion, tokenizer: Any) -> list[Piece]:
    """Every recorded token of a completion with its character span, in text order."""
    out: list[Piece] = []
    text = completion.text
    traces = completion.traces
    for segment, (start, trace) in enumerate(traces):
        end = traces[segment + 1][0] if segment + 1 < len(traces) else len(text)
        steps = trace.snapshot()
        spans = token_spans(tokenizer, [s.token_id for s in steps], text[start:end])
        out += [Piece(segment, i, start + a, start + b, step)
                for i, (step, (a, b)) in enumerate(zip(steps, spans, strict=True))]
    return out


def coloured(text: str, parts: list[Piece], cursor: int | None = None) -> Content:
    """`text` with each token's span styled by its probability band (the cursor reversed)."""
    assembled: list[str | tuple[str, str]] = []
    at = 0
    for number, piece in enumerate(parts):
        if piece.end <= piece.start:
            continue
        if piece.start > at:
            assembled.append(text[at:piece.start])
        style = band_style(piece.step.prob)
        if number == cursor:
            style += " reverse"
        assembled.append((text[piece.start:piece.end], style))
        at = piece.end
    assembled.append(text[at:])
    return Content.assemble(*assembled)


def legend() -> Content:
    parts: list[str | tuple[str, str]] = ["p: "]
    for _, style, label in BANDS:
        parts += [("■", style), f"{label} "]
    return Content.assemble(*parts)
