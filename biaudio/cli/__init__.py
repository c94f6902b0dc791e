"""`biaudio` command line. Each area's commands live in ``biaudio/cli/<area>.py`` (each exposes
``register(app, qa_app)``), the one error format and JSON shape in ``biaudio/cli/_common.py``; this
file only assembles them, so `biaudio --help` stays fast (heavy imports happen inside commands).
``python -m biaudio.cli`` runs it too (``__main__.py``)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="biaudio",
    help=(
        "Build binaural video datasets from 360° video with first-order ambisonic (FOA) audio.\n\n"
        "Run `biaudio build` with no arguments to build the built-in synthetic demo dataset "
        "(no network). Every stage also runs alone for debugging: synth, doa, render, fetch, "
        "probe, clean, segment."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
qa_app = typer.Typer(help="Summarise manual QA passes and apply their decisions to the manifest.", no_args_is_help=True)
app.add_typer(qa_app, name="qa")


def register_all(app: typer.Typer, qa_app: typer.Typer) -> None:
    from biaudio.cli import annotate, build, core, ingest, review, synth
    from biaudio.cli._common import guard_app, tidy_help

    for mod in (synth, core, ingest, build, annotate, review):
        mod.register(app, qa_app)
    tidy_help(app)
    guard_app(app)


def _register() -> None:
    register_all(app, qa_app)


_register()


def main() -> None:  # console-script entry point
    app()
