"""`textgen api`: OpenAI's HTTP protocol in front of a textgen backend (cli: the command; app:
the routes; protocol: request bodies; runner: the queue in front of the engine; logprobs and
session_log: what the answers and the logs are made of)."""

from repl.api.cli import add_parser, run

__all__ = ["add_parser", "run"]
