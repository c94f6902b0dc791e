"""`biaudio fetch`, `biaudio probe`, `biaudio clean`, `biaudio segment`: the ingest stages alone.

Each takes several inputs and goes on past a bad one (the reason is printed per item, and with
``--json`` one JSON object per input is printed as a list); the exit code is 0 only if every input
succeeded, so scripts can tell. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

JSON_HELP = "Print machine-readable JSON on stdout."
DECLARE_HELP = "FOA convention of 4-channel audio without an ambisonic marker (e.g. quad Vorbis WebM from Sphere360): ambix, fuma, ambix-n3d."


def _err(e) -> dict:
    return {"ok": False, "stage": getattr(e, "stage", None), "reason": getattr(e, "reason", type(e).__name__),
            "path": getattr(e, "path", None), "detail": getattr(e, "detail", str(e))}


def _finish(results: list[dict], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(results, indent=1, default=str))
    failed = [r for r in results if not r.get("ok")]
    for r in failed:
        typer.echo(f"error: {r.get('path') or r.get('input')}: {r.get('reason')} ({r.get('detail', '')})", err=True)
    if failed:
        raise typer.Exit(1)


def _progress(total: int, label: str):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # stderr: stdout is reserved for the results (and the --json document)
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True, disable=total < 2)


def _validate_cfg(declare: str | None, allow_16x9: list[str] | None, allow_6ch: bool):
    from biaudio.ingest.validate import ValidateConfig

    return ValidateConfig(declared_convention=declare, equirect_16to9_allow=list(allow_16x9 or []), allow_6ch=allow_6ch)


def fetch_cmd(
    sources: list[str] = typer.Argument(..., help="Source list files (.txt/.csv/.parquet), ids, URLs, files, folders or globs."),
    out: Path = typer.Option(Path("downloads"), "--out", "-o", help="Download folder (archive and info JSON go here)."),
    cookies: Path | None = typer.Option(None, help="Netscape cookies file for yt-dlp."),
    proxy: str | None = typer.Option(None, help="Proxy URL for yt-dlp."),
    player_client: list[str] | None = typer.Option(None, help="YouTube player client (repeatable)."),
    rate_limit: int | None = typer.Option(None, help="Download rate limit, bytes/s."),
    socket_timeout: float = typer.Option(30.0, help="Socket timeout, seconds."),
    retries: int = typer.Option(3, help="Retries of transient failures (with doubling backoff)."),
    allow_6ch: bool = typer.Option(False, "--allow-6ch", help="Accept 6-channel FOA + head-locked audio."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Download sources with yt-dlp (360° video + 4-channel FOA); local files pass through."""
    from biaudio.errors import BiaudioError
    from biaudio.ingest.fetch import FetchConfig, fetch
    from biaudio.ingest.sources import read_sources

    try:
        src = read_sources(list(sources))
    except BiaudioError as e:
        _finish([dict(_err(e), input=" ".join(sources))], as_json)
        return
    cfg = FetchConfig(cookies_file=str(cookies) if cookies else None, proxy=proxy, player_client=player_client or None,
                      rate_limit_bps=rate_limit, socket_timeout_s=socket_timeout, retries=retries, allow_6ch=allow_6ch)
    results = [dict(_err(e), input=e.path) for e in src.errors]
    with _progress(len(src.items), "fetch") as prog:
        task = prog.add_task("fetch", total=len(src.items))
        for item in src.items:
            try:
                p = fetch(item, out, cfg)
                results.append({"ok": True, "input": item.uri, "source_id": item.source_id, "path": str(p)})
            except BiaudioError as e:
                results.append(dict(_err(e), input=item.uri, source_id=item.source_id))
            prog.advance(task)
    if not as_json:
        for r in results:
            if r["ok"]:
                typer.echo(f"{r['source_id']}\t{r['path']}")
    _finish(results, as_json)


def probe_cmd(
    files: list[Path] = typer.Argument(..., help="Media files."),
    declare: str | None = typer.Option(None, "--declare", help=DECLARE_HELP),
    allow_16x9: list[str] | None = typer.Option(None, "--allow-16x9", help="File-name glob of 16:9-stored equirect (repeatable)."),
    allow_6ch: bool = typer.Option(False, "--allow-6ch"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Probe and validate files as 360° video with 4-channel FOA; print projection, channels, convention."""
    from biaudio.errors import BiaudioError
    from biaudio.ingest.validate import validate_input

    cfg = _validate_cfg(declare, allow_16x9, allow_6ch)
    results = []
    for f in files:
        try:
            v = validate_input(f, cfg)
            results.append(dict(v.to_dict(), ok=True, input=str(f)))
            if not as_json:
                p = v.probe
                typer.echo(f"{f}: {p.width}x{p.height} {p.fps:.3f} fps {p.duration_s:.2f} s, {p.audio_channels}-ch "
                           f"{p.audio_codec} {p.sample_rate} Hz, projection {v.projection_source}, FOA {v.convention} "
                           f"({v.convention_source})")
        except BiaudioError as e:
            results.append(dict(_err(e), input=str(f)))
    _finish(results, as_json)


def clean_cmd(
    files: list[Path] = typer.Argument(..., help="Media files."),
    declare: str | None = typer.Option(None, "--declare", help=DECLARE_HELP),
    allow_16x9: list[str] | None = typer.Option(None, "--allow-16x9"),
    speech_backend: str = typer.Option("silero", help="silero (offline, default) or pyannote."),
    checkpoint: str | None = typer.Option(None, help="pyannote segmentation checkpoint: local path or HF id (token in $HF_TOKEN)."),
    max_speech: float = typer.Option(0.5, help="Reject above this speech ratio."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run the silence, static-video and speech filters (and segmentation) on files; print every score."""
    from biaudio.clean.speech import SpeechConfig
    from biaudio.ingest.analysis import analyze_file

    cfg = _validate_cfg(declare, allow_16x9, False)
    sp = SpeechConfig(backend=speech_backend, checkpoint=checkpoint, max_speech_ratio=max_speech)
    results = []
    with _progress(len(files), "clean") as prog:
        task = prog.add_task("clean", total=len(files))
        for f in files:
            r = analyze_file(f, validate_cfg=cfg, speech_cfg=sp, stop_on_reject=False)
            d = dict(r.to_dict(), input=str(f))
            if r.reject is not None:
                d.update(reason=r.reject.reason, stage=r.reject.stage, detail=r.reject.detail)
            results.append(d)
            prog.advance(task)
            if not as_json:
                scores = ", ".join(f"{k} {v.score:.3f}{'' if v.passed else ' REJECT'}" for k, v in r.filters.items())
                typer.echo(f"{f}: {'ok' if r.ok else 'rejected: ' + r.reject.reason} [{scores}]")
    _finish(results, as_json)


def segment_cmd(
    files: list[Path] = typer.Argument(..., help="Video files."),
    detector: str = typer.Option("content", help="content, adaptive or none."),
    threshold: float = typer.Option(27.0, help="ContentDetector threshold."),
    window: float = typer.Option(8.0, min=0.1, help="Window length, seconds."),
    stride: float | None = typer.Option(None, min=0.01, help="Window stride, seconds (default: the window length)."),
    max_windows: int | None = typer.Option(None, min=1, help="Per-video maximum number of windows."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Detect shot cuts (frame indices) and cut fixed windows inside shots; print clip ids."""
    from biaudio.errors import BiaudioError
    from biaudio.media import probe
    from biaudio.segment import SegmentConfig, find_cuts, windows

    cfg = SegmentConfig(detector=detector, threshold=threshold, window_s=window, stride_s=stride, max_windows=max_windows)
    results = []
    for f in files:
        try:
            info = probe(f)
            if not info.has_video:
                raise BiaudioError(str(f), "no_video", "no video stream", stage="segment")
            cuts = find_cuts(f, cfg)
            ws = windows(info.duration_s, info.fps or 30.0, cuts, cfg)
            d = {"ok": bool(ws), "input": str(f), "fps": info.fps, "cuts": cuts,
                 "windows": [dict(w.to_dict(), clip_id=w.clip_id(Path(f).stem)) for w in ws]}
            if not ws:
                d.update(reason="too_short", stage="segment", detail=f"no {window:g}-s window fits inside a shot")
            results.append(d)
            if not as_json:
                typer.echo(f"{f}: cuts {cuts} @ {info.fps:.3f} fps; windows: {' '.join(w['clip_id'] for w in d['windows']) or '-'}")
        except BiaudioError as e:
            results.append(dict(_err(e), input=str(f)))
    _finish(results, as_json)


def register(app: typer.Typer, qa_app: typer.Typer) -> None:
    app.command("fetch")(fetch_cmd)
    app.command("probe")(probe_cmd)
    app.command("clean")(clean_cmd)
    app.command("segment")(segment_cmd)
