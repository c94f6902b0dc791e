"""`biaudio doa` and `biaudio render`: the spatial core on any file, for debugging and demos.

Heavy imports (numpy, scipy, cv2, media) happen inside the commands so `biaudio --help` stays fast.
Both exit 0 only on success; bad input prints ``error: <path>: <reason> (<detail>)`` on stderr
(and, with ``--json``, one ``{"error": ...}`` object on stdout) and exits 1.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer

from biaudio.cli._common import parse_size as _parse_size
from biaudio.cli._common import refuse_overwrite

CONVENTION_HELP = "FOA channel convention of the input: ambix (ACN/SN3D; YouTube, Sphere360, DCASE), fuma, ambix-n3d."


def _fail(exc: Exception, as_json: bool) -> None:
    from biaudio.cli._common import os_error_line

    reason = getattr(exc, "reason", type(exc).__name__)
    line = os_error_line(exc) if isinstance(exc, OSError) else str(exc)
    if as_json:
        typer.echo(json.dumps({"error": reason, "path": getattr(exc, "path", getattr(exc, "filename", None)),
                               "detail": getattr(exc, "detail", line)}))
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(1)




def _resolve_convention(convention: str | None, foa_hint: str | None, path: Path) -> str:
    """Declared convention wins; else the file's own evidence (SA3D / Opus ambisonic layout); else
    ambiX, the convention of every 360° source we ingest (YouTube, Sphere360, DCASE) — said on stderr
    so a FuMa file read without ``--convention fuma`` is never a silent surprise."""
    if convention:
        return convention
    if foa_hint:
        return foa_hint
    print(f"note: {path}: no FOA convention marker in the file; assuming ambix (use --convention)", file=sys.stderr)
    return "ambix"


def load_trajectory(path: Path) -> list[dict]:
    """Camera path JSON: a list of ``{t, yaw, pitch, roll}`` (degrees), or ``{"trajectory": [...]}``."""
    from biaudio.errors import BiaudioError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BiaudioError(path, "bad_trajectory", str(e)) from e
    pts = data.get("trajectory") if isinstance(data, dict) else data
    if not isinstance(pts, list) or not pts:
        raise BiaudioError(path, "bad_trajectory", "expected a non-empty list of {t, yaw, pitch, roll}")
    out = []
    for i, p in enumerate(pts):
        try:
            out.append({k: float(p.get(k, 0.0)) for k in ("t", "yaw", "pitch", "roll")})
        except (AttributeError, TypeError, ValueError) as e:
            raise BiaudioError(path, "bad_trajectory", f"point {i}: {p!r}") from e
        if not all(math.isfinite(v) for v in out[-1].values()):
            raise BiaudioError(path, "bad_trajectory", f"point {i} is not finite")
    if any(b["t"] <= a["t"] for a, b in zip(out, out[1:], strict=False)):
        raise BiaudioError(path, "bad_trajectory", "times must be strictly increasing")
    return out


def sample_trajectory(points: list[dict], times):
    """Per-frame yaw/pitch/roll at ``times``: linear, yaw unwrapped so ±180 never flips; ends held."""
    import numpy as np

    from biaudio.spatial.angles import unwrap_deg, wrap_deg

    t = np.array([p["t"] for p in points])
    yaw = unwrap_deg([p["yaw"] for p in points])
    pitch = np.array([p["pitch"] for p in points])
    roll = np.array([p["roll"] for p in points])
    return wrap_deg(np.interp(times, t, yaw)), np.interp(times, t, pitch), np.interp(times, t, roll)


def doa_command(
    input: Path = typer.Argument(..., help="Media file with 4-channel FOA audio (any container ffmpeg reads)."),
    convention: str | None = typer.Option(None, "--convention", help=CONVENTION_HELP),
    window: float = typer.Option(0.2, "--window", min=0.01, help="Analysis window (s)."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Beam: 0.5 cardioid, 0.25 hypercardioid."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: one per window, then {\"clip\": true, ...}."),
) -> None:
    """Dominant ("maximal energy") direction per window and per clip, world frame, degrees
    (az counter-clockwise, +90 = left; el +90 = up)."""
    from biaudio.errors import BiaudioError
    from biaudio.media import decode_foa, probe
    from biaudio.spatial import direction, foa

    try:
        info = probe(input)
        conv = _resolve_convention(convention, info.foa_hint, input)
        x, sr = decode_foa(input)
        a = foa.to_ambix(x, conv, path=str(input))
        r = direction.estimate(a, sr, direction.DirectionConfig(window_s=window, alpha=alpha))
    except (BiaudioError, ValueError) as e:
        _fail(e, as_json)
        return
    if as_json:
        for i in range(len(r.t)):
            typer.echo(json.dumps({
                "t": round(float(r.t[i]), 4),
                "azimuth_deg": round(float(r.azimuth_deg[i]), 2),
                "elevation_deg": round(float(r.elevation_deg[i]), 2),
                "diffuseness": round(float(r.diffuseness[i]), 3),
            }))
        typer.echo(json.dumps({"clip": True, "azimuth_deg": round(r.clip_azimuth_deg, 2),
                               "elevation_deg": round(r.clip_elevation_deg, 2), "convention": conv}))
        return
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"{input.name}  ({conv}, {sr} Hz, window {window:g} s)")
    for col in ("t (s)", "azimuth", "elevation", "diffuseness", "energy dB", "loud"):
        tab.add_column(col, justify="right")
    for i in range(len(r.t)):
        tab.add_row(f"{r.t[i]:.2f}", f"{r.azimuth_deg[i]:+.1f}", f"{r.elevation_deg[i]:+.1f}",
                    f"{r.diffuseness[i]:.2f}", f"{r.energy_db[i]:.1f}", "yes" if r.loud[i] else "")
    con = Console()
    con.print(tab)
    con.print(f"clip direction: azimuth {r.clip_azimuth_deg:+.1f}°, elevation {r.clip_elevation_deg:+.1f}°")


def render_command(
    input: Path = typer.Argument(..., help="360° equirect video with 4-channel FOA audio."),
    out: Path = typer.Option(..., "--out", help="Output mp4 (perspective H.264 + binaural AAC)."),
    yaw: float = typer.Option(0.0, "--yaw", help="Camera yaw (deg, > 0 looks left)."),
    pitch: float = typer.Option(0.0, "--pitch", help="Camera pitch (deg, > 0 looks up)."),
    roll: float = typer.Option(0.0, "--roll", help="Camera roll (deg, > 0 clockwise seen from behind)."),
    trajectory: Path | None = typer.Option(None, "--trajectory", help="JSON [{t, yaw, pitch, roll}, ...] (overrides --yaw/--pitch/--roll)."),
    fov: float = typer.Option(90.0, "--fov", min=1.0, max=179.0, help="Horizontal field of view (deg)."),
    size: str = typer.Option("640x360", "--size", help="Output WxH (even)."),
    hrtf: str = typer.Option("kemar", "--hrtf", help="kemar (built in) or a path to a .sofa file."),
    decoder: str = typer.Option("magls", "--decoder", help="magls or cube."),
    convention: str | None = typer.Option(None, "--convention", help=CONVENTION_HELP),
    assume_equirect: bool = typer.Option(False, "--assume-equirect", help="Accept a video without spherical metadata that is not 2:1."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary line."),
) -> None:
    """Render the perspective video and the binaural audio of one camera path, muxed into OUT.

    The whole file is one window of the build's own clip render (``biaudio.stages.render``, at the
    source's fps and sample rate), so what this shows is exactly what ``biaudio build`` writes."""
    import os
    import tempfile

    import numpy as np

    from biaudio.errors import BiaudioError, MediaError
    from biaudio.media import decode_foa, probe
    from biaudio.spatial import foa
    from biaudio.spatial.decoders import get_decoder
    from biaudio.stages.render import RenderConfig, render_clip
    from biaudio.stages.trajectory import Trajectory, frame_times

    ow, oh = _parse_size(size)
    refuse_overwrite(out, {"input video": input, "trajectory": trajectory,
                           "HRTF file": hrtf if hrtf != "kemar" else None})
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give the output file's name (e.g. {out / 'view.mp4'})",
                                 param_hint="'--out'")
    if decoder not in ("magls", "cube"):
        raise typer.BadParameter(f"--decoder must be magls or cube, got {decoder!r}")
    try:
        info = probe(input)
        if not info.has_video or not info.width or not info.height:
            raise MediaError(str(input), "no_video", "render needs a 360° video stream")
        if not (info.projection == "equirectangular" or info.is_equirect_hint or assume_equirect):
            raise MediaError(str(input), "not_equirect",
                             f"no equirectangular metadata and a {info.width}x{info.height} frame is not 2:1 (--assume-equirect to force)")
        conv = _resolve_convention(convention, info.foa_hint, input)
        x, sr = decode_foa(input)
        world = foa.to_ambix(x, conv, path=str(input))
        fps = float(info.fps or 30.0)
        duration = float(info.duration_s or x.shape[1] / sr)
        if info.n_frames and not info.n_frames_estimated:  # the video track, when the audio runs longer
            duration = min(duration, info.n_frames / fps)
        points = load_trajectory(trajectory) if trajectory else [{"t": 0.0, "yaw": yaw, "pitch": pitch, "roll": roll}]
        dec = get_decoder(hrtf, decoder, int(sr))  # a bad HRTF fails here, before any decoding
        cfg = RenderConfig(width=ow, height=oh, hfov_deg=fov, fps_cap=fps, sample_rate=int(sr), hrtf=hrtf,
                           decoder=decoder)
        ft = frame_times(duration, fps)
        ys, ps, rs = sample_trajectory(points, ft)
        traj = Trajectory(t=ft, yaw=np.asarray(ys, float), pitch=np.asarray(ps, float),
                          roll=np.asarray(rs, float), mode="cli")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".render-") as td:
            clip = render_clip(input, 0.0, duration, world, int(sr), traj, cfg, td, "view", info)
            os.replace(clip.video_path, out)  # complete already: a rename within one folder
    except (BiaudioError, ValueError, OSError) as e:
        _fail(e, as_json)
        return
    summary = {"out": str(out), "frames": clip.num_frames, "fps": clip.fps, "size": [ow, oh], "hfov_deg": fov,
               "sample_rate": sr, "convention": conv, "decoder": dec.name, "gain": round(clip.gain, 4)}
    typer.echo(json.dumps(summary) if as_json else f"wrote {out} ({clip.num_frames} frames, {dec.name})")


def register(app: typer.Typer, qa_app: typer.Typer) -> None:
    app.command("doa")(doa_command)
    app.command("render")(render_command)
