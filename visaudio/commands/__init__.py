"""CLI command modules of visaudio; each exposes ``register(app)``."""
