"""The footer, showing only the keys that fit: Textual's Footer lets the overflow run under
its right-docked palette key, which at 80 columns left a stray `palettel` on screen. Keys
are dropped from the end (the F1 help screen lists them all)."""

from __future__ import annotations

from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class FittingFooter(Footer):
    async def recompose(self) -> None:
        await super().recompose()
        self.call_after_refresh(self._fit)

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit)

    def _fit(self) -> None:
        keys = list(self.query(FooterKey))
        palette = [k for k in keys if k.has_class("-command-palette")]
        shown = [k for k in keys if not k.has_class("-command-palette")]
        room = self.size.width - sum(k.outer_size.width for k in palette)
        used = 0
        for key in shown:
            width = _width(key)
            used += width
            key.display = used <= room


def _width(key: FooterKey) -> int:
    """A key's width with its margins, shown or not (a hidden widget has no size)."""
    width = key.get_content_width(key.size, key.size) + key.styles.gutter.width
    return width + key.styles.margin.right + key.styles.margin.left
