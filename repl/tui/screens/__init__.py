"""The TUI's screens: one module per screen (or per few small dialogs)."""
