"""The TUI's side of `textgen serve`: what a browser tab may not do (repl/serve/policy.py).

Read from the environment on every check, so an app is restricted exactly when it was started by
`textgen serve` (and a test can set the variable); on a terminal every check says None."""

from __future__ import annotations

from repl.serve.policy import ServedPolicy


def training_refusal() -> str | None:
    policy = ServedPolicy.from_env()
    return policy.training_refusal() if policy is not None else None


def model_refusal(spec: str) -> str | None:
    policy = ServedPolicy.from_env()
    return policy.model_refusal(spec) if policy is not None else None
