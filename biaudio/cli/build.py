"""`biaudio build`, `biaudio validate`, `biaudio stats`: make a dataset folder, check it, summarise it.

Heavy imports (pyarrow, ray, the stages) happen inside the command functions so `biaudio --help`
stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

BUILD_HELP = """Build (or resume) a binaural video dataset from a RECIPE.

With no arguments it builds the built-in synthetic demo (no network, a couple of minutes on a
laptop) into ./biaudio-out/demo. RECIPE is a YAML file or a built-in name (the files of
pipelines/: demo, spatial-bench, spatial-bench-train, spatial-bench-confirm,
spatial-bench-fresh, spatial-bench-fresh2, biaudio).

Every item (one source video) is a unit of work with a completion record, so rerunning the same
command resumes where a killed run stopped, and a finished build does nothing. Examples:

  biaudio build                                   # the demo
  biaudio build pipelines/biaudio.yaml --out data/biaudio --workers 8
  biaudio build demo --set render.width=320 --set sources.0.synth.scenes=4
  biaudio build demo --dry-run                    # list what would run
  biaudio build demo --retry-failed --reason write_error
  biaudio build pipelines/biaudio.yaml --executor ray --ray-address auto

Exit status: 0 = the build ran (clips dropped by filters are data, listed in rejects.parquet);
1 = it ran but some items hit an internal error (a bug, see logs/<item>.log) or a write failure
(disk full: the run stops, finished items stay valid, rerun to continue); 2 = it could not start
(bad recipe or --set, output folder locked by another build, written by another schema version,
not writable, not empty and not a build folder, or holding another recipe's build: see
--force-out; ffmpeg not on PATH). Every fault and what it shows: docs/FAULTS.md.

The build deletes only files it wrote itself. A completion record names the input it was made
from; an item whose input changed (another file under the same id, a file replaced in place) is
built again.
"""


def _console(json_mode: bool):
    from rich.console import Console

    return Console(stderr=json_mode)


class _BuildProgress:
    """The build's events (``biaudio.engine.run.build``'s ``on_event``) as console lines and a
    progress bar with running clip/reject/error counts."""

    def __init__(self, console, disable: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, transient=False, disable=disable)
        self.task_id = None
        self.counts = {"clips": 0, "rejects": 0, "errors": 0}

    def on_event(self, kind: str, info: dict) -> None:
        console, counts = self.console, self.counts
        if kind == "sources":
            console.print(f"[dim]preparing sources for recipe {info['recipe']} ...[/dim]")
        elif kind == "plan":
            console.print(f"{info['items']} items: {info['total']} to process, {info['skipped']} already done "
                          f"({info['executor']} executor, {info['workers']} workers)")
            self.task_id = self.bar.add_task("build", total=info["total"], status="")
        elif kind == "item" and self.task_id is not None:
            counts["clips"] += info["rows"]
            counts["rejects"] += info["rejects"]
            counts["errors"] += bool(info["internal"] or info["write_error"])
            status = f"{counts['clips']} clips, {counts['rejects']} rejects" + (
                f", [red]{counts['errors']} errors[/red]" if counts["errors"] else "")
            self.bar.update(self.task_id, advance=1, status=status)
        elif kind == "assemble":
            console.print("[dim]assembling manifest ...[/dim]")


def build_cmd(
    recipe: str = typer.Argument("demo", help="Recipe YAML path or built-in name (demo, spatial-bench, "
                                 "spatial-bench-train, spatial-bench-confirm, spatial-bench-fresh, "
                                 "spatial-bench-fresh2, biaudio)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: recipe 'output', else ./biaudio-out/<name>)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a recipe value: key.path=value (YAML value); repeatable."),
    workers: int | None = typer.Option(None, "--workers", "-j", min=1, help="Items processed in parallel (default: CPUs)."),
    executor: str | None = typer.Option(None, "--executor", help="local (process pool) or ray."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster address (default: start a local one)."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Process at most N of the pending items, then assemble."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would run (run/retry/skip per item) and exit."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo items whose record has rejects."),
    reason: list[str] = typer.Option([], "--reason", help="With --retry-failed: only items rejected for this reason (or stage); repeatable."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (progress goes to stderr)."),
    force_out: bool = typer.Option(
        False, "--force-out",
        help="Build into OUT although it is not empty and no build wrote it, or it holds a build of another "
             "recipe (whose manifest is then replaced). Without it such a folder is refused (exit 2). Files the "
             "build did not write are never deleted; a file at a path the build writes (clips/<clip_id>.mp4) "
             "is replaced."),
) -> None:
    from biaudio.engine.run import build
    from biaudio.errors import BiaudioError, RecipeError
    from biaudio.recipe import load_recipe

    console = _console(json_out)
    overrides = [*set_, *(f"execution.{k}={v}" for k, v in
                          (("workers", workers), ("executor", executor), ("ray_address", ray_address)) if v is not None)]
    try:
        rec = load_recipe(recipe, overrides)
    except RecipeError as e:
        _fail(console, json_out, f"recipe error: {e}", 2)
        return
    out_dir = out or Path(rec.output or Path("biaudio-out") / rec.name)
    retry = (list(reason) if reason else []) if (retry_failed or reason) else None
    progress = _BuildProgress(console, disable=dry_run)

    from biaudio.media.ffprobe import missing_tools

    missing = missing_tools()
    if missing and not dry_run:
        _fail(console, json_out, f"build not started: {', '.join(missing)} not found on PATH "
                                 "(install ffmpeg, e.g. apt-get install ffmpeg)", 2)
        return
    try:
        with progress.bar:
            summary = build(rec, out_dir, limit=limit, dry_run=dry_run, retry_failed=retry, on_event=progress.on_event,
                            force_out=force_out)
    except BiaudioError as e:
        _fail(console, json_out, f"build not started: {e}", 2)
        return
    except OSError as e:  # the output folder cannot be made or written (read-only, no permission)
        from biaudio.cli._common import os_error_line

        _fail(console, json_out, f"build not started: {os_error_line(e)}", 2)
        return
    if json_out:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    else:
        _print_summary(console, summary)
    raise typer.Exit(summary.exit_code)


def _print_summary(console, summary) -> None:
    if summary.dry_run:
        from rich.table import Table

        t = Table(title=f"dry run: {summary.out_dir}")
        for c in ("item", "action", "why", "source"):
            t.add_column(c)
        for p in summary.planned:
            t.add_row(p.item.item_id, p.action, p.why, p.item.source_uri)
        console.print(t)
        for n in summary.notes:
            console.print(f"[dim]{n}[/dim]")
        return
    console.print(f"[bold]{summary.out_dir}[/bold]: processed {len(summary.processed)} items "
                  f"({summary.skipped} skipped), {summary.kept_clips} clips in the manifest, "
                  f"{summary.total_rejects} rejects, {summary.wall_s:.1f} s")
    for n in summary.notes:
        console.print(f"[yellow]{n}[/yellow]")
    if summary.source_errors:
        console.print(f"[yellow]{len(summary.source_errors)} source entries could not be read (see rejects.parquet)[/yellow]")
    if summary.internal_errors:
        console.print(f"[red]internal errors in {len(summary.internal_errors)} items: "
                      f"{', '.join(summary.internal_errors[:5])} (see {summary.out_dir}/logs/<item>.log)[/red]")
    if summary.write_errors:
        console.print(f"[red]write failures: {', '.join(summary.write_errors[:5])}[/red]")
    console.print(f"next: biaudio validate {summary.out_dir}  |  biaudio stats {summary.out_dir}")


def _fail(console, json_out: bool, msg: str, code: int) -> None:
    if json_out:
        sys.stdout.write(json.dumps({"error": msg, "exit_code": code}) + "\n")
    from rich.markup import escape

    console.print(f"[red]{escape(msg)}[/red]", soft_wrap=True)  # one line, whatever the terminal width
    raise typer.Exit(code)


def validate_cmd(
    out_dir: Path = typer.Argument(..., help="A build output folder (has manifest.parquet)."),
    tolerance: float = typer.Option(0.15, "--tolerance", help="Allowed media duration mismatch, seconds."),
    no_media: bool = typer.Option(False, "--no-media", help="Skip the ffprobe duration checks (fast)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a build folder: schema (v2; a v1 folder is read with its v2 columns derived, and the
    report says to run `biaudio upgrade`), unique clip ids, paths relative and inside OUT, files
    present, media durations (ffprobe) within --tolerance, trajectories per frame, splits disjoint by
    video (group_id: no video's clips in two splits; the leaking videos are named),
    no source video under two source ids (built twice).

    Exit status 0 only when no problem is found; each problem names the clip and the check.
    """
    from biaudio.engine.check import validate

    console = _console(json_out)
    rep = validate(out_dir, tolerance_s=tolerance, check_media=not no_media)
    if json_out:
        sys.stdout.write(json.dumps(rep.to_dict(), indent=2) + "\n")
    else:
        if rep.ok:
            console.print(f"[green]OK[/green] {out_dir}: {rep.n_clips} clips, {rep.n_files_checked} media files checked")
        else:
            from rich.table import Table

            t = Table(title=f"{len(rep.problems)} problems in {out_dir}")
            for c in ("check", "clip", "detail"):
                t.add_column(c)
            for p in rep.problems[:200]:
                t.add_row(p.check, p.clip_id or "", p.detail)
            console.print(t)
        for note in rep.notes:
            console.print(f"note: {note}")
    raise typer.Exit(0 if rep.ok else 1)


def upgrade_cmd(
    out_dir: Path = typer.Argument(..., help="A build output folder written with manifest schema v1."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change (clips moved between splits) and write nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Rewrite a schema-v1 build folder as v2, media untouched: add group_id (the original video) and
    section_start_s, turn start_s/end_s into times in the source video, and assign splits per video
    with the folder's own recipe.yaml split settings (v1 assigned them per item, so one Sphere360
    video could be in train and test). The old manifest is kept in manifest_versions/; QA decisions
    are kept. A later `biaudio build` into the folder redoes its items (the v2 recipe hashes
    differently).

    Exit status 0 when the folder is v2 afterwards (or already was), 1 when it cannot be upgraded.
    """
    from biaudio.engine.upgrade import upgrade
    from biaudio.errors import BiaudioError

    console = _console(json_out)
    try:
        rep = upgrade(out_dir, dry_run=dry_run)
    except BiaudioError as e:
        _fail(console, json_out, str(e), 1)
        return
    if json_out:
        sys.stdout.write(json.dumps(rep, indent=2) + "\n")
        return
    if "clips" in rep:
        verb = "would move" if dry_run else "moved"
        console.print(f"{out_dir}: schema v{rep['from_version']} -> v{rep['to_version']}: {rep['clips']} clips in "
                      f"{rep['groups']} videos; {rep['leaking_groups_before']} videos were in more than one split; "
                      f"{verb} {rep['clips_moved']} clips between splits (split settings from {rep['split_settings']})")
        if rep.get("previous_manifest"):
            console.print(f"previous manifest kept as {rep['previous_manifest']}")
    else:
        console.print(f"{out_dir}: manifest already v{rep['to_version']}"
                      + (f"; {rep['state_files_to_stamp']} state files stamped" if rep["state_files_to_stamp"] else ""))


def stats_cmd(
    out_dir: Path = typer.Argument(..., help="A build output folder (has stats.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print stats.json (plus current QA counts) as JSON."),
) -> None:
    """Summarise a build folder: items done/pending, clips per split, rejects per stage and reason,
    time per stage, bytes written, QA status counts."""
    from biaudio.engine import stats as st
    from biaudio.errors import BiaudioError

    console = _console(json_out)
    try:
        data = st.load(out_dir)
    except BiaudioError as e:
        _fail(console, json_out, str(e), 1)
        return
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        st.render(data, console)


def register(app: typer.Typer, qa_app: typer.Typer) -> None:
    app.command("build", help=BUILD_HELP)(build_cmd)
    app.command("validate")(validate_cmd)
    app.command("stats")(stats_cmd)
    app.command("upgrade")(upgrade_cmd)
