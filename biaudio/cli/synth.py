"""`biaudio synth`: synthetic 360° scenes (equirect H.264 + ambiX FOA + ground-truth JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from biaudio.cli._common import parse_size as _parse_size


def _parse_dir(s: str | None) -> tuple[float, float] | None:
    if s is None:
        return None
    try:
        az, el = (float(v) for v in s.split(","))
    except ValueError as e:
        raise typer.BadParameter(f"expected AZ,EL in degrees, got {s!r}") from e
    if not -90 <= el <= 90:
        raise typer.BadParameter(f"elevation must be within ±90, got {el}")
    return az, el


def synth_command(
    out_dir: Path = typer.Argument(..., help="Folder for <scene>.mp4 + <scene>.json (created if needed)."),
    scenes: int = typer.Option(1, "--scenes", min=1, help="Number of scenes."),
    seed: int = typer.Option(0, "--seed", help="Run seed; scene i uses a seed derived from (seed, i)."),
    duration: float = typer.Option(10.0, "--duration", min=0.1, help="Seconds per scene."),
    size: str = typer.Option("1920x960", "--size", help="Equirect frame WxH (even numbers)."),
    fps: float = typer.Option(30.0, "--fps", min=1.0),
    sr: int = typer.Option(48000, "--sr", help="Audio sample rate (AAC: 48000 recommended)."),
    n_sources: int | None = typer.Option(
        None, "--sources", min=1, max=6, help="Sources per scene (default: random 1-3)."
    ),
    static_source: str | None = typer.Option(
        None, "--static-source", help="AZ,EL: source 0 stays at this direction."
    ),
    no_ambience: bool = typer.Option(False, "--no-ambience", help="No diffuse background noise."),
    silent: bool = typer.Option(False, "--silent", help="Silent audio (markers still drawn)."),
    frozen: bool = typer.Option(False, "--frozen", help="Static video (every frame identical)."),
    speech: Path | None = typer.Option(
        None, "--speech", exists=True, dir_okay=False, help="Speech wav used as source 0."
    ),
    no_metadata: bool = typer.Option(False, "--no-metadata", help="Do not inject SA3D/sv3d boxes."),
    cut: list[float] = typer.Option([], "--cut", help="Scene cut at this time (s); repeatable."),
    keep_foa_wav: bool = typer.Option(
        False, "--keep-foa-wav", help="Also write the exact float FOA as <scene>_foa.wav."
    ),
    world: str = typer.Option(
        "demo", "--world",
        help="demo: 1-3 coloured sounding discs. spatial-bench: the hard spatial world (silent pulsing "
             "distractors, sources leaving the view, off-screen ambience, an unseen second source; scene "
             "type = index mod 4; the source options are then ignored).",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per scene on stdout."),
) -> None:
    """Write equirect videos with 4-channel ambiX FOA in which 1-3 sources move along known paths,
    drawn as coloured discs at the same directions, plus a ground-truth JSON per scene."""
    from biaudio.errors import BiaudioError
    from biaudio.synth import iter_scenes
    from biaudio.synth_bench import WORLDS

    if world not in WORLDS:
        raise typer.BadParameter(f"unknown world {world!r}; known: {', '.join(WORLDS)}", param_hint="--world")
    wh = _parse_size(size)
    sdir = _parse_dir(static_source)
    try:
        for sid, s, p in iter_scenes(
            out_dir,
            scenes,
            seed,
            duration=duration,
            size=wh,
            fps=fps,
            sr=sr,
            n_sources=n_sources,
            ambience=not no_ambience,
            static_source=sdir,
            silent=silent,
            frozen=frozen,
            speech_wav=speech,
            spatial_metadata=not no_metadata,
            cuts_s=list(cut),
            keep_foa_wav=keep_foa_wav,
            world=world,
        ):
            if as_json:
                rec = {"scene_id": sid, "seed": s, "video": str(p.video), "truth": str(p.truth_json)}
                if world != "demo":
                    from biaudio.synth_bench import scene_type_of

                    rec["scene_type"] = scene_type_of(int(sid.rsplit("_", 1)[-1]))
                if p.foa_wav:
                    rec["foa_wav"] = str(p.foa_wav)
                typer.echo(json.dumps(rec))
            else:
                typer.echo(f"{p.video}  {p.truth_json}")
    except (BiaudioError, ValueError, OSError) as e:
        from biaudio.cli._common import os_error_line

        typer.echo(f"error: {os_error_line(e) if isinstance(e, OSError) else e}", err=True)
        raise typer.Exit(1) from e


def register(app: typer.Typer, qa_app: typer.Typer) -> None:
    app.command("synth")(synth_command)
