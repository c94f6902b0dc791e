"""`visaudio eval`: offline spatial metrics for ViSAudio and its baselines, with a report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from visaudio.cli._common import fail


def eval_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="Dataset OUT folder holding manifest.parquet."),
    report: Path = typer.Option(..., "--report", help="Folder for per_clip.parquet, summary.json, index.html."),
    split: str = typer.Option("test", "--split", help="Manifest split to evaluate."),
    ckpt: Path | None = typer.Option(None, "--ckpt", help="ViSAudio run dir (binaural-trained)."),
    mono_ckpt: Path | None = typer.Option(
        None, "--mono-ckpt", help="Run dir trained with data.channels=mono (for mono, two-stage and two-stage-sync)."),
    baselines: str | None = typer.Option(
        None, "--baselines",
        help="Comma list of mono, two-stage (saliency -> HRTF), two-stage-sync (audio-visual synchrony "
             "with camera-motion compensation -> HRTF), reference, swapped-reference, "
             "mono-duplicated-reference. Default: all that the given checkpoints allow."),
    steps: int = typer.Option(25, "--steps", min=1, help="Euler steps for generation."),
    cfg: float = typer.Option(4.5, "--cfg", help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Generation and bootstrap seed."),
    side_noise: float | None = typer.Option(
        None, "--side-noise", min=0.0, max=1.0,
        help="ViSAudio's side-noise temperature in [0, 1] (1 = as trained, 0 = both ears start from the "
             "same noise). Default: the run's generate.side_noise. The mono model is left as trained."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate only the first N clips."),
    device: str = typer.Option("cpu", "--device", help="Torch device for generation."),
    n_boot: int = typer.Option(2000, "--n-boot", min=10, help="Bootstrap resamples for the per-clip intervals (fd_logmel uses a tenth)."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout instead of a table."),
) -> None:
    """Evaluate ViSAudio against mono / two-stage baselines and reference floors.

    Writes REPORT/per_clip.parquet (one row per clip and system), REPORT/summary.json (means
    with seeded 95 % bootstrap intervals) and REPORT/index.html (plots + audio players). On a
    synthetic build (truth JSON beside each source scene) also REPORT/camera_truth.parquet
    (every source's camera-frame direction per ILD frame) and, per scene type, the same
    metrics and comparisons (summary.json "by_scene_type", one table line each).
    Generated audio is cached under REPORT/cache, so a rerun only recomputes metrics.
    """
    from visaudio.eval.runner import EvalConfig, EvalError, resolve_systems

    if cfg != cfg or cfg in (float("inf"), float("-inf")):
        fail(f"--cfg must be a finite number (e.g. 4.5), got {cfg}", 2)
    for name, p in (("--ckpt", ckpt), ("--mono-ckpt", mono_ckpt)):
        if p is not None and not p.exists():
            fail(f"{name} {p} does not exist", 2)
    try:
        systems = resolve_systems(baselines, ckpt, mono_ckpt)
    except EvalError as e:
        fail(str(e), 2)
    conf = EvalConfig(manifest_dir=manifest, report_dir=report, split=split, ckpt=ckpt, mono_ckpt=mono_ckpt,
                      systems=systems, steps=steps, cfg=cfg, seed=seed, limit=limit, device=device, side_noise=side_noise,
                      n_boot=n_boot, n_boot_set=max(10, n_boot // 10))
    try:
        summary = _run_with_progress(conf, transient=as_json)
    except EvalError as e:
        fail(str(e))
    except OSError as e:  # e.g. a read-only --report folder: one line naming it
        fail(f"{e.filename or report}: {e.strerror or e}")
    if as_json:
        typer.echo((report / "summary.json").read_text())
        return
    _print_summary(summary, split, report)


def _run_with_progress(conf, transient: bool) -> dict:
    """Run the evaluation with a progress bar on stderr (cleared afterwards when ``transient``,
    so --json leaves only the summary)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from visaudio.eval.runner import run

    with Progress(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=transient) as prog:
        task = prog.add_task("starting", total=None)

        def on_progress(what: str, i: int, n: int) -> None:
            prog.update(task, description=what, completed=i, total=n)

        summary = run(conf, on_progress)
        prog.update(task, completed=summary["n_clips"])
    return summary


def _print_summary(summary: dict, split: str, report: Path) -> None:
    """The human-readable result: a table of means with 95 % intervals per system, the
    comparisons of visaudio with each baseline, one line per scene type, the report's path."""
    from rich.console import Console
    from rich.table import Table

    from visaudio.eval.runner import KEY_METRICS

    con = Console()
    tab = Table(title=f"visaudio eval: {summary['n_clips']} clips of split {split!r} (mean [95 % CI])")
    cols = KEY_METRICS + ["ild_frame_error_db", "fd_logmel"]
    tab.add_column("system")
    for m in cols:
        tab.add_column(m.replace("_", " "), justify="right")
    for s in summary["systems"]:
        cells = []
        for m in cols:
            d = summary["systems"][s]["metrics"].get(m)
            if not d or d["mean"] != d["mean"]:
                cells.append("n/a")
            elif d["ci_low"] != d["ci_low"]:
                cells.append(f"{d['mean']:.2f}")
            else:
                cells.append(f"{d['mean']:.2f}\n[{d['ci_low']:.2f}, {d['ci_high']:.2f}]")
        tab.add_row(s, *cells)
    con.print(tab)
    for c in summary.get("comparisons", []):
        con.print(f"visaudio vs {c['baseline']} on {c['metric']}: "
                  f"{'BETTER (non-overlapping 95 % CIs)' if c['non_overlapping_and_better'] else 'not shown better'}"
                  f"; paired diff {c['paired_diff_mean']:.3g} {json.dumps([round(v, 3) for v in c['paired_diff_ci']])}")
    for t, d in (summary.get("by_scene_type") or {}).items():
        parts = []
        for sname, ms in d["systems"].items():
            v = [ms.get(m, {}).get("mean") for m in ("lat_corr_ref", "motion_consistency", "ild_sign_agreement")]
            parts.append(f"{sname} " + "/".join("n/a" if x is None or x != x else f"{x:.2f}" for x in v))
        con.print(f"scene type {t} ({d['n_clips']} clips; corr ref / motion / sign): " + "; ".join(parts))
    con.print(f"report: {report / 'index.html'}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
