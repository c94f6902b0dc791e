"""CLI help text: docstrings wrapped for the source are unwrapped, so rich re-wraps whole paragraphs."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

from biaudio.cli._common import _LIST_ITEM, unwrap_help


def test_unwrap_help_joins_paragraph_lines_and_keeps_examples_and_lists():
    text = ("First line of a paragraph\nthat goes on.\n\nExamples:\n\n  biaudio build\n  biaudio build demo\n\n"
            "Policies:\n- one\n- two\n1. first\n2) second\nafter")
    assert unwrap_help(text) == ("First line of a paragraph that goes on.\n\nExamples:\n\n  biaudio build\n"
                                 "  biaudio build demo\n\nPolicies:\n- one\n- two\n1. first\n2) second after")
    assert unwrap_help(None) is None and unwrap_help("") == ""


def _paragraph_breaks(text: str) -> list[str]:
    """Lines that continue a paragraph on a new line (what unwrap_help removes)."""
    lines = (text or "").splitlines()
    return [b for a, b in zip(lines, lines[1:], strict=False) if a and b and not a[0].isspace() and not b[0].isspace()
            and not _LIST_ITEM.match(b)]


def test_every_command_help_is_unwrapped():
    from biaudio.cli import app as biaudio_app
    from visaudio.cli import app as visaudio_app

    def commands(app):
        yield from app.registered_commands
        for g in app.registered_groups:
            yield from commands(g.typer_instance)

    seen = 0
    for app in (biaudio_app, visaudio_app):
        for info in commands(app):
            help_text = info.help or inspect.getdoc(info.callback)
            assert help_text, f"{info.name or info.callback.__name__}: no help"
            assert not _paragraph_breaks(help_text), (info.name, _paragraph_breaks(help_text))
            seen += 1
    assert seen >= 15


def test_build_help_reads_as_paragraphs_at_80_columns():
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-m", "biaudio.cli", "build", "--help"], capture_output=True, text=True,
                         env=env, check=True).stdout
    flat = " ".join(out.split())
    # the sentence hard-wrapped in the source after "on a" comes out whole, examples keep their lines
    assert "(no network, a couple of minutes on a laptop) into ./biaudio-out/demo." in flat
    assert any(line.strip().startswith("biaudio build demo --dry-run") for line in out.splitlines())
    # no ragged half lines: a prose line ending far short of the width is followed by a blank line
    lines = [line.rstrip() for line in out.splitlines()]
    prose = [i for i, line in enumerate(lines[:20]) if line.startswith(" ") and not line.startswith("   ")]
    short = [lines[i] for i in prose if len(lines[i]) < 50 and i + 1 < len(lines) and lines[i + 1].strip()
             and lines[i + 1].startswith(" ") and not lines[i + 1].startswith("   ")]
    assert not short, short
