"""Sampling parameters: validated on construction, named presets, and transformers' kwargs.

`to_generate_kwargs()` is the only place that knows transformers' argument names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Bounds that keep sampling finite: dividing logits by a temperature of 1e-40, or by a
# repetition penalty of 1e-300, gives inf, and then "probability tensor contains inf/nan".
MIN_TEMPERATURE = 0.01
REPETITION_PENALTY = (0.05, 20.0)
# Far beyond any real use, small enough that no arithmetic on them overflows.
MAX_NEW_TOKENS = 1_000_000
MAX_TOP_K = 1_000_000
MAX_NO_REPEAT_NGRAM = 1_000


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 200
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    min_p: float = 0.0
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 0
    do_sample: bool = True
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Accept lists from JSON or argparse but store a tuple, so instances stay hashable.
        if not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        _check(_is_whole(self.max_new_tokens), "max_new_tokens must be a whole number.")
        _check(self.max_new_tokens >= 1, "max_new_tokens must be at least 1.")
        _check(self.max_new_tokens <= MAX_NEW_TOKENS,
               f"max_new_tokens must be at most {MAX_NEW_TOKENS}.")
        _check(_is_number(self.temperature), "temperature must be a number.")
        _check(self.temperature >= 0, "temperature must be 0 or more (0 means greedy).")
        _check(self.temperature == 0 or self.temperature >= MIN_TEMPERATURE,
               f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}.")
        _check(self.temperature <= 100, "temperature must be at most 100.")
        _check(_is_whole(self.top_k) and 0 <= self.top_k <= MAX_TOP_K,
               f"top_k must be a whole number from 0 to {MAX_TOP_K} (0 turns it off).")
        _check(_is_number(self.top_p) and 0 < self.top_p <= 1,
               "top_p must be more than 0 and at most 1 (1 turns it off).")
        _check(_is_number(self.min_p) and 0 <= self.min_p < 1,
               "min_p must be 0 or more and less than 1 (0 turns it off).")
        _check(_is_number(self.repetition_penalty)
               and REPETITION_PENALTY[0] <= self.repetition_penalty <= REPETITION_PENALTY[1],
               f"repetition_penalty must be from {REPETITION_PENALTY[0]} to "
               f"{REPETITION_PENALTY[1]} (1 turns it off).")
        _check(_is_whole(self.no_repeat_ngram_size)
               and 0 <= self.no_repeat_ngram_size <= MAX_NO_REPEAT_NGRAM,
               f"no_repeat_ngram_size must be a whole number from 0 to {MAX_NO_REPEAT_NGRAM} "
               "(0 turns it off).")
        _check(isinstance(self.do_sample, bool), "do_sample must be true or false.")
        _check(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**32),
               "seed must be a whole number from 0 to 4294967295, or empty for a fresh one.")
        _check(all(isinstance(s, str) and s for s in self.stop),
               "stop strings must be non-empty text.")

    @property
    def greedy(self) -> bool:
        """Greedy decoding: sampling off, or a temperature of 0."""
        return not self.do_sample or self.temperature == 0

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed, validated like any new instance."""
        return dataclasses.replace(self, **changes)

    def check_fits(self, context_length: int | None) -> None:
        """Raise ValueError when max_new_tokens leaves no room for a prompt in the context."""
        if context_length is not None and self.max_new_tokens >= context_length:
            raise ValueError(
                f"max_new_tokens must be less than the model's context of {context_length} "
                f"tokens (got {self.max_new_tokens})."
            )

    def to_generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for `model.generate`, with every default made explicit."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }
        if self.greedy:
            # Explicit Nones keep a model's generation_config from re-enabling sampling knobs.
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None, min_p=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                min_p=self.min_p or None,
            )
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        """Build from a dict (a session file, JSON); unknown keys are an error, not ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}.")
        return cls(**data)

    def with_text(self, name: str, text: str) -> SamplingParams:
        """Set one field from what a user typed (a widget, `/set NAME VALUE`, a flag)."""
        return self.replace(**{name: parse_value(name, text)})


def sampling_warpers(temperature: float | None, top_k: int | None, top_p: float | None,
                     min_p: float | None) -> list[Any]:
    """transformers' sampling warpers for these values, in `generate()`'s order; the ones that
    would change nothing are left out."""
    from transformers import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers: list[Any] = []
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p:
        warpers.append(MinPLogitsWarper(min_p))
    return warpers


def parse_value(name: str, text: str) -> Any:
    """Parse a user's text into the type of field `name`, with a plain-sentence error."""
    kinds = {f.name: f.type for f in dataclasses.fields(SamplingParams)}
    name = name.strip().replace("-", "_")
    if name not in kinds:
        raise ValueError(f"unknown parameter {name!r}; known: {', '.join(PARAM_NAMES)}.")
    text = text.strip()
    kind = kinds[name]
    try:
        if name == "seed":
            return None if text.lower() in ("", "none", "random") else int(text)
        if name == "stop":
            return tuple(s for s in (part.strip() for part in text.split(",")) if s)
        if kind == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            return int(text)
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        expected = {"int": "a whole number", "float": "a number", "bool": "on or off"}
        raise ValueError(
            f"{name} must be {expected.get(str(kind), 'a number')}, not {text!r}."
        ) from None


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool): inf and nan are refused everywhere."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplingParams))

PRESETS: dict[str, SamplingParams] = {
    "greedy": SamplingParams(do_sample=False, temperature=0.0, repetition_penalty=1.0),
    "balanced": SamplingParams(),
    "creative": SamplingParams(temperature=1.0, top_k=0, top_p=0.95, repetition_penalty=1.05),
    "precise": SamplingParams(temperature=0.3, top_k=20, top_p=0.8, repetition_penalty=1.15),
}
DEFAULT_PRESET = "balanced"


def preset(name: str) -> SamplingParams:
    """A named preset, or ValueError naming the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}."
        ) from None
