"""One session being worked on: submit, edit, regenerate, continue, page, autosave.

This is the core that the TUI and the plain REPL share. Each action returns the engine's stream;
whatever happens to that stream (it finishes, is cancelled, raises, or is abandoned), the text it
produced is recorded in the session and the session file is rewritten atomically.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from repl.engine import GenerationRequest, GenerationStats, Generator, Notice, StreamItem
from repl.errors import TextgenError
from repl.params import SamplingParams
from repl.session import (
    EDITED,
    Branch,
    Completion,
    Continuation,
    Forced,
    HistoryRef,
    Mode,
    Session,
    SessionBusy,
    SessionLock,
    Turn,
    save_session,
    session_filename,
)
from repl.token_probs import TokenStep, TokenTrace

Recorder = Callable[[str, GenerationStats | None, str], None]


class Conversation:
    def __init__(self, session: Session, generator: Generator | None = None, *,
                 sessions_dir: Path | None = None, path: Path | None = None,
                 mode: Mode = "complete") -> None:
        self.session = session
        self.generator = generator
        self.sessions_dir = sessions_dir
        self.mode: Mode = mode
        self.save_error: str | None = None
        # Set when the file was open in another process and this one works on a copy: a
        # sentence for the face to show.
        self.lock_note: str | None = None
        self._lock: SessionLock | None = None
        self.path = self._claim(path) if path is not None else None
        self.inspect = False  # record each token's probability (repl.token_probs)
        # The request of the action started last: the context meter counts its prompt as the
        # backend encodes it (a chat template adds tokens the raw text does not have).
        self.last_request: GenerationRequest | None = None
        # The TUI saves from a worker thread (end of a stream) and the UI thread (paging): one
        # save at a time, each writing the state as of its own start, so the last one wins.
        self._save_lock = threading.Lock()

    # --- state ----------------------------------------------------------------------------------

    @property
    def params(self) -> SamplingParams:
        return self.session.params

    @params.setter
    def params(self, params: SamplingParams) -> None:
        self.session.params = params

    @property
    def system(self) -> str:
        """The chat system prompt ("" for none): kept in the session file as an optional
        field that older files lack (and older textgens keep as an unknown field)."""
        value = self.session.extra.get("system", "")
        return value if isinstance(value, str) else ""

    @system.setter
    def system(self, text: str) -> None:
        if text.strip():
            self.session.extra["system"] = text
        else:
            self.session.extra.pop("system", None)

    @property
    def last_turn(self) -> Turn | None:
        return self.session.turns[-1] if self.session.turns else None

    def set_generator(self, generator: Generator) -> None:
        """Use another model from the next generation on (earlier completions keep theirs)."""
        self.generator = generator
        self.session.model = {"spec": generator.info.spec, "name": generator.info.name}

    def select(self, index: int, turn_index: int = -1) -> Completion:
        """Make alternative `index` of a turn the selected one (what continue and chat use)."""
        turn = self._turn(turn_index)
        if not 0 <= index < len(turn.completions):
            raise TextgenError(f"there is no alternative {index + 1}; this turn has "
                               f"{len(turn.completions)}.")
        turn.selected = index
        self.save()
        return turn.completions[index]

    def page(self, delta: int, turn_index: int = -1) -> Completion | None:
        """Select the previous (-1) or next (+1) alternative of a turn, stopping at either end.
        Where the turn has branches, paging goes on through them: past the last alternative
        of one branch comes the first of the next, and the turns after it are that branch's."""
        index = self._index(turn_index)
        heads = [line[0] for line in self.session.lines_at(index)]
        places = [(b, a) for b, head in enumerate(heads)
                  for a in range(max(1, len(head.completions)))]
        turn = self.session.turns[index]
        here = places.index((turn.branch, turn.selected))
        line, alternative = places[max(0, min(len(places) - 1, here + delta))]
        self.session.switch_branch(index, line)
        turn = self.session.turns[index]
        if turn.completions:
            turn.selected = alternative
        self.save()
        return turn.completion

    def switch_branch(self, turn_index: int, line: int) -> Turn:
        """Show branch `line` (0-based) of a turn's position, and the turns that follow it."""
        index = self._index(turn_index)
        try:
            self.session.switch_branch(index, line)
        except ValueError as exc:
            raise TextgenError(f"{exc}.") from None
        self.save()
        return self.session.turns[index]

    def switch_to(self, number: int) -> Branch:
        """Show whole conversation `number` (1-based, as `Session.branches()` orders them)."""
        branches = self.session.branches()
        if not 1 <= number <= len(branches):
            raise TextgenError(f"there is no branch {number}; this session has "
                               f"{len(branches)}.")
        self.session.switch_to(branches[number - 1])
        self.save()
        return branches[number - 1]

    # --- actions: each returns the stream to consume --------------------------------------------

    def submit(self, prompt: str, mode: Mode | None = None) -> Iterator[StreamItem]:
        """A new turn for `prompt`, and its first completion."""
        generator = self._ready()
        self.session.turns.append(Turn(mode=mode or self.mode, prompt=prompt))
        return self._first_completion(generator, len(self.session.turns) - 1,
                                      self._seeded(self.params))

    def _first_completion(self, generator: Generator, index: int,
                          params: SamplingParams) -> Iterator[StreamItem]:
        """Generate the first completion of the new turn at `index` (appended, or a new branch);
        a request the engine refuses leaves the session as it was before the turn."""
        turn = self.session.turns[index]

        def discard() -> None:
            # The engine refused the request (no chat template, too long): no empty turn stays.
            if index < len(self.session.turns) and self.session.turns[index] is turn \
                    and not turn.completions:
                self.session.drop_branch(index)

        try:
            refs = self._refs(index)
            request = self._request(index, params, continuing="", history=refs)
        except BaseException:
            discard()
            raise
        return self._run(generator, request,
                         self._new_completion(turn, params, generator, request.trace, refs),
                         discard)

    def edit(self, turn_index: int, prompt: str) -> Iterator[StreamItem]:
        """Replace a turn's prompt and generate from there, as a new branch: the turns shown
        from that position on are kept as another branch (`page` and `switch_branch` go back
        to them)."""
        generator = self._ready()
        index = self._index(turn_index)
        old = self._not_compare(self.session.turns[index], "edited")
        turn = Turn(mode=old.mode, prompt=prompt)
        self.session.new_branch(index, turn)
        return self._first_completion(generator, index, self._seeded(self.params))

    def edit_reply(self, turn_index: int, text: str) -> Completion:
        """Keep `text` as a new alternative of a turn, written by hand (finish `edited`): in
        place, or on a new branch where later chat turns answered the reply shown (as
        `regenerate`). Continue (`continue_`) generates on from it."""
        index = self._index(turn_index)
        turn = self._not_compare(self.session.turns[index], "edited")
        source = turn.completion
        if self._answered_later(index):
            turn = Turn(mode=turn.mode, prompt=turn.prompt)
            self.session.new_branch(index, turn)
        model = source.model if source is not None else self.session.model.get("spec", "")
        completion = Completion(text=text, params=self.params, seed=0, stats=None,
                                finish=EDITED, model=model, history=self._refs(index))
        turn.completions.append(completion)
        turn.selected = len(turn.completions) - 1
        self.save()
        return completion

    def regenerate(self, turn_index: int = -1) -> Iterator[StreamItem]:
        """Another alternative for a turn; it becomes the selected one.

        A chat turn that later chat turns depend on (their context holds its reply) gets the new
        reply on a new branch instead, so those turns stay with the reply they answered.
        With a fixed seed the Nth alternative of a prompt at a position (all its branches
        counted) uses seed + N, so alternatives differ and the whole session still replays
        exactly.
        """
        generator = self._ready()
        index = self._index(turn_index)
        turn = self._not_compare(self.session.turns[index], "regenerated")
        made = len(turn.same_prompt_completions())
        params = self.params
        if params.seed is not None:
            params = params.replace(seed=(params.seed + made) % 2**32)
        params = self._seeded(params)
        if self._answered_later(index):
            self.session.new_branch(index, Turn(mode=turn.mode, prompt=turn.prompt))
            return self._first_completion(generator, index, params)
        refs = self._refs(index)
        request = self._request(index, params, continuing="", history=refs)
        return self._run(generator, request,
                         self._new_completion(turn, params, generator, request.trace, refs))

    def continue_(self, turn_index: int = -1) -> Iterator[StreamItem]:
        """Extend the selected completion of a turn."""
        generator = self._ready()
        turn = self._not_compare(self._turn(turn_index), "continued")
        completion = turn.completion
        if completion is None:
            raise TextgenError("there is nothing to continue yet; submit a prompt first.")
        params = self._seeded(self.params)
        refs = self._refs(self.session.turns.index(turn))
        request = self._request(self.session.turns.index(turn), params,
                                continuing=completion.text, history=refs)
        start = len(completion.text)

        def record(text: str, stats: GenerationStats | None, finish: str) -> None:
            completion.text += text
            completion.continuations.append(Continuation(
                start=start, params=params, seed=params.seed or 0, stats=stats, finish=finish,
                history=refs))
            if request.trace is not None:
                completion.traces.append((start, request.trace))

        return self._run(generator, request, record)

    def replay_request(self, turn_index: int, completion_index: int) -> GenerationRequest:
        """The request that reproduces a stored completion's first generation exactly.

        Chat turns are replayed with the context they were made with (the earlier replies as they
        were then), or, for files that did not record it, with the alternatives selected now.
        """
        turn = self._turn(turn_index)
        completion = self._completion(turn, completion_index)
        if completion.finish == EDITED:
            raise TextgenError(f"alternative {completion_index + 1} was written by hand "
                               "(edited); there is nothing to replay.")
        forced = completion.forced
        index = self.session.turns.index(turn)
        if forced is not None:
            request = self._request(index, completion.params,
                                    continuing=completion.text[:forced.start],
                                    history=completion.history)
            return dataclasses.replace(request, forced_ids=tuple(forced.ids))
        return self._request(index, completion.params, continuing="",
                             history=completion.history)

    def force(self, turn_index: int, completion_index: int, segment: int, token_index: int,
              token_id: int) -> Iterator[StreamItem]:
        """A new alternative of a turn (inspect mode): keep a completion up to one of its
        tokens, put `token_id` there instead, and sample the rest. `segment` picks which
        recorded generation of the completion the token belongs to (0: the first; then its
        continuations). The stream starts with the kept text and the forced token."""
        generator = self._ready()
        turn = self._not_compare(self._turn(turn_index), "branched")
        index = self.session.turns.index(turn)
        source = self._completion(turn, completion_index)
        if not 0 <= segment < len(source.traces):
            raise TextgenError("no token probabilities were recorded for that text; turn "
                               "inspect on and generate it again.")
        start, trace = source.traces[segment]
        steps = trace.snapshot()
        if not 0 <= token_index < len(steps):
            raise TextgenError(f"there is no token {token_index + 1} in that text.")
        step = steps[token_index]
        chosen = TokenStep(token_id, dict(step.alternatives()).get(token_id, 0.0),
                           step.top_ids, step.top_probs)
        kept = steps[:token_index]
        ids = [s.token_id for s in kept] + [token_id]
        params = self.params
        if params.seed is not None:
            params = params.replace(seed=(params.seed + len(turn.completions)) % 2**32)
        params = self._seeded(params)
        base = source.text[:start]
        new_trace = TokenTrace(steps=[*kept, chosen])
        refs = self._refs(index)
        request = dataclasses.replace(self._request(index, params, continuing=base, history=refs),
                                      forced_ids=tuple(ids), trace=new_trace)
        prefix = base + generator.tokenizer.decode(ids, skip_special_tokens=True)
        forced = Forced(start=start, ids=ids, source=completion_index,
                        token=generator.tokenizer.decode([token_id]))

        def record(text: str, stats: GenerationStats | None, finish: str) -> None:
            completion = Completion(
                text=prefix + text, params=params, seed=params.seed or 0, stats=stats,
                finish=finish, model=generator.info.spec, forced=forced, history=refs)
            completion.traces.append((start, new_trace))
            turn.completions.append(completion)
            turn.selected = len(turn.completions) - 1

        def stream() -> Iterator[StreamItem]:
            yield prefix
            yield from self._run(generator, request, record)

        return stream()

    def replay_continuation_request(self, turn_index: int, completion_index: int,
                                    continuation_index: int) -> GenerationRequest:
        """The request that reproduces one `continue` of a stored completion exactly: its text
        up to where the continuation starts, with the continuation's params and seed."""
        turn = self._turn(turn_index)
        completion = self._completion(turn, completion_index)
        try:
            continuation = completion.continuations[continuation_index]
        except IndexError:
            raise TextgenError(f"alternative {completion_index + 1} has no continuation "
                               f"{continuation_index + 1}.") from None
        return self._request(self.session.turns.index(turn), continuation.params,
                             continuing=completion.text[:continuation.start],
                             history=continuation.history)

    def compare(self, prompt: str, sides: Sequence[tuple[Generator, SamplingParams]],
                mode: Mode | None = None) -> Iterator[tuple[int, StreamItem]]:
        """Run one prompt two ways (two models, or two parameter sets) one after the other, as a
        compare turn; yields (side, stream item). Both sides get the same seed (drawn once when
        the params have none). A side that fails is reported as a Notice and the other still
        runs; a turn that ends with no completion at all is removed."""
        if len(sides) != 2:
            raise ValueError("a comparison has exactly two sides.")
        if any(generator.busy for generator, _ in sides):
            raise TextgenError("a generation is already running; stop it first (Esc).")
        seed = next((p.seed for _, p in sides if p.seed is not None), None)
        seed = secrets.randbelow(2**31) if seed is None else seed
        turn = Turn(mode=mode or self.mode, prompt=prompt, compare=True)
        self.session.turns.append(turn)
        index = len(self.session.turns) - 1

        def stream() -> Iterator[tuple[int, StreamItem]]:
            try:
                for side, (generator, params) in enumerate(sides):
                    params = params.replace(seed=seed)
                    request = self._request(index, params, continuing="")
                    record = self._new_completion(turn, params, generator, request.trace)
                    try:
                        for item in self._run(generator, request, record):
                            yield side, item
                    except (TextgenError, ValueError) as exc:
                        yield side, Notice(f"side {'AB'[side]}: {exc}")
                    if turn.completions and turn.completions[-1].finish == "cancelled":
                        break  # Esc stops the whole comparison
            finally:
                turn.selected = 0
                if not turn.completions and turn in self.session.turns:
                    self.session.turns.remove(turn)
                self.save()

        return stream()

    def open(self, session: Session, path: Path | None) -> None:
        """Work on another session (a loaded file) from now on, with the same model; new turns
        use the mode of its last turn."""
        if session is not self.session:
            self.keep_unsaved()
        self.session = session
        self.path = self._claim(path) if path is not None else None
        if path is None:
            self._release()
        self.save_error = None
        if session.turns:
            self.mode = session.turns[-1].mode

    def keep_unsaved(self) -> None:
        """Refuse (TextgenError) to leave a session whose last save failed (a full disk), after
        trying once more: its unsaved turns exist only in this process."""
        if self.save_error is None or self.save() is None:
            return
        raise TextgenError(f"the current session is not saved ({self.save_error}); its turns "
                           "would be lost: free some space, or save it elsewhere, first")

    def close(self) -> None:
        """Done with the session file: let another process open it."""
        self._release()

    def cancel(self) -> None:
        if self.generator is not None:
            self.generator.cancel()

    # --- saving ---------------------------------------------------------------------------------

    def save(self) -> str | None:
        """Write the session file if this conversation has a place for it.

        Returns (and remembers) an error message instead of raising: a full disk or a read-only
        folder must not lose the session, which stays in memory.
        """
        with self._save_lock:
            if self.path is None and self.sessions_dir is not None and self.session.turns:
                self.path = self._claim(self.sessions_dir / session_filename(self.session))
            if self.path is None:
                return None
            try:
                save_session(self.session, self.path)
            except TextgenError as exc:
                self.save_error = str(exc)
                return self.save_error
            self.save_error = None
            return None

    def save_as(self, target: Path) -> str | None:
        """Save to `target` and keep saving there (a copy on another disk when this one is
        full); on failure the session keeps its old place. Returns the error, as `save`."""
        previous, previous_lock = self.path, self._lock
        self._lock = None  # keep the old file's lock until the new place works
        try:
            self.path = self._claim(target)
        except BaseException:
            self._lock = previous_lock
            raise
        error = self.save()
        if error:
            self._release()
            self.path, self._lock = previous, previous_lock
            self.save_error = error
        elif previous_lock is not None and previous_lock is not self._lock:
            previous_lock.release()
        return error

    # --- internals ------------------------------------------------------------------------------

    def _claim(self, path: Path) -> Path:
        """Lock `path` for this process and return it; when another process holds it, work on
        a copy beside it instead (a new session id, saved on the next change) and say so."""
        if self._lock is not None and self._lock.path.resolve() == path.resolve():
            return path
        self._release()
        try:
            self._lock = SessionLock.acquire(path)
            return path
        except SessionBusy as busy:
            copy = _copy_path(path)
            self.session.id = secrets.token_hex(6)
            self.lock_note = f"{busy}; continuing in a copy, saved as {copy}"
            try:
                self._lock = SessionLock.acquire(copy)
            except SessionBusy:
                self._lock = None
            return copy

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _ready(self) -> Generator:
        if self.generator is None:
            raise TextgenError("the model is still loading; try again in a moment.")
        if self.generator.busy:
            raise TextgenError("a generation is already running; stop it first (Esc).")
        return self.generator

    @staticmethod
    def _completion(turn: Turn, index: int) -> Completion:
        if not 0 <= index < len(turn.completions):
            raise TextgenError(f"there is no alternative {index + 1}; this turn has "
                               f"{len(turn.completions)}.")
        return turn.completions[index]

    @staticmethod
    def _not_compare(turn: Turn, action: str) -> Turn:
        if turn.compare:
            raise TextgenError(f"a comparison cannot be {action}; run a new prompt or a new "
                               "comparison instead.")
        return turn

    def _turn(self, turn_index: int) -> Turn:
        return self.session.turns[self._index(turn_index)]

    def _index(self, turn_index: int) -> int:
        """`turn_index` as a position in the shown branch (-1: the last turn)."""
        count = len(self.session.turns)
        if not count:
            raise TextgenError("there is no prompt yet; submit one first.")
        if not -count <= turn_index < count:
            raise TextgenError(f"there is no turn {turn_index + 1}; this branch has {count}.")
        return turn_index % count

    def _answered_later(self, index: int) -> bool:
        """Whether a later chat turn was given this chat turn's reply as context."""
        turns = self.session.turns
        return turns[index].mode == "chat" and any(
            t.mode == "chat" and not t.compare for t in turns[index + 1:])

    @staticmethod
    def _seeded(params: SamplingParams) -> SamplingParams:
        """Draw the seed here, not in the engine, so even a failed run records its seed."""
        return params if params.seed is not None else params.replace(
            seed=secrets.randbelow(2**31))

    def _refs(self, index: int) -> list[HistoryRef] | None:
        """The chat context a generation for turn `index` uses now, to record with it."""
        turn = self.session.turns[index]
        return self.session.history_refs(index) if turn.mode == "chat" else None

    def _request(self, index: int, params: SamplingParams, continuing: str,
                 history: list[HistoryRef] | None = None) -> GenerationRequest:
        turn = self.session.turns[index]
        if turn.mode == "complete":
            request = GenerationRequest(prompt=turn.prompt + continuing, params=params)
        else:
            context = (self.session.messages_from(history) if history is not None
                       else self.session.chat_history(index))
            system = [{"role": "system", "content": self.system}] if self.system else []
            messages = [*system, *context, {"role": "user", "content": turn.prompt}]
            if continuing:
                messages.append({"role": "assistant", "content": continuing})
            request = GenerationRequest.chat(messages, params)
        if self.inspect:
            request = dataclasses.replace(request, trace=TokenTrace())
        self.last_request = request
        return request

    def _new_completion(self, turn: Turn, params: SamplingParams, generator: Generator,
                        trace: TokenTrace | None = None,
                        history: list[HistoryRef] | None = None) -> Recorder:
        def record(text: str, stats: GenerationStats | None, finish: str) -> None:
            turn.completions.append(Completion(
                text=text, params=params, seed=params.seed or 0, stats=stats, finish=finish,
                model=generator.info.spec, history=history))
            if trace is not None:
                turn.completions[-1].traces.append((0, trace))
            turn.selected = len(turn.completions) - 1

        return record

    def _run(self, generator: Generator, request: GenerationRequest, record: Recorder,
             discard: Callable[[], None] | None = None) -> Iterator[StreamItem]:
        """Stream, then record what came out and save, however the stream ends.

        A request the engine refuses before producing anything (a TextgenError or ValueError
        such as "no chat template") is not recorded; `discard` undoes what the action added.
        """
        text: list[str] = []
        stats: GenerationStats | None = None
        finish = "cancelled"  # an abandoned or interrupted stream
        started = refused = False
        try:
            for item in generator.stream(request):
                started = True
                if isinstance(item, str):
                    text.append(item)
                elif isinstance(item, GenerationStats):
                    stats, finish = item, item.finish_reason
                yield item
        except Exception as exc:
            finish = "error"
            refused = not started and isinstance(exc, TextgenError | ValueError)
            raise
        finally:
            if refused:
                if discard is not None:
                    discard()
                error = None
            else:
                record("".join(text), stats, finish)
                error = self.save()
        if error:
            yield Notice(error)


def _copy_path(path: Path) -> Path:
    """A free name beside `path` for a copy of it."""
    for _ in range(100):
        candidate = path.with_name(f"{path.stem}-copy-{secrets.token_hex(2)}{path.suffix}")
        if not candidate.exists():
            return candidate
    return path.with_name(f"{path.stem}-copy-{secrets.token_hex(8)}{path.suffix}")
