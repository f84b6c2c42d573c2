"""`textgen api --log-sessions DIR`: each API request and its completion(s) as a textgen session,
so API traffic can be resumed, replayed, searched and exported like a TUI session.

A chat request becomes a chat session: its earlier user/assistant pairs are turns with the
reply they had, the last user message is the turn the completion answers. A completion request
is one completion-mode turn. Choices (n > 1) are the turn's alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repl.engine.request import GenerationRequest, GenerationStats, Message
from repl.session import Completion, Session, Turn, save_session, session_filename


@dataclass
class Outcome:
    """What one choice produced (so far, when its client went away)."""

    request: GenerationRequest
    text: str
    stats: GenerationStats | None
    finish: str


def session_of(model: dict[str, str], endpoint: str, outcomes: list[Outcome]) -> Session:
    first = outcomes[0].request
    session = Session(model=dict(model), params=first.params, extra={"api": {"endpoint": endpoint}})
    if first.messages is None:
        turn = Turn(mode="complete", prompt=first.prompt)
    else:
        messages = list(first.messages)
        system = [m["content"] for m in messages if m["role"] == "system"]
        if system:
            session.extra["api"]["system"] = "\n".join(system)
        session.turns.extend(_history_turns(messages, model["spec"], first))
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        turn = Turn(mode="chat", prompt=last_user)
    for outcome in outcomes:
        params = outcome.request.params
        seed = outcome.stats.seed if outcome.stats else (params.seed or 0)
        turn.completions.append(Completion(text=outcome.text, params=params, seed=seed,
                                           stats=outcome.stats, finish=outcome.finish,
                                           model=model["spec"]))
    session.turns.append(turn)
    return session


def _history_turns(messages: list[Message], spec: str, request: GenerationRequest
                   ) -> list[Turn]:
    """Earlier user messages, each with the assistant reply that followed it."""
    turns: list[Turn] = []
    pending: str | None = None
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    for i, message in enumerate(messages[:last_user]):
        if message["role"] == "user":
            pending = message["content"]
        elif message["role"] == "assistant" and pending is not None and i < last_user:
            turns.append(Turn(mode="chat", prompt=pending, completions=[Completion(
                text=message["content"], params=request.params, seed=0, stats=None,
                finish="eos", model=spec)]))
            pending = None
    return turns


def write_session(folder: Path, model: dict[str, str], endpoint: str,
                  outcomes: list[Outcome]) -> Path:
    """Save the exchange atomically under `folder`; returns the file's path."""
    session = session_of(model, endpoint, outcomes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / session_filename(session)
    save_session(session, path)
    return path
