"""Colour bands for a change in a token's log-probability (a fine-tune's gain or loss).

Shared by `textgen-train diff` (terminal colours) and the TUI's diff screen (theme colours):
green gained, red lost, as F2 colours likely tokens green and unlikely ones red.
"""

from __future__ import annotations

import math

# (lower bound in nats, rich style, Textual style, legend label), strongest gain first.
DELTA_BANDS: tuple[tuple[float, str, str, str], ...] = (
    (1.0, "bold green", "bold $success", "gained > 1 nat"),
    (0.1, "green", "$success", "gained"),
    (-0.1, "", "", "about the same"),
    (-1.0, "red", "$error", "lost"),
    (-math.inf, "bold red", "bold $error", "lost > 1 nat"),
)


def delta_band(delta: float) -> int:
    """Index into DELTA_BANDS of the band `delta` (tuned - base log p, nats) falls in."""
    for index, (lower, *_rest) in enumerate(DELTA_BANDS):
        if delta > lower:
            return index
    return len(DELTA_BANDS) - 1
