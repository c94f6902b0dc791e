"""`visaudio` command line: train, train-codec, generate, info, eval."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="visaudio",
    help=(
        "Train and run ViSAudio, a video-to-binaural-audio flow-matching model, on a BiAudio "
        "manifest. Typical flow: `biaudio build` -> `visaudio train --manifest OUT --config tiny "
        "--run RUN` -> `visaudio generate VIDEO --ckpt RUN --out OUT.mp4` -> `visaudio eval`."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register() -> None:
    from biaudio.cli._common import tidy_help
    from visaudio.commands import evaluate, model

    model.register(app)
    evaluate.register(app)
    tidy_help(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
