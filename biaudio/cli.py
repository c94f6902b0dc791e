"""`biaudio` command line. Each stage's commands live in ``biaudio/commands/<area>.py``; this file
only assembles them, so `biaudio --help` stays fast (heavy imports happen inside commands)."""

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


def _register() -> None:
    from biaudio.commands import register_all

    register_all(app, qa_app)


_register()


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
