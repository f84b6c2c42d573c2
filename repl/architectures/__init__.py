"""textgen's own model architectures, registered with transformers' Auto classes on import.

They live in `repl` (not `trainer`) so the REPL can load what the trainer saves without
importing the trainer. Each module registers its config and model when imported here.
"""

from repl.architectures import lstm  # noqa: F401  (registers textgen-lstm)
