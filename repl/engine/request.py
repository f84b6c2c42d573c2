"""What goes into a backend and what comes out: the request, the stream's items, the stats.

Every backend takes a `GenerationRequest` and yields the same items: `Notice`s and `Progress`
(prefill) first, then text chunks (`str`), then exactly one `GenerationStats`. Nothing here
imports torch, so the faces can import it before any model loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from repl.params import SamplingParams

FinishReason = Literal["length", "eos", "stop", "cancelled", "error"]
Message = dict[str, str]


@dataclass(frozen=True)
class GenerationRequest:
    """A completion prompt, or (chat mode) a message list. A chat list that ends with an
    assistant message is continued rather than answered."""

    prompt: str = ""
    params: SamplingParams = field(default_factory=SamplingParams)
    messages: tuple[Message, ...] | None = None
    # Token ids placed after the encoded prompt, as if generated: a forced alternative token
    # (and the kept tokens before it). Their text is not streamed; the caller knows it.
    forced_ids: tuple[int, ...] = ()
    # A repl.token_probs.TokenTrace to record each token's probability into (inspect mode).
    trace: Any = field(default=None, compare=False, repr=False)

    @property
    def mode(self) -> Literal["complete", "chat"]:
        return "complete" if self.messages is None else "chat"

    @classmethod
    def chat(cls, messages: Sequence[Message], params: SamplingParams | None = None
             ) -> GenerationRequest:
        return cls(params=params or SamplingParams(), messages=tuple(dict(m) for m in messages))


@dataclass(frozen=True)
class Notice:
    """Something the user should know about this generation (e.g. the prompt was trimmed)."""

    message: str


@dataclass(frozen=True)
class Progress:
    """Prefill progress of a long prompt: `done` of `total` new prompt tokens are in the cache."""

    done: int
    total: int

    def summary(self) -> str:
        return f"prompt {self.done:,}/{self.total:,} tokens"


@dataclass
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    tokens_per_s: float | None
    total_s: float
    finish_reason: FinishReason
    seed: int
    trimmed_tokens: int = 0
    # Which backend ran ("transformers", "llama.cpp", ...) and in which weight format.
    engine: str = "transformers"
    weights: str = ""
    # Prompt tokens reused from the previous generation's KV cache (not prefilled again).
    cached_tokens: int = 0
    # What prefilled the prompt when it was not the backend itself ("torch bf16": a long
    # prompt on llama.cpp, repl/engine/long_prefill.py).
    prefill: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationStats:
        """From a saved session: unknown keys are ignored; older files said `plain`/`fast`."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def summary(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "-"
        rate = f"{self.tokens_per_s:.1f} tok/s" if self.tokens_per_s else "-"
        cached = f" ({self.cached_tokens} cached)" if self.cached_tokens else ""
        prefill = f", prefilled on {self.prefill}" if self.prefill else ""
        return (f"{self.new_tokens} tokens · {rate} · first token {ttft} · "
                f"prompt {self.prompt_tokens} tokens{cached}{prefill} · seed {self.seed} · "
                f"{self.finish_reason}")


StreamItem = str | Notice | Progress | GenerationStats


class StopMatcher:
    """Finds stop strings across chunk boundaries, holding back text that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.text = ""
        self.emitted = 0

    def feed(self, chunk: str) -> tuple[str, bool]:
        """Add a chunk; return (text safe to show now, whether a stop string was found)."""
        self.text += chunk
        if not self.stops:
            return self._emit(len(self.text)), False
        longest = max(len(s) for s in self.stops)
        search_from = max(0, self.emitted - longest)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            return self._emit(min(hits)), True
        return self._emit(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _held_back(self) -> int:
        for size in range(min(len(self.text), max(len(s) for s in self.stops) - 1), 0, -1):
            if any(s.startswith(self.text[-size:]) for s in self.stops):
                return size
        return 0

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        out, self.emitted = self.text[self.emitted:end], end
        return out
