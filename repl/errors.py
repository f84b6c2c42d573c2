"""The one exception type a user sees: its message is the whole story, no traceback."""


class TextgenError(Exception):
    """An error caused by the user's input or environment, with a message meant for them."""
