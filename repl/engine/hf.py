"""The transformers backend: plain `model.generate` with a streamer, the reference.

Any Hugging Face causal LM, on CPU or CUDA. `generate` runs in a worker thread and a
`CountingStreamer` hands text chunks to the caller as they are decoded; stop strings and
`cancel()` end generation within one token through a `StoppingCriteria`. An exception in the
worker is re-raised in the caller's thread, so a stream never hangs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from repl.engine.base import Backend, draw_seed, eos_ids
from repl.engine.request import (
    FinishReason,
    GenerationRequest,
    GenerationStats,
    StopMatcher,
    StreamItem,
)

if TYPE_CHECKING:
    from repl.models import LoadedModel
    from repl.params import SamplingParams


class TransformersBackend(Backend):
    """Holds one loaded transformers model and runs one generation at a time."""

    name = "transformers"

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info = loaded.info

    def _stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        import torch
        from transformers import StoppingCriteriaList, set_seed

        from repl.engine.streaming import CountingStreamer, EventCriteria

        started = time.perf_counter()
        params = request.params
        ids, trimmed = self.encode(request)
        if trimmed:
            yield self.trim_notice(trimmed, params)
        seed = draw_seed(params)
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
        if device.type == "cuda":
            # The GPU path: a static KV cache, with which generate() compiles the decode step
            # (torch.compile, CUDA graphs) after its first calls.
            kwargs["cache_implementation"] = "static"
        if request.trace is not None:  # inspect mode: record from this very generation
            kwargs = request.trace.generate_kwargs(kwargs, plain=True)
        outcome: dict[str, Any] = {}
        generate = self.model.generate

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
        stops = StopMatcher(params.stop)
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
            engine=self.name,
            weights=self.info.dtype,
        )

    def _finish_reason(self, new_ids: list[int], params: SamplingParams) -> FinishReason:
        if self._cancel.is_set():
            return "cancelled"
        if new_ids and new_ids[-1] in eos_ids(self.model.generation_config.eos_token_id):
            return "eos"
        return "length" if len(new_ids) >= params.max_new_tokens else "eos"


# The name the faces used before there were several backends.
Generator = TransformersBackend
