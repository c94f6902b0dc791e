"""`visaudio` command line: prepare, train, train-codec, generate, posthoc-ema, info, eval.

Each group of commands lives in ``visaudio/cli/<group>.py`` (``model``: train, train-codec,
generate, info; ``store``: prepare, posthoc-ema; ``evaluate``: eval), each exposing
``register(app)``; the one error line and its exit codes are in ``visaudio/cli/_common.py``. This
file only assembles them, so `visaudio --help` stays fast (heavy imports happen inside commands).
``python -m visaudio.cli`` runs it too (``__main__.py``), which is how torchrun starts it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="visaudio",
    help=(
        "Train and run ViSAudio, a video-to-binaural-audio flow-matching model, on a BiAudio "
        "manifest. Typical flow: `biaudio build` -> `visaudio prepare --manifest OUT --config tiny --out "
        "STORE` -> `visaudio train --store STORE --config tiny --run RUN` -> `visaudio generate VIDEO --ckpt RUN --out OUT.mp4` -> `visaudio eval`."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register() -> None:
    from biaudio.cli._common import tidy_help
    from visaudio.cli import evaluate, model, store

    model.register(app)
    store.register(app)
    evaluate.register(app)
    tidy_help(app)


_register()


def main() -> None:  # console-script entry point
    app()
