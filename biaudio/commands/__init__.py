"""CLI command modules, one per area; each exposes ``register(app, qa_app)``."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer, qa_app: typer.Typer) -> None:
    from biaudio.commands import annotate, build, core, ingest, review, synth
    from biaudio.commands._common import guard_app, tidy_help

    for mod in (synth, core, ingest, build, annotate, review):
        mod.register(app, qa_app)
    tidy_help(app)
    guard_app(app)
