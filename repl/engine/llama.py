"""The fast CPU backend: llama.cpp (llama-cpp-python) runs the model, textgen samples.

llama.cpp does what makes generation fast: quantized matmuls on every core, a KV cache, batched
prefill. Everything that decides *which* token comes next stays the same as on the transformers
backend: each step's logits go through transformers' own logits processors (repetition penalty,
no-repeat n-gram, temperature, top-k, top-p, min-p) and are sampled with a seeded torch
generator, so the parameters mean the same on both backends, and inspect mode records the very
distribution each token was drawn from. Greedy decoding without penalties needs no processor:
it is an argmax, and torch is never imported for it.

Prefix cache: the context keeps the KV of the tokens it last saw (`self.cached`). A request
whose prompt starts with them (regenerate, continue, the next chat turn) drops only what
differs and prefills the rest, in chunks of `n_batch` tokens with a `Progress` item after each,
so a long prompt shows how far it is and Esc / Ctrl+C stops it between chunks. On CPUs with
native bf16, a long prompt (MIN_TOKENS new tokens or more) is prefilled by torch instead, about
4-6x faster here, and its KV cache handed to llama.cpp (repl/engine/long_prefill.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from repl.engine import cpu
from repl.engine.base import Backend, draw_seed, eos_ids
from repl.engine.request import (
    FinishReason,
    GenerationRequest,
    GenerationStats,
    Notice,
    Progress,
    StopMatcher,
    StreamItem,
)
from repl.errors import TextgenError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from repl.engine.convert import GgufModel
    from repl.engine.long_prefill import TorchPrefill
    from repl.params import SamplingParams

PREFILL_CHUNK = 512  # tokens per prefill step: llama.cpp's default batch, and the progress unit
GGML_TYPES = {0: "f32", 1: "f16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "bf16"}
# llama_ftype values (gguf general.file_type) -> the name users know.
FILE_TYPES = {0: "f32", 1: "f16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 12: "Q3_K_M", 15: "Q4_K_M", 17: "Q5_K_M", 18: "Q6_K", 32: "bf16"}


def unavailable_reason(spec: str) -> str | None:
    """Why llama.cpp cannot run `spec` here (None: it can). Cheap: converts nothing."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama.cpp is not installed"
    if spec.startswith(("http://", "https://")):
        return "a URL is a remote server"
    from repl.engine.convert import NotConvertible, gguf_model

    try:
        gguf_model(spec, convert=False)
    except NotConvertible as exc:
        return str(exc)
    return None


class LlamaCppBackend(Backend):
    name = "llama.cpp"

    def __init__(self, llm: Any, tokenizer: Any, info: Any, eos: set[int]) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.info = info
        self.eos = eos
        self.cached: list[int] = []  # the tokens whose KV the context holds, in order
        self.prefill_chunk = PREFILL_CHUNK  # at most the n_batch the context was made with
        self._prompt_logits: tuple[list[int], Any] | None = None  # (prompt ids, its logits)
        self._torch_ready = threading.Event()
        self.fixed_threads: int | None = None  # --threads N; None: free cores, per generation
        self.max_threads = cpu.usable_cores()
        self.threads = self.max_threads  # what the context runs with now
        self.long_prefill: TorchPrefill | None = None  # torch's prefill of long prompts
        self._prefilled_by = ""  # what prefilled the current generation's prompt

    @classmethod
    def open(cls, spec: str, threads: int | None = None) -> LlamaCppBackend:
        """Load `spec` (converting it once if needed); start importing torch in the background
        for the sampling processors, so the model is ready before torch is."""
        from repl.engine.convert import gguf_model
        from repl.engine.tokenizer import FastTokenizer

        model = gguf_model(spec)
        tokenizer = FastTokenizer.from_dir(model.tokenizer_dir)
        most = threads or cpu.usable_cores()
        llm = _load_llama(model, most)
        info = _model_info(spec, model, llm, tokenizer, threads)
        eos = eos_ids(tokenizer.eos_token_id, *_generation_eos(model.tokenizer_dir))
        backend = cls(llm, tokenizer, info, eos)
        backend.fixed_threads, backend.max_threads, backend.threads = threads, most, most
        from repl.engine.long_prefill import TorchPrefill

        backend.long_prefill = TorchPrefill.for_source(model.source_dir)
        threading.Thread(target=backend._import_torch, daemon=True,
                         name="textgen-import-torch").start()
        return backend

    def close(self) -> None:
        self.llm.close()

    def clear_cache(self) -> None:
        self._truncate(0)

    def _import_torch(self) -> None:
        try:
            import torch  # noqa: F401
            from transformers.generation import logits_process  # noqa: F401
        finally:
            self._torch_ready.set()

    # --- one generation -------------------------------------------------------------------------

    def _stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        started = time.perf_counter()
        self._pick_threads()
        params = request.params
        ids, trimmed = self.encode(request)
        if trimmed:
            yield self.trim_notice(trimmed, params)
        seed = draw_seed(params)
        choose = self._chooser(params, seed, request.trace)
        prefilled = yield from self._prefill(ids)
        if prefilled is None:  # cancelled during the prefill
            yield self._stats(started, ids, [], None, "cancelled", seed, trimmed, 0)
            return
        reused, logits = prefilled
        history = list(ids)  # what the penalties look at: prompt and new tokens
        new_ids: list[int] = []
        decoder = _IncrementalText(self.tokenizer)
        stops = StopMatcher(params.stop)
        first_at: float | None = None
        finish: FinishReason = "length"
        while True:
            token = choose(history, logits)
            first_at = first_at or time.perf_counter()
            new_ids.append(token)
            history.append(token)
            if token in self.eos:
                finish = "eos"
                break
            ready, matched = stops.feed(decoder.add(token))
            if ready:
                yield ready
            if matched:
                finish = "stop"
                break
            if self._cancel.is_set():
                finish = "cancelled"
                break
            if len(new_ids) >= params.max_new_tokens:
                break
            self._eval([token])
            logits = self._last_logits()
        if finish != "stop":
            ready, matched = stops.feed(decoder.flush())
            tail = ready if matched else ready + stops.flush()
            finish = "stop" if matched else finish
            if tail:
                yield tail
        yield self._stats(started, ids, new_ids, first_at, finish, seed, trimmed, reused)

    def _pick_threads(self) -> None:
        """Run on the cores other processes leave free now, unless --threads fixed it (see
        repl/engine/cpu.py: a thread that shares its core stalls every other one)."""
        threads = self.fixed_threads or cpu.free_cores(self.max_threads)
        if threads != self.threads:
            from llama_cpp import llama_set_n_threads

            llama_set_n_threads(self.llm._ctx.ctx, threads, threads)
            self.threads = threads

    def _prefill(self, ids: list[int]) -> Generator[Progress, None, tuple[int, Any] | None]:
        """Bring the context to `ids`, reusing the cached tokens they start with; returns
        (tokens reused, the logits after the prompt), or None when cancelled midway.

        The same prompt again (regenerate) reuses the logits saved after its prefill, so it is
        sampled from exactly the numbers the first generation saw: evaluating its last token
        alone would run another kernel than the batched prefill did, and a near-tie could flip.
        """
        reused = _common_prefix(self.cached, ids)
        if reused >= len(ids) and self._prompt_logits is not None and \
                self._prompt_logits[0] == ids:
            self._truncate(len(ids))
            return len(ids), self._prompt_logits[1]
        reused = min(reused, len(ids) - 1)  # the last prompt token is evaluated for its logits
        self._truncate(reused)
        self._prefilled_by = ""
        from repl.engine.long_prefill import MIN_TOKENS

        if self.long_prefill is not None and len(ids) - reused >= MIN_TOKENS:
            done = yield from self._prefill_torch(ids, reused)
        else:
            done = yield from self._prefill_llama(ids, reused)
        if not done:
            return None
        logits = self._last_logits().copy()
        self._prompt_logits = (list(ids), logits)
        return reused, logits

    def _prefill_llama(self, ids: list[int], reused: int) -> Generator[Progress, None, bool]:
        """llama.cpp prefills `ids` from what the context holds, in chunks; False if
        cancelled. Progress counts from `reused` (what the request found cached)."""
        total = len(ids) - reused
        chunk = self.prefill_chunk
        starts = range(len(self.cached), len(ids), chunk)
        for start in starts:
            if self._cancel.is_set():
                return False
            self._eval(ids[start:start + chunk])
            if total > chunk:
                yield Progress(min(start + chunk, len(ids)) - reused, total)
        return True

    def _prefill_torch(self, ids: list[int], reused: int
                       ) -> Generator[Progress | Notice, None, bool]:
        """torch prefills all but the last prompt token after the cached prefix and hands the KV
        cache to llama.cpp, which evaluates the last token for the logits (the first time, the
        two runtimes' KV of the first tokens are compared). If torch cannot, llama.cpp
        prefills, from now on, and a notice says why."""
        from repl.engine import long_prefill

        total = len(ids) - reused
        prefill = self.long_prefill
        assert prefill is not None
        yield Progress(0, total)
        try:
            self._torch_ready.wait()  # two threads importing transformers at once can fail
            prefill.load()
            if len(self.cached) < long_prefill.PROBE:
                self._eval(ids[len(self.cached):long_prefill.PROBE])
            state = long_prefill.read_state(self.llm)
            if prefill.permuted is None and not prefill.check(ids[:long_prefill.PROBE], state):
                raise ValueError("its KV cache does not match llama.cpp's")
            import torch

            start = len(self.cached)
            steps = prefill.extend(state, ids[start:-1], self._cancel.is_set)
            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                while True:
                    try:
                        done = next(steps)
                    except StopIteration as finished:
                        result = finished.value
                        break
                    yield Progress(start + done - reused, total)
            finally:
                torch.set_num_threads(threads)  # the caller's (a transformers model's) count
            if result is None:  # cancelled; llama.cpp still holds the prefix it had
                return False
            long_prefill.write_state(self.llm, result)
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            self.long_prefill = None
            self._truncate(0)  # start clean: a refused state leaves the sequence empty
            yield Notice(f"torch's prefill of long prompts is off ({exc}); llama.cpp "
                         "prefills them")
            return (yield from self._prefill_llama(ids, reused))
        self.llm.n_tokens = len(ids) - 1
        self.llm.input_ids[:len(ids) - 1] = ids[:-1]
        self.cached = list(ids[:-1])
        self._eval(ids[-1:])
        self._prefilled_by = "torch bf16"
        yield Progress(total, total)
        return True

    def _truncate(self, keep: int) -> None:
        """Forget the KV of every cached token after the first `keep`."""
        self.llm.n_tokens = keep  # Llama.eval removes cache entries from n_tokens on
        del self.cached[keep:]
        if keep == 0:
            self._prompt_logits = None

    def _eval(self, tokens: list[int]) -> None:
        self.llm.eval(tokens)
        self.cached.extend(tokens)

    def _last_logits(self) -> np.ndarray:
        """The logits after the last evaluated token: (vocab,) float32, a view into llama.cpp."""
        import numpy as np

        pointer = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),))

    def _chooser(self, params: SamplingParams, seed: int, trace: Any) -> Any:
        """A function (history, logits) -> next token id, with transformers' processors."""
        import numpy as np

        plain_greedy = (params.greedy and params.repetition_penalty == 1.0
                        and not params.no_repeat_ngram_size and trace is None)
        if plain_greedy:
            return lambda history, logits: int(np.argmax(logits))
        self._torch_ready.wait()
        import torch

        processors = _processors(params)
        generator = torch.Generator().manual_seed(seed)

        def choose(history: list[int], logits: np.ndarray) -> int:
            # One torch thread: a vocab-sized op is too small to split, and split it waits at
            # a spinning barrier for a thread that a busy machine has descheduled (measured:
            # 5 ms of CPU per token on one thread, 95 ms on two; benchmarks/NOTES.md).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                input_ids = torch.tensor([history])  # (1, seq)
                scores = torch.from_numpy(logits.copy())[None]  # (1, vocab)
                scores = processors(input_ids, scores)
                if params.greedy:
                    token = int(scores[0].argmax())
                else:
                    probs = torch.softmax(scores[0].float(), dim=-1)  # (vocab,)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                if trace is not None:
                    trace.record(token, scores[0])
            finally:
                torch.set_num_threads(threads)  # the caller's (a transformers model's) count
            return token

        return choose

    def _stats(self, started: float, ids: list[int], new_ids: list[int], first_at: float | None,
               finish: FinishReason, seed: int, trimmed: int, reused: int) -> GenerationStats:
        finished = time.perf_counter()
        decode_s = finished - first_at if first_at is not None else 0.0
        return GenerationStats(
            prompt_tokens=len(ids), new_tokens=len(new_ids),
            ttft_s=first_at - started if first_at is not None else None,
            tokens_per_s=(len(new_ids) - 1) / decode_s if len(new_ids) > 1 and decode_s > 0
            else None,
            total_s=finished - started, finish_reason=finish, seed=seed,
            trimmed_tokens=trimmed, engine=self.name, weights=self.info.dtype,
            cached_tokens=reused, prefill=self._prefilled_by)


def _processors(params: SamplingParams) -> Any:
    """transformers' processors for `params`, in `generate()`'s order."""
    from transformers import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    from repl.params import sampling_warpers

    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(params.repetition_penalty)))
    if params.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(params.no_repeat_ngram_size))
    if not params.greedy:
        processors.extend(sampling_warpers(params.temperature, params.top_k, params.top_p,
                                           params.min_p or None))
    return processors


class _IncrementalText:
    """Token ids in, whole characters out: decodes a short window as the HF streamer here does
    (repl/engine/streaming.py), so the text equals decoding everything at once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] is context already emitted
        self.read = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        seen = self._decode(self.prefix, self.read)
        text = self._decode(self.prefix, len(self.ids))
        if len(text) > len(seen) and not text.endswith("\ufffd"):  # no half a character
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(seen):]
        return ""

    def flush(self) -> str:
        seen = self._decode(self.prefix, self.read)
        rest = self._decode(self.prefix, len(self.ids))[len(seen):]
        self.prefix = self.read = len(self.ids)
        return rest

    def _decode(self, start: int, stop: int) -> str:
        if start >= stop:
            return ""
        return self.tokenizer.decode(self.ids[start:stop], skip_special_tokens=True)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _load_llama(model: GgufModel, threads: int) -> Any:
    from repl.engine.llama_open import open_llama

    try:  # n_ctx=0: the context the model was trained with
        return open_llama(model.gguf, n_ctx=0, n_batch=PREFILL_CHUNK,
                          n_ubatch=PREFILL_CHUNK, n_threads=threads, n_threads_batch=threads,
                          logits_all=False, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise TextgenError(f"{model.gguf}: llama.cpp cannot load it: {exc}") from exc


def _model_info(spec: str, model: GgufModel, llm: Any, tokenizer: Any,
                threads: int | None) -> Any:
    from repl.models import ModelInfo

    file_type = llm.metadata.get("general.file_type")
    weights = FILE_TYPES.get(int(file_type), f"type {file_type}") if file_type else "gguf"
    return ModelInfo(
        spec=spec, name=model.name, parameters=int(llm._model.n_params()),
        context_length=llm.n_ctx(), device=f"cpu×{threads or 'auto'}", dtype=weights,
        has_chat_template=bool(tokenizer.chat_template), backend="llama.cpp")


def _generation_eos(folder: Path) -> list[int]:
    """Extra end ids from generation_config.json beside the tokenizer (chat models often end
    turns with a token other than the tokenizer's EOS)."""
    import json

    try:
        config = json.loads((folder / "generation_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return []
    eos = config.get("eos_token_id")
    return eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
