"""Text on its way to a terminal: control sequences shown, never obeyed.

A session or a model can hold any text, including escape sequences a terminal would act on
(OSC 52 writes the clipboard, OSC 8 hides a link, CSI 2J clears the screen). Whenever such text
goes to a terminal, every control character except newline and tab is replaced by a visible
stand-in, so the sequence is printed, not run; a lone surrogate (a badly decoded byte) becomes
U+FFFD instead of an encoding error. Files and pipes keep the exact text: callers neutralise only
for terminals (`for_stream`), or always for lines that are only ever read by a person.
"""

from __future__ import annotations

import re
from typing import TextIO

# C0 controls except \t and \n, DEL, C1 controls; lone surrogates.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _stand_in(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode "control picture": ␛ for ESC, ␇ for BEL
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"\\x{code:02x}"  # C1 controls have no picture


def neutralise(text: str) -> str:
    """`text` with control characters made visible and lone surrogates replaced."""
    text = _CONTROL.sub(_stand_in, text)
    return _SURROGATE.sub("\ufffd", text)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # a closed or fake stream
        return False


def for_stream(text: str, stream: TextIO) -> str:
    """`text` as it should be written to `stream`: neutralised for a terminal, exact otherwise."""
    return neutralise(text) if is_terminal(stream) else text


def printable(text: str, stream: TextIO) -> str:
    """`text` neutralised, then made encodable in `stream`'s encoding (`PYTHONIOENCODING=ascii`
    gets backslash escapes rather than an error that would hide the rest of a listing)."""
    text = neutralise(text)
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        text = text.encode(encoding, "backslashreplace").decode(encoding, "replace")
    return text
