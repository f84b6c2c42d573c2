"""The TUI's widgets on the main screen; each declares the messages it posts."""
