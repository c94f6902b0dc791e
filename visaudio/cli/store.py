"""`visaudio prepare` (feature store) and `visaudio posthoc-ema`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from visaudio.cli._common import fail, os_error


def prepare_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="BiAudio manifest folder (manifest.parquet + clips)"),
    out: Path = typer.Option(..., "--out", help="store folder; the shards go to OUT/<key>/<split>/, key = hash "
                                                "of the decode settings and frozen parts"),
    config: str = typer.Option("tiny", "--config", help="micro | tiny | paper | FILE.yaml (the one you train with)"),
    split: list[str] = typer.Option(["train", "val"], "--split", help="splits to store (repeatable)"),
    shard_size: int = typer.Option(64, "--shard-size", min=1, help="clips per shard"),
    workers: int = typer.Option(1, "--workers", min=1, help="local processes (shards are spread over them)"),
    set_: list[str] = typer.Option([], "--set", help="config override, e.g. --set data.width=96"),
    device: str = typer.Option("cpu", "--device", help="device for the frozen encoders"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Decode every clip once into fixed-size shards for `visaudio train --store`.

    Resumable: run it again after a kill and only unfinished shards are written. Under
    `torchrun --nproc_per_node=K -m visaudio.cli prepare ...` each rank writes every K-th shard.
    A clip that cannot be decoded is reported and left out; the others are stored."""
    from visaudio.config import ConfigError
    from visaudio.data import DataError
    from visaudio.store import prepare

    try:
        s = prepare(manifest, config, out, overrides=list(set_), splits=tuple(split), shard_size=shard_size,
                    workers=workers, device=device)
    except (ConfigError, DataError) as e:
        fail(str(e))
    except OSError as e:
        fail(os_error(e))
    if as_json:
        typer.echo(json.dumps(s, default=str))
    else:
        cps = f"{s['clips_per_s']:.2f} clips/s" if s["clips_per_s"] else "nothing to do"
        typer.echo(f"store {s['store']}: {s['clips_written']} clips written ({cps}), {len(s['failed'])} failed, "
                   f"{'complete' if s['complete'] else 'incomplete (other ranks still writing?)'}")
    if s["failed"]:
        raise typer.Exit(1 if not s["clips_written"] else 0)


def posthoc_cmd(
    run: Path = typer.Option(..., "--run", help="run folder trained with train.posthoc_ema=true"),
    sigma_rel: float = typer.Option(0.05, "--sigma-rel", help="EMA width relative to the step count (0 < x < 0.5)"),
    step: int | None = typer.Option(None, "--step", help="synthesise at this step (default: the last snapshot)"),
    out: Path = typer.Option(..., "--out", help="checkpoint file to write (for `visaudio generate --ckpt`)"),
) -> None:
    """Synthesise the EMA of any width from the run's post-hoc EMA snapshots."""
    from visaudio.checkpoint import CheckpointError, atomic_save, newest_checkpoint
    from visaudio.phema import synthesize

    if not 0 < sigma_rel < 0.5:
        fail(f"--sigma-rel must be in (0, 0.5), got {sigma_rel}", 2)
    try:
        found = newest_checkpoint(run / "ckpt")
        if found is None:
            fail(f"no checkpoint in {run / 'ckpt'}: pass a run folder written by `visaudio train`")
        state, info = synthesize(run, sigma_rel, step)
    except (CheckpointError, FileNotFoundError) as e:
        fail(str(e))
    ck = found[1]
    export = {"step": info["step"], "config": ck["config"], "arch_hash": ck.get("arch_hash"), "ema": state,
              "codec_state": ck.get("codec_state"), "posthoc_ema": {k: v for k, v in info.items()}}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(export, out)
    except OSError as e:
        fail(os_error(e))
    typer.echo(json.dumps({"out": str(out), **info}))


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_cmd)
    app.command("posthoc-ema")(posthoc_cmd)
