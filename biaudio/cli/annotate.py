"""`biaudio annotate`: captions and audio-visual consistency over an already built dataset folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

ANNOTATE_HELP = """Annotate the clips of a built dataset (OUT) with captions and/or an audio-visual
consistency score, and write a new manifest version.

Runs after `biaudio build`, on any machine that sees OUT (render on CPU boxes, annotate on a GPU
box). The build's media, rows, QA decisions and recipe hash are never changed; the current
manifest is kept as OUT/manifest_versions/manifest.v<N>.parquet and the new one adds the columns
caption* / caption_model / caption_error and av_score / av_model / av_error.

Defaults come from the `annotate:` section of OUT/recipe.yaml; options override them. Every clip
gets a completion record, so a killed run resumes where it stopped, a finished one does nothing,
and clips a model could not annotate keep their reason until --retry-failed. Models are read from
local folders only (nothing is downloaded). Examples:

  biaudio annotate data/biaudio --captions local-model --device cuda -b 8 \\
      --caption-av-model models/Qwen2.5-Omni-7B \\
      --caption-text-model models/Qwen3-4B-Instruct-2507
  biaudio annotate data/biaudio --captions file --caption-file captions.jsonl
  biaudio annotate data/biaudio --av-model models/av-towers --av-threshold 0.2
  biaudio annotate data/biaudio --executor ray --ray-address auto --device cuda
  biaudio annotate data/biaudio --retry-failed --reason caption_unparsable

Exit status: 0 = ran (clips that could not be annotated are listed with their reason, and in the
*_error columns); 1 = a worker crashed (rerun to redo its batch); 2 = could not start (no manifest,
nothing turned on, a checkpoint that is missing or does not load, OUT locked by a build).
"""


def annotate_cmd(
    out: Path = typer.Argument(..., help="A build output folder (has manifest.parquet)."),
    captions: str | None = typer.Option(None, "--captions", help="Caption backend: none | file | local-model."),
    caption_file: Path | None = typer.Option(None, "--caption-file", help="file backend: CSV or JSONL of captions."),
    av_model_path: Path | None = typer.Option(None, "--caption-av-model", help="local-model: Qwen2.5-Omni (or other video-text) checkpoint folder."),
    text_model_path: Path | None = typer.Option(None, "--caption-text-model", help="local-model: instruct text model folder that rewrites the description."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Tokens each caption model may write."),
    av_model: Path | None = typer.Option(None, "--av-model", help="Audio-visual embedding model folder: turns the consistency score on."),
    av_threshold: float | None = typer.Option(None, "--av-threshold", help="Score below which a pending clip is rejected (or flagged)."),
    av_action: str | None = typer.Option(None, "--av-action", help="reject | flag: what a score below the threshold does."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, help="Clips per model forward."),
    device: str | None = typer.Option(None, "--device", help="auto (default: cuda when a GPU is there), cpu, cuda, cuda:1 ... (under Ray, each actor gets its own GPU)."),
    executor: str | None = typer.Option(None, "--executor", help="local (this process) or ray (one actor per GPU)."),
    workers: int | None = typer.Option(None, "--workers", "-j", min=1, help="Ray actors (default: the cluster's GPUs, else 1)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster address (default: start a local one)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override an annotate value: key.path=value (e.g. captions.av_video_fps=2); repeatable."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="At most N clips per stage this run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would run per stage and exit (no model loads)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo clips whose record is a failure."),
    reason: list[str] = typer.Option([], "--reason", help="With --retry-failed: only clips that failed for this reason; repeatable."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (progress goes to stderr)."),
) -> None:
    from pydantic import ValidationError
    from rich.console import Console

    from biaudio.errors import BiaudioError

    console = Console(stderr=json_out)
    try:
        cfg = load_annotate_config(out, set_, {
            "captions.backend": captions, "captions.file": caption_file, "captions.av_model_path": av_model_path,
            "captions.text_model_path": text_model_path, "captions.max_new_tokens": max_new_tokens,
            "av_consistency.model_path": av_model, "av_consistency.threshold": av_threshold,
            "av_consistency.action": av_action, "batch_size": batch_size, "device": device, "executor": executor,
            "workers": workers, "ray_address": ray_address})
    except (ValidationError, ValueError) as e:
        _fail(console, json_out, f"bad annotate option: {_one_line(e)}", 2)
        return
    except BiaudioError as e:
        _fail(console, json_out, f"annotate not started: {e}", 2)
        return
    retry = (list(reason) if reason else []) if (retry_failed or reason) else None

    from biaudio.annotate.engine import annotate

    def on_event(kind: str, info: dict) -> None:
        if kind == "plan":
            per = ", ".join(f"{k} {v}" for k, v in info["stages"].items())
            console.print(f"{info['clips']} clips; to annotate: {per} ({info['batches']} batches)")
        elif kind == "batch":
            console.print(f"[dim]{info['stage']}: batch of {info['n']} done"
                          + (f", [yellow]{info['failed']} failed[/yellow]" if info["failed"] else "") + "[/dim]")
        elif kind == "assemble":
            console.print("[dim]writing the manifest version ...[/dim]")

    try:
        summary = annotate(out, cfg, retry_failed=retry, limit=limit, dry_run=dry_run, on_event=on_event)
    except BiaudioError as e:
        _fail(console, json_out, f"annotate not started or stopped: {e}", 2)
        return
    if json_out:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    else:
        _print_summary(console, summary)
    raise typer.Exit(summary.exit_code)


def load_annotate_config(out: Path, sets: list[str], options: dict):
    """``annotate:`` of OUT/recipe.yaml, then ``--set`` values, then the explicit options."""
    import yaml

    from biaudio.annotate.config import AnnotateConfig
    from biaudio.errors import BiaudioError

    data: dict = {}
    recipe = Path(out) / "recipe.yaml"
    if recipe.is_file():
        try:
            data = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("annotate") or {}
        except (yaml.YAMLError, AttributeError) as e:
            raise BiaudioError(str(recipe), "bad_recipe", f"cannot read its annotate section ({e})") from None
    pairs = []
    for s in sets:
        if "=" not in s:
            raise ValueError(f"--set {s!r}: expected key.path=value")
        k, v = s.split("=", 1)
        pairs.append((k.strip().removeprefix("annotate."), yaml.safe_load(v)))
    pairs += [(k, str(v) if isinstance(v, Path) else v) for k, v in options.items() if v is not None]
    for key, value in pairs:
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: {p} is not a section")
        node[parts[-1]] = value
    return AnnotateConfig.model_validate(data)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _print_summary(console, summary) -> None:
    head = "dry run: " if summary.dry_run else ""
    console.print(f"[bold]{head}{summary.out_dir}[/bold]: {summary.clips} clips, {summary.wall_s:.1f} s")
    for name, st in summary.stages.items():
        line = (f"  {name}: planned {st['planned']}, already done {st['already_done']}, "
                f"failed kept {st['failed_kept']}")
        if not summary.dry_run:
            line += f"; annotated {st['annotated']}, failed {st['failed']}"
        console.print(line)
    for f in summary.failures[:10]:
        console.print(f"  [yellow]{f['stage']} {f['clip_id']}: {f['reason']}[/yellow] {f['detail'] or ''}")
    if len(summary.failures) > 10:
        console.print(f"  [yellow]... {len(summary.failures) - 10} more (see the *_error columns)[/yellow]")
    if summary.qa:
        console.print("  qa_status from the consistency threshold: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(summary.qa.items())))
    for n in summary.notes:
        console.print(f"[dim]{n}[/dim]")
    if summary.previous_version:
        console.print(f"Wrote {summary.manifest}; previous version kept as {summary.previous_version}")


def _fail(console, json_out: bool, msg: str, code: int) -> None:
    if json_out:
        sys.stdout.write(json.dumps({"error": msg, "exit_code": code}) + "\n")
    console.print(f"[red]{msg}[/red]")
    raise typer.Exit(code)


def register(app: typer.Typer, qa_app: typer.Typer) -> None:
    app.command("annotate", help=ANNOTATE_HELP)(annotate_cmd)
