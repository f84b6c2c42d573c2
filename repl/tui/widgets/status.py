"""The status bar: model, device/dtype, live tokens/s, tokens used of the context window,
why the last generation stopped, the mode, and where the session is saved."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static

FINISH_STYLES = {"eos": "$success", "length": "$warning", "stop": "$success",
                 "cancelled": "$warning", "error": "$error"}


class StatusBar(Static):
    model = reactive("")  # "loading model default …" until ready
    device = reactive("")
    tokens_per_s: reactive[float | None] = reactive(None)
    context_used: reactive[int | None] = reactive(None)
    context_size: reactive[int | None] = reactive(None)
    finish = reactive("")
    mode = reactive("complete")
    busy = reactive("")  # "generating", "loading model X" while a background job runs
    saved = reactive("")
    legend: reactive[Content | str] = reactive("")  # inspect mode's probability colours

    def render(self) -> Content:
        parts: list[str | tuple[str, str]] = [(f" {self.model} ", "bold")]
        if self.device:
            parts.append((f"{self.device} ", "$text-muted"))
        rate = f"{self.tokens_per_s:.1f} tok/s" if self.tokens_per_s else "– tok/s"
        # Why the last generation stopped comes before the context meter: at 80 columns the
        # bar is cut at its end, and the finish reason is what a user looks for.
        parts += ["│ ", rate, " │ last: "]
        parts.append((self.finish or "–", FINISH_STYLES.get(self.finish, "")))
        if self.context_size:
            used = "–" if self.context_used is None else str(self.context_used)
            parts.append(f" │ ctx {used}/{self.context_size}")
        else:
            parts.append(" │ ctx –")
        parts.append(f" │ {self.mode}")
        if self.busy:
            parts += [" │ ", (self.busy, "bold $accent")]
        if self.legend:
            parts += [" │ ", self.legend]
        if self.saved:
            parts += [" │ ", (self.saved, "$text-muted")]
        return Content.assemble(*parts)
