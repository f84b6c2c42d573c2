"""`textgen serve`: the TUI in web browsers (cli), its guarded web server (server), one tab's
app process (tab), and what a tab's app may do (policy, read by the TUI)."""

from repl.serve.cli import add_parser, app_command, is_loopback, public_url, run

__all__ = ["add_parser", "app_command", "is_loopback", "public_url", "run"]
