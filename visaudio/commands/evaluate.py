"""`visaudio eval`: offline spatial metrics for ViSAudio and its baselines, with a report."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
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
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        from visaudio.eval.runner import KEY_METRICS, EvalConfig, EvalError, resolve_systems, run

        err = Console(stderr=True)
        if cfg != cfg or cfg in (float("inf"), float("-inf")):
            err.print(f"[red]error:[/] --cfg must be a finite number (e.g. 4.5), got {cfg}")
            raise typer.Exit(2)
        for name, p in (("--ckpt", ckpt), ("--mono-ckpt", mono_ckpt)):
            if p is not None and not p.exists():
                err.print(f"[red]error:[/] {name} {p} does not exist")
                raise typer.Exit(2)
        try:
            systems = resolve_systems(baselines, ckpt, mono_ckpt)
        except EvalError as e:
            err.print(f"[red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(2) from None
        conf = EvalConfig(manifest_dir=manifest, report_dir=report, split=split, ckpt=ckpt, mono_ckpt=mono_ckpt,
                          systems=systems, steps=steps, cfg=cfg, seed=seed, limit=limit, device=device,
                          n_boot=n_boot, n_boot_set=max(10, n_boot // 10))
        try:
            with Progress(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err, transient=as_json) as prog:
                task = prog.add_task("starting", total=None)

                def on_progress(what: str, i: int, n: int) -> None:
                    prog.update(task, description=what, completed=i, total=n)

                summary = run(conf, on_progress)
                prog.update(task, completed=summary["n_clips"])
        except EvalError as e:
            err.print(f"[red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as e:  # e.g. a read-only --report folder: one line naming it
            err.print(f"[red]error:[/] {e.filename or report}: {e.strerror or e}", soft_wrap=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo((report / "summary.json").read_text())
            return
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
