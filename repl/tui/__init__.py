"""The Textual TUI: `textgen` with no command, on a terminal. Entry point: `repl.tui.app.run`."""
