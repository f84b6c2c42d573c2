"""The generation engine: a request goes in, a stream of text comes out.

`Generator.stream(request)` runs `model.generate` in a worker thread and yields text chunks from a
`TextIteratorStreamer` as they are decoded; the last item is a `GenerationStats`. Stop strings and
`cancel()` end generation within one token through a `StoppingCriteria`. An exception in the
worker is re-raised in the caller's thread, so a stream never hangs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from repl.errors import TextgenError
from repl.params import SamplingParams

if TYPE_CHECKING:
    from repl.models import LoadedModel

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
    engine: str = "plain"  # "plain" generate(), or "fast" / "fast-eager" (repl/fast.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "-"
        rate = f"{self.tokens_per_s:.1f} tok/s" if self.tokens_per_s else "-"
        return (f"{self.new_tokens} tokens · {rate} · first token {ttft} · "
                f"prompt {self.prompt_tokens} tokens · seed {self.seed} · {self.finish_reason}")


StreamItem = str | Notice | GenerationStats


class Generator:
    """Holds one loaded model and runs one generation at a time."""

    def __init__(self, loaded: LoadedModel, fast: bool | None = None) -> None:
        """`fast` (default: the loaded model's choice, normally on) uses repl/fast.py where the
        model supports it; it starts compiling in the background at once."""
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info = loaded.info
        self._cancel = threading.Event()
        self._busy = threading.Lock()
        self.fast = None
        if loaded.fast if fast is None else fast:
            from repl.fast import decoder_for

            self.fast = decoder_for(self.model)

    def cancel(self) -> None:
        """Stop the running generation after the current token; its text so far is kept."""
        self._cancel.set()

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, request: GenerationRequest) -> tuple[list[int], int]:
        """Token ids of the request's full prompt, fitted to the context: (ids, tokens dropped).

        Completion prompts lose their oldest tokens; chat loses its oldest turns first (a system
        message stays), then oldest tokens, so the template stays well formed where it can.
        """
        params = request.params
        context = self.info.context_length
        params.check_fits(context)
        budget = None if context is None else context - params.max_new_tokens
        forced = list(request.forced_ids)
        if request.messages is None:
            ids = list(self.tokenizer(request.prompt).input_ids)
            if not ids and not forced:
                ids = _start_ids(self.tokenizer)
            return _trim_left(ids + forced, budget, self.tokenizer.bos_token_id)
        messages = list(request.messages)
        ids = self._chat_ids(messages)
        dropped = 0
        while budget is not None and len(ids) > budget and _droppable(messages):
            index = 1 if messages[0]["role"] == "system" else 0
            messages.pop(index)
            new_ids = self._chat_ids(messages)
            dropped += len(ids) - len(new_ids)
            ids = new_ids
        ids, trimmed = _trim_left(ids + forced, budget, self.tokenizer.bos_token_id)
        return ids, dropped + trimmed

    def _chat_ids(self, messages: list[Message]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise TextgenError(
                f"{self.info.name} has no chat template, so it cannot chat; use completion mode."
            )
        continuing = bool(messages) and messages[-1].get("role") == "assistant"
        encoded = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=not continuing,
            continue_final_message=continuing,
            tokenize=True,
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)

    def stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        """Yield Notices, then text chunks as they are generated, then one GenerationStats.

        Abandoning the iterator (break, an exception, Ctrl+C) cancels the generation and waits
        for the worker, so no thread outlives its stream.
        """
        if not self._busy.acquire(blocking=False):
            raise TextgenError("a generation is already running; stop it first.")
        try:
            yield from self._stream(request)
        finally:
            self._busy.release()

    def _stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        import torch
        from transformers import StoppingCriteriaList, set_seed

        from repl.streaming import CountingStreamer, EventCriteria

        started = time.perf_counter()
        params = request.params
        ids, trimmed = self.encode(request)
        if trimmed:
            yield Notice(
                f"the prompt did not fit the {self.info.context_length}-token context with "
                f"{params.max_new_tokens} new tokens: dropped its first {trimmed} tokens."
            )
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        self._cancel.clear()
        stop_now = threading.Event()  # set by a stop string; user cancels use self._cancel
        streamer = CountingStreamer(self.tokenizer)
        device = self.model.device
        input_ids = torch.tensor([ids], device=device)
        kwargs = params.to_generate_kwargs()
        kwargs.update(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([EventCriteria(self._cancel, stop_now)]),
            pad_token_id=self.model.generation_config.pad_token_id,
        )
        fast = self.fast
        if request.trace is not None:  # inspect mode: record from this very generation
            kwargs = request.trace.generate_kwargs(kwargs, plain=fast is None)
        outcome: dict[str, Any] = {}
        generate = fast.generate if fast is not None else self.model.generate
        engine = "plain" if fast is None else "fast" if fast.compiled else "fast-eager"

        def work() -> None:
            try:
                set_seed(seed)
                with torch.inference_mode():
                    outcome["sequences"] = generate(**kwargs)
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc
            finally:
                streamer.end_once()

        worker = threading.Thread(target=work, name="textgen-generate", daemon=True)
        worker.start()
        stops = _StopMatcher(params.stop)
        finish: FinishReason | None = None
        try:
            for chunk in streamer.chunks(worker):
                ready, matched = stops.feed(chunk)
                if ready:
                    yield ready
                if matched:
                    finish = "stop"
                    stop_now.set()
                    break
            else:
                if tail := stops.flush():
                    yield tail
        finally:
            if worker.is_alive():
                stop_now.set()
                worker.join()
        if "error" in outcome:
            raise outcome["error"]
        finished = time.perf_counter()
        sequences = outcome["sequences"]
        new_ids = sequences[0, len(ids):].tolist()
        if finish is None:
            finish = self._finish_reason(new_ids, params)
        first = streamer.first_token_at
        decode_time = finished - first if first is not None else 0.0
        yield GenerationStats(
            prompt_tokens=len(ids),
            new_tokens=len(new_ids),
            ttft_s=(first - started) if first is not None else None,
            tokens_per_s=(len(new_ids) - 1) / decode_time if len(new_ids) > 1 and decode_time > 0
            else None,
            total_s=finished - started,
            finish_reason=finish,
            seed=seed,
            trimmed_tokens=trimmed,
            engine=engine,
        )

    def _finish_reason(self, new_ids: list[int], params: SamplingParams) -> FinishReason:
        if self._cancel.is_set():
            return "cancelled"
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if new_ids and new_ids[-1] in eos_ids:
            return "eos"
        return "length" if len(new_ids) >= params.max_new_tokens else "eos"

    def generate(self, request: GenerationRequest) -> tuple[str, GenerationStats]:
        """The whole text and its stats, for callers that do not stream."""
        text: list[str] = []
        stats: GenerationStats | None = None
        for item in self.stream(request):
            if isinstance(item, str):
                text.append(item)
            elif isinstance(item, GenerationStats):
                stats = item
        assert stats is not None
        return "".join(text), stats


def _start_ids(tokenizer: Any) -> list[int]:
    """An empty prompt starts from BOS (or EOS, GPT-2's document separator)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise TextgenError("the prompt is empty and this model has no start token; type a prompt.")
    return [token]


def _trim_left(ids: list[int], budget: int | None, bos: int | None) -> tuple[list[int], int]:
    """Keep the last `budget` tokens (and a leading BOS); return (ids, tokens dropped)."""
    if budget is None or len(ids) <= budget:
        return ids, 0
    keep_bos = bos is not None and ids[0] == bos
    kept = ids[len(ids) - budget + keep_bos:]
    return ([bos] if keep_bos else []) + kept, len(ids) - budget


def _droppable(messages: list[Message]) -> bool:
    """More than the last message is left beside an optional system message."""
    rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return len(rest) > 1


class _StopMatcher:
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
