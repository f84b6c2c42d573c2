"""textgen: an interactive terminal app for small generative text models.

The core (models, params, engine, session) never imports the faces (tui, plain, cli).
"""

__version__ = "0.1.0"
