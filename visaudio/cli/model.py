"""`visaudio train`, `train-codec`, `generate`, `info`. Heavy imports live inside the commands so
`visaudio --help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from visaudio.cli._common import fail, os_error


def train_cmd(
    manifest: Path | None = typer.Option(None, "--manifest",
                                         help="BiAudio manifest folder (manifest.parquet): clips decoded on the "
                                              "fly, for small runs"),
    store: Path | None = typer.Option(None, "--store",
                                      help="feature store written by `visaudio prepare` (streamed; for real "
                                           "datasets). Give --store or --manifest"),
    run: Path = typer.Option(..., "--run", "--run-dir",
                             help="run folder (checkpoints, logs); resumes if it has one. Under torchrun "
                                  "spell it --run-dir (torchrun's own parser claims --run)"),
    config: str = typer.Option("tiny", "--config", help="micro | tiny | paper | paper_scratch | FILE.yaml"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.lr=1e-4 (repeatable)"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Train ViSAudio on a feature store or a manifest (works under `torchrun --nproc_per_node=K`)."""
    from visaudio.checkpoint import CheckpointError
    from visaudio.config import ConfigError
    from visaudio.data import DataError
    from visaudio.train import RunFolderError, TrainingDiverged, train

    if (manifest is None) == (store is None):
        fail("give exactly one of --store STORE (from `visaudio prepare`) or --manifest MANIFEST", 2)
    try:
        s = train(manifest, config, run, max_steps=max_steps, overrides=list(set_), device=device, store=store)
    except (ConfigError, DataError, CheckpointError, TrainingDiverged, RunFolderError) as e:
        fail(str(e))
    except OSError as e:
        fail(os_error(e))
    if s["world_size"] == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        short = {k: v for k, v in s.items() if k not in ("losses",)}
        typer.echo(json.dumps(short, default=str))


def train_codec_cmd(
    manifest: Path = typer.Option(..., "--manifest"),
    run: Path = typer.Option(..., "--run", help="output folder; writes RUN/codec.pt (vae) or the folder "
                             "RUN/melvae (codec.kind=melvae)"),
    config: str = typer.Option("paper", "--config"),
    steps: int = typer.Option(2000, "--steps"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(3e-4, "--lr"),
    set_: list[str] = typer.Option([], "--set"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Train a per-channel codec from scratch: the waveform VAE (codec.kind=vae, the default), or
    with a config whose codec.kind is melvae (e.g. paper, which also needs codec.vocoder_path)
    the mel-VAE on the BigVGAN vocoder's mel settings."""
    from visaudio.config import ConfigError
    from visaudio.data import DataError
    from visaudio.model.codecs import train_codec

    try:
        s = train_codec(manifest, config, run, steps=steps, batch_size=batch_size, lr=lr,
                        overrides=list(set_), device=device)
    except (ConfigError, DataError) as e:
        fail(str(e))
    except OSError as e:
        fail(os_error(e))
    typer.echo(json.dumps(s, default=str))


def generate_cmd(
    video: Path = typer.Argument(..., help="any perspective video"),
    ckpt: Path = typer.Option(..., "--ckpt", help="run folder (or .pt file)"),
    out: Path = typer.Option(..., "--out", help="OUT.mp4; OUT.flac is written beside it"),
    caption: str | None = typer.Option(None, "--caption"),
    steps: int = typer.Option(25, "--steps", min=1, help="Euler steps (>= 1)"),
    cfg: float = typer.Option(4.5, "--cfg", help="guidance scale, a finite number (1.0 = no guidance)"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    side_noise: float | None = typer.Option(
        None, "--side-noise", min=0.0, max=1.0,
        help="side-noise temperature in [0, 1]: how much of the starting noise's L - R the sampler keeps "
             "(1 = as trained; 0 = both ears start alike, so every interaural difference comes from the "
             "picture). Default: the run's generate.side_noise"),
) -> None:
    """Generate binaural audio for VIDEO; writes OUT.flac and OUT.mp4 (H.264 + AAC)."""
    import math

    from visaudio.checkpoint import CheckpointError
    from visaudio.config import ConfigError
    from visaudio.data import DataError
    from visaudio.generate import generate_to_files

    if not math.isfinite(cfg):
        fail(f"--cfg must be a finite number (e.g. 4.5), got {cfg}", 2)
    if not video.is_file():
        fail(f"video not found: {video}")
    try:
        s = generate_to_files(video, ckpt, out, caption=caption, steps=steps, cfg=cfg, seed=seed, device=device,
                              side_noise=side_noise)
    except (DataError, ConfigError, CheckpointError, FileNotFoundError, RuntimeError) as e:
        fail(str(e))
    except OSError as e:
        fail(os_error(e))
    typer.echo(json.dumps(s))


def info_cmd(config: str = typer.Argument("tiny", help="micro | tiny | paper | paper_scratch | FILE.yaml"),
             set_: list[str] = typer.Option([], "--set")) -> None:
    """Print parameter counts per component of a config's model."""
    from rich.console import Console
    from rich.table import Table

    from visaudio.config import ConfigError, load_config
    from visaudio.model import ViSAudio, param_counts
    from visaudio.model.codecs import build_codec

    try:
        cfg = load_config(config, list(set_))
        # pretrained parts: widths from their folders' config.json (a missing folder is named)
        codec = build_codec(cfg.codec, cfg.data.sample_rate, load_weights=False)
        model = ViSAudio(cfg, codec.latent_dim)
    except ConfigError as e:
        fail(str(e))
    counts = param_counts(model)
    counts["codec"] = sum(p.numel() for p in codec.parameters())
    t = Table(title=f"{cfg.name}: latent {cfg.n_latents} x {codec.latent_dim} per channel, "
              f"{cfg.data.clip_seconds} s @ {cfg.data.sample_rate} Hz")
    t.add_column("component")
    t.add_column("parameters", justify="right")
    for k, v in counts.items():
        t.add_row(k, f"{v:,}")
    if cfg.model.text_encoder == "minilm" and cfg.model.minilm_path is None:
        t.add_row("(frozen MiniLM, not trained)", "22,713,216")
    for part, key in (("image", cfg.pretrained.image.path), ("motion", cfg.pretrained.motion.path)):
        if key is not None:
            t.add_row(f"(frozen {part} encoder, not trained)", str(key))
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("train-codec")(train_codec_cmd)
    app.command("generate")(generate_cmd)
    app.command("info")(info_cmd)
