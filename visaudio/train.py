"""Training loop: rectified flow over L and R latents, EMA, exact resume, DDP through torchrun.

Why every random draw is derived from (seed, step, sample index) instead of a global RNG: it makes
three promises cheap to keep at once. (1) Resume is exact: the restored step number regenerates
the same noise, timesteps and dropout masks. (2) DDP with the same *global* batch gives the same
loss as one process, since sample j of a step gets the same noise whichever rank holds it. (3) The
data order is a permutation seeded by (seed, epoch) plus a position, two integers in the
checkpoint. Global RNG states are still saved and restored for anything else that draws.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import math
import os
import pickle
import random
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visaudio.config import Config, load_config
from visaudio.data import DataError, ManifestDataset, collate

CKPT_NAME = "last.pt"
PREV_CKPT_NAME = "prev.pt"  # the checkpoint before last.pt: a damaged last.pt does not lose the run
CKPT_KEYS = ("step", "config")  # plus "ema" or "model" (exports for generation carry only "ema")
RESUME_KEYS = ("model", "ema", "opt", "sched", "sampler", "rng")


class TrainingDiverged(RuntimeError):
    """Non-finite loss; the message names the step and the batch's clip ids."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint written with a different model/codec/data architecture."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint holding Python objects beyond tensors and plain data. Loading it would run
    whatever code the pickle names, so it is refused, never executed."""


class CheckpointUnreadable(CheckpointError):
    """A truncated, empty or foreign file where a checkpoint should be."""


class RunFolderError(RuntimeError):
    """The run folder cannot be written (read-only, disk full); the message names the folder."""


# ------------------------------------------------------------------------------------- helpers


def dist_info() -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def sample_seed(seed: int, step: int, j: int) -> int:
    return int(np.random.SeedSequence([seed, step, j]).generate_state(1)[0])


@dataclass
class SamplerState:
    epoch: int = 0
    pos: int = 0


class EpochSampler:
    """Seeded permutation per epoch; the state is two integers."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.state = SamplerState()

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_batch(self, b: int) -> list[tuple[int, int, int]]:
        """b entries of (dataset index, epoch, position) for augmentation seeding."""
        out = []
        while len(out) < b:
            order = self.order(self.state.epoch)
            out.append((int(order[self.state.pos]), self.state.epoch, self.state.pos))
            self.state.pos += 1
            if self.state.pos >= self.n:
                self.state.epoch += 1
                self.state.pos = 0
        return out


def codec_key(cfg: Config) -> str:
    """What the latent statistics depend on: the codec settings, mono/binaural, and the bytes of
    a learned codec's checkpoint."""
    d: dict[str, Any] = {"codec": cfg.codec.model_dump(), "channels": cfg.data.channels}
    if cfg.codec.vae_ckpt:
        p = Path(cfg.codec.vae_ckpt)
        d["vae_sha1"] = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def compute_latent_stats(ds, codec, cfg: Config, device, rank: int = 0, world: int = 1
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-dimension mean and a per-dimension or shared scale (``codec.norm``) of the codec
    latents over whole training clips (both channels). Per-dimension stds are floored at 10% of
    their mean so near-silent dimensions don't become huge normalised values.

    Under DDP each rank encodes every world-th clip and the sums are all-reduced. A feature store
    keeps the result beside its shards (keyed by the codec), so it is computed once per store."""
    cache = ds.stats_cache(codec_key(cfg)) if hasattr(ds, "stats_cache") else None
    if cache is not None and cache.is_file():
        try:
            st = torch.load(cache, map_location="cpu", weights_only=True)
            return st["mean"], st["std"], st["var"]
        except Exception as e:  # a damaged cache is recomputed, never trusted
            print(f"warning: latent statistics {cache} unreadable ({e}); recomputing", file=sys.stderr)
    s = s2 = None
    n = 0
    flat = 0
    with torch.no_grad():
        for k, size in enumerate(ds.shard_sizes):
            for i in range(size):
                flat += 1
                if (flat - 1) % world != rank:
                    continue
                a = torch.from_numpy(ds.audio_at(k, i))[None].to(device)
                if cfg.data.channels == "mono":
                    a = a.mean(1, keepdim=True).repeat(1, 2, 1)
                z = codec.encode(a).reshape(-1, codec.latent_dim).double()
                s = z.sum(0) if s is None else s + z.sum(0)
                s2 = z.pow(2).sum(0) if s2 is None else s2 + z.pow(2).sum(0)
                n += z.shape[0]
    if s is None:
        s = torch.zeros(codec.latent_dim, dtype=torch.float64, device=device)
        s2 = torch.zeros_like(s)
    if world > 1:
        import torch.distributed as dist

        packed = torch.cat([s, s2, torch.tensor([float(n)], dtype=torch.float64, device=s.device)])
        if dist.get_backend() == "nccl":
            packed = packed.to(device)
        dist.all_reduce(packed)
        s, s2, n = packed[: len(s)], packed[len(s): 2 * len(s)], float(packed[-1])
    mean = s / n
    var = (s2 / n - mean.pow(2)).clamp_min(0)
    norm = cfg.codec.norm if cfg.codec.norm != "auto" else ("global" if cfg.codec.kind == "stft" else "dim")
    if norm == "global":
        std = var.mean().sqrt().expand_as(mean).clone() + 1e-8
    else:
        std = var.sqrt().clamp_min(0.1 * float(var.sqrt().mean()) + 1e-8)
    out = mean.float().cpu(), std.float().cpu(), (var / std.pow(2)).float().cpu()
    if cache is not None and rank == 0:
        try:
            _atomic_save({"mean": out[0], "std": out[1], "var": out[2], "n_frames": int(n)}, cache)
        except OSError as e:  # a read-only store still trains; it recomputes next time
            print(f"warning: could not keep latent statistics in {cache} ({e.strerror or e})", file=sys.stderr)
    return out


def lr_factor(step: int, tc) -> float:
    """Multiplier of train.lr after ``step`` optimizer steps: linear warm-up, then the decay."""
    w = max(1, tc.warmup_steps)
    if step + 1 < w:
        return (step + 1) / w
    if tc.lr_schedule == "constant":
        return 1.0
    total = tc.decay_steps if tc.decay_steps is not None else tc.max_steps
    frac = min(1.0, max(0.0, (step + 1 - w) / max(1, total - w)))
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if tc.lr_schedule == "cosine" else 1.0 - frac
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * shape


class FlowLoss(nn.Module):
    """Wraps the model so DDP sees condition encoding and the flow prediction in one forward."""

    def __init__(self, model, side_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.side_weight = float(side_weight)

    def forward(self, x0, x1, t, frames, captions, traj, drop_v, drop_t, features=None) -> torch.Tensor:
        m = self.model
        cond = m.encode_conditions(frames, captions, traj if m.traj_enc is not None else None, features=features)
        cond = m.drop_conditions(cond, drop_v, drop_t)
        tt = t.view(-1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * x1
        v = m(xt, t, cond)
        e = v.float() - (x1 - x0)
        if self.side_weight == 1.0:
            return e.pow(2).mean(dim=(2, 3)).sum(1)  # summed over L and R
        # |e_L|^2 + |e_R|^2 = |e_L + e_R|^2 / 2 + |e_L - e_R|^2 / 2: reweight the side half
        # (train.side_loss_weight; 1.0 gives the line above)
        mid = (e[:, 0] + e[:, 1]).pow(2).mean(dim=(1, 2)) / 2
        side = (e[:, 0] - e[:, 1]).pow(2).mean(dim=(1, 2)) / 2
        return mid + self.side_weight * side


def _rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain numbers only, so the checkpoint loads with
    ``weights_only=True`` (numpy's own state tuple holds an ndarray, which would need pickle)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    npst = st["numpy"]
    if isinstance(npst, dict):
        npst = (npst["bit_generator"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                npst["cached_gaussian"])
    np.random.set_state(npst)  # a tuple: checkpoints from before the tensor form
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _atomic_save(obj: Any, path: Path, keep_prev: Path | None = None) -> None:
    """Write ``path`` through a temporary file (fsync'd, then renamed), so a crash or a full disk
    leaves the old file whole. With ``keep_prev`` the old file becomes that one first: two
    checkpoints exist, and one damaged file does not lose the run."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if keep_prev is not None and path.is_file():
        os.replace(path, keep_prev)
    os.replace(tmp, path)


def arch_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += arch_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} != {vb!r}")
    return keys


def _legacy_numpy_globals() -> list[Any]:
    """The numpy pieces of a pre-tensor RNG state (``np.random.get_state()``'s ndarray). Allowed
    only while reading a checkpoint: they rebuild a plain array and call nothing else."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2.x
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # numpy 1.x
    # a pickle names the function by the module of the numpy that wrote it: allow both spellings
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct,
            (_reconstruct, "numpy.core.multiarray._reconstruct"), (_reconstruct, "numpy._core.multiarray._reconstruct")]


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so a crafted
    file cannot run code. Raises UnsafeCheckpoint (never executes the payload) or
    CheckpointUnreadable (truncated, empty, not a checkpoint), both naming the file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg:
            import re

            m = re.search(r"GLOBAL (\S+)", msg)
            what = f"loading it would call {m.group(1)}" if m else "it holds Python objects"
            raise UnsafeCheckpoint(
                f"checkpoint {path} was refused: {what}, and a checkpoint may only hold tensors and plain "
                "data (a crafted file runs code that way). "
                "Nothing was executed. Delete the file unless you made it yourself; checkpoints written by "
                "`visaudio train` load as they are") from None
        raise CheckpointUnreadable(f"checkpoint {path} is damaged ({msg.splitlines()[0][:200]}); "
                                   "restore it or delete it to start again") from None
    except (EOFError, OSError, RuntimeError, zipfile.BadZipFile, ValueError, AttributeError, ImportError) as e:
        if isinstance(e, FileNotFoundError):
            raise CheckpointUnreadable(f"no checkpoint at {path}") from None
        if isinstance(e, PermissionError):
            raise CheckpointUnreadable(f"checkpoint {path} cannot be read (permission denied)") from None
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointUnreadable(
            f"checkpoint {path} is unreadable, probably truncated ({why}); restore it, or delete it to start "
            "the run again") from None
    if not isinstance(ck, dict) or any(k not in ck for k in CKPT_KEYS) or not ("ema" in ck or "model" in ck):
        have = sorted(map(str, ck))[:8] if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointUnreadable(f"{path} is not a ViSAudio training checkpoint (has {have}, needs "
                                   f"{list(CKPT_KEYS)} and ema or model); pass a run folder written by "
                                   "`visaudio train`")
    return ck


def load_checkpoint(path: Path, cfg: Config | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (see ``read_checkpoint_file``) and, given ``cfg``, check that it
    was written for the same architecture (CheckpointMismatch otherwise)."""
    ck = read_checkpoint_file(path)
    if cfg is not None and ck.get("arch_hash") != cfg.arch_hash():
        saved = load_config(ck["config"])
        diff = arch_diff(saved.arch_dict(), cfg.arch_dict())
        raise CheckpointMismatch(
            f"checkpoint {path} was written by config {saved.name!r} with a different architecture: "
            + "; ".join(diff[:6])
        )
    return ck


def newest_checkpoint(ckpt_dir: Path, cfg: Config | None = None, quarantine: bool = False,
                      warn=None) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run: ``last.pt``, else ``prev.pt``. None if the run has
    neither. A damaged ``last.pt`` (truncated copy, disk trouble) falls back to ``prev.pt`` with a
    warning through ``warn``; with ``quarantine`` (the trainer) the damaged file is renamed to
    ``last.pt.unreadable`` so the next save cannot rotate it over the good ``prev.pt``.
    Unsafe or mismatched checkpoints are errors, never skipped: they are not accidents."""
    ckpt_dir = Path(ckpt_dir)
    last, prev = ckpt_dir / CKPT_NAME, ckpt_dir / PREV_CKPT_NAME
    errors: list[str] = []
    for i, p in enumerate((last, prev)):
        if not p.is_file():
            continue
        try:
            ck = load_checkpoint(p, cfg)
        except CheckpointUnreadable as e:
            errors.append(str(e))
            continue
        if i == 1 and errors:
            note = f"{errors[0]}; using the previous checkpoint {p} (step {int(ck['step'])}) instead"
            if quarantine and last.is_file():
                bad = last.with_name(last.name + ".unreadable")
                os.replace(last, bad)
                note += f"; the damaged file is kept as {bad}"
            (warn or (lambda m: print(f"warning: {m}", file=sys.stderr)))(note)
        return p, ck
    if errors:
        raise CheckpointUnreadable(errors[0] + ("" if prev.is_file() else
                                                f" (no earlier checkpoint {prev.name} to fall back to)")
                                   + ("; the earlier one is damaged too" if len(errors) > 1 else ""))
    return None


def load_weights(model: nn.Module, state: dict, path: Path | str) -> None:
    """load_state_dict with a clear error when the checkpoint's tensors don't fit the model
    (a checkpoint written by a different version of the model code)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines()[1:3]]
        raise CheckpointMismatch(f"checkpoint {path} does not fit this model (written by another model "
                                 f"version or config): {' '.join(first)}") from None


def build_model(cfg: Config, device="cpu"):
    from visaudio.codecs import build_codec
    from visaudio.model import ViSAudio

    codec = build_codec(cfg.codec, cfg.data.sample_rate).to(device)
    torch.manual_seed(cfg.seed)
    model = ViSAudio(cfg, codec.latent_dim).to(device)
    return model, codec


def ild_db(audio: np.ndarray, sr: int, frame_s: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame broadband ILD in dB (L over R) and frame energy (dB) of (2, T) audio."""
    n = max(1, int(sr * frame_s))
    k = audio.shape[1] // n
    x = audio[:, : k * n].reshape(2, k, n).astype(np.float64)
    e = (x**2).mean(-1) + 1e-12
    return 10 * np.log10(e[0] / e[1]), 10 * np.log10(e.sum(0))


def ild_sign_agreement(gen: np.ndarray, ref: np.ndarray, sr: int, gate_db: float = 30.0,
                       min_abs_db: float = 1.0) -> float:
    """Share of loud reference frames with a clear ILD (|ILD| >= min_abs_db) whose sign the
    generated audio reproduces; 0.5 is chance. NaN when no frame qualifies."""
    ig, _ = ild_db(gen, sr)
    ir, er = ild_db(ref, sr)
    k = min(len(ig), len(ir))
    m = (er[:k] > er[:k].max() - gate_db) & (np.abs(ir[:k]) >= min_abs_db)
    if not m.any():
        return float("nan")
    return float((np.sign(ig[:k][m]) == np.sign(ir[:k][m])).mean())


# ------------------------------------------------------------------------------------- train


def _check_writable(folder: Path) -> None:
    """Fail before any work when the run folder cannot take checkpoints (read-only mount, no
    permission, a file in the way), rather than after the first ``ckpt_every`` steps."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(f"run folder {folder.parent} is not writable ({e.strerror or e}); pass another "
                             "--run or fix its permissions") from None



def train(manifest_dir: str | Path | None, config: str | Path | Config, run_dir: str | Path, max_steps: int | None = None,
          overrides: list[str] | tuple[str, ...] = (), device: str | None = None, progress: bool | None = None,
          store: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) a ViSAudio run; returns a summary dict (see end of function).

    The examples come from ``store`` (a feature store written by ``visaudio prepare``; streamed,
    RAM independent of the dataset size) or else from ``manifest_dir`` clip by clip (tiny CPU
    runs). Both go through the same streaming loader (visaudio/stream.py)."""
    cfg = load_config(config, overrides)
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    rank, world, local_rank = dist_info()
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if tc.batch_size % (world * tc.grad_accum):
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by the world size {world} x "
                         f"train.grad_accum {tc.grad_accum}")
    if store is None and manifest_dir is None:
        raise DataError("pass a manifest folder or a feature store (visaudio prepare) to train on")
    total_steps = int(max_steps if max_steps is not None else tc.max_steps)
    run = Path(run_dir)
    ckpt_path = run / "ckpt" / CKPT_NAME
    is_main = rank == 0
    if is_main:
        _check_writable(run / "ckpt")
    # resume check before any expensive work, so a wrong config fails fast
    found = newest_checkpoint(run / "ckpt", cfg, quarantine=is_main)
    ck = found[1] if found is not None else None
    if ck is not None and any(k not in ck for k in RESUME_KEYS):
        raise CheckpointUnreadable(
            f"checkpoint {found[0]} holds weights for generation only (no {[k for k in RESUME_KEYS if k not in ck]}),"
            " so training cannot resume from it; pass a new --run folder to start a run")

    if store is not None:
        from visaudio.store import StoreError
        from visaudio.stream import StoreDataset

        train_ds: Any = StoreDataset(store, "train", cfg, augment=cfg.data.augment)
        try:
            val_ds: Any = StoreDataset(store, "val", cfg, augment=False)
        except StoreError as e:
            if "has no split" not in str(e):
                raise
            val_ds = None
    else:
        train_ds = ManifestDataset(manifest_dir, "train", cfg, augment=cfg.data.augment)
        try:
            val_ds = ManifestDataset(manifest_dir, "val", cfg, augment=False)
        except ValueError:
            val_ds = None
    model, codec = build_model(cfg, dev)
    if ck is None:
        mean, std, var = compute_latent_stats(train_ds, codec, cfg, dev, rank, world)
        model.latent_mean.copy_(mean.to(dev))
        model.latent_std.copy_(std.to(dev))
        model.latent_var.copy_(var.to(dev))
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                            betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tc))
    phema = None
    if tc.posthoc_ema:
        from visaudio.phema import PowerEMA

        phema = PowerEMA(model, tc.posthoc_sigma_rels)
    n_data = len(train_ds)
    data_source = f"store:{train_ds.key_dir.name}" if store is not None else "manifest"
    step = 0
    g0 = 0  # global index of the next training example (visaudio/stream.py)
    if ck is not None:
        load_weights(model, ck["model"], found[0])
        load_weights(ema, ck["ema"], found[0])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        st = SamplerState(**ck["sampler"])
        g0 = st.epoch * n_data + st.pos
        dpos = ck.get("data")
        if isinstance(dpos, dict) and (dpos.get("n") != n_data or dpos.get("source") != data_source):
            print(f"warning: {found[0]} was written while training on {dpos.get('n')} examples from "
                  f"{dpos.get('source')}; now {n_data} from {data_source}: the data order continues from "
                  f"epoch {st.epoch}, position {st.pos} but is not the one the run had", file=sys.stderr)
        if phema is not None:
            if "phema" not in ck:
                raise CheckpointError(f"checkpoint {found[0]} has no post-hoc EMA state; resume with "
                                      "train.posthoc_ema=false or start a new --run")
            phema.load_state_dict(ck["phema"])
        step = int(ck["step"])
        _set_rng_state(ck["rng"])
    from visaudio.stream import BatchStream, EpochOrder, StreamingDataset

    order = EpochOrder(train_ds.shard_sizes, cfg.seed, tc.shuffle_block)
    stream = BatchStream(StreamingDataset(train_ds, cfg.seed, rank, world, g0, tc.shuffle_block),
                         workers=tc.num_workers)
    loss_mod: nn.Module = FlowLoss(model, tc.side_loss_weight)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        loss_mod = DDP(loss_mod, device_ids=[dev.index] if dev.type == "cuda" else None,
                       find_unused_parameters=cfg.model.text_encoder == "minilm" or cfg.model.use_trajectory)
    if is_main:
        cfg_text = __import__("yaml").safe_dump(cfg.model_dump(), sort_keys=False)
        (run / "config.yaml").write_text(cfg_text)

    csv_path = run / "train_log.csv"
    t_edges = np.linspace(0, 1, tc.t_bins + 1)
    fields = ["step", "loss", "lr", "grad_norm", "samples_per_s"] + [f"loss_t{i}" for i in range(tc.t_bins)]
    if is_main:
        rows = []
        if csv_path.is_file() and ck is not None:  # drop rows past the checkpoint (they will be redone)
            with open(csv_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    tb = None
    if is_main and tc.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run / "tb"))
        except Exception as e:  # tensorboard is optional at run time
            print(f"tensorboard disabled: {e}", file=sys.stderr)

    def save(step_: int) -> None:
        if not is_main:
            return
        try:
            _save(step_)
        except OSError as e:
            raise RunFolderError(
                f"could not write the checkpoint for step {step_} to {ckpt_path.parent} "
                f"({e.strerror or e}); the previous checkpoint is untouched. Free space or fix the "
                "folder, then run the same command again to resume") from None

    def data_position(step_: int) -> dict[str, Any]:
        """Where the data stream stands after ``step_`` steps: the global example index, its
        epoch and position, and the shard and offset it is read from."""
        g = g0 + (step_ - start_step) * tc.batch_size
        e, p, k, i = order.at(g)
        return {"g": g, "epoch": e, "pos": p, "shard": k, "offset": i, "n": n_data, "source": data_source}

    def _save(step_: int) -> None:
        dp = data_position(step_)
        extra = {"phema": phema.state_dict()} if phema is not None else {}
        _atomic_save(extra | {
            "step": step_, "sampler": {"epoch": dp["epoch"], "pos": dp["pos"]}, "data": dp, "model": model.state_dict(),
            "ema": ema.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
            "rng": _rng_state(), "config": cfg.model_dump(), "arch_hash": cfg.arch_hash(),
            "latent_mean": model.latent_mean.cpu(), "latent_std": model.latent_std.cpu(),
            "codec_state": codec.state_dict() if cfg.codec.kind == "vae" else None,
        }, ckpt_path, keep_prev=ckpt_path.with_name(PREV_CKPT_NAME))

    def save_phema(step_: int) -> None:
        if phema is None or not is_main:
            return
        from visaudio.phema import snapshot_path

        sp = snapshot_path(run, step_)
        sp.parent.mkdir(exist_ok=True)
        try:
            _atomic_save(phema.state_dict(), sp)
        except OSError as e:
            raise RunFolderError(f"could not write the post-hoc EMA snapshot {sp} ({e.strerror or e})") from None

    amp = dev.type == "cuda" and tc.bf16
    losses: list[tuple[int, float]] = []
    val_hist: list[dict[str, float]] = []
    start_step = step
    t_start = time.time()
    n_samples = 0
    show = is_main and (progress if progress is not None else sys.stdout.isatty())
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn(), disable=not show)
    task = prog.add_task("train", total=total_steps, completed=step, info="")
    prog.start()
    try:
        while step < total_steps:
            t0 = time.time()
            b_rank = tc.batch_size // world
            items = stream.take(b_rank)
            micro = b_rank // tc.grad_accum
            model.train()
            opt.zero_grad(set_to_none=True)
            lsum = torch.zeros((), dtype=torch.float64)
            per_all, t_all, clip_ids = [], [], []
            for m in range(tc.grad_accum):
                chunk = items[m * micro:(m + 1) * micro]
                batch = collate(chunk)
                clip_ids += batch["clip_id"]
                js = [it["g"] - step * tc.batch_size for it in chunk]  # index in the global batch
                gens = [torch.Generator().manual_seed(sample_seed(cfg.seed, step, j)) for j in js]
                x0 = torch.cat([model.prior_noise(1, g) for g in gens]).to(dev)
                u = torch.stack([torch.randn(1, generator=g) for g in gens]).view(-1)
                t = torch.sigmoid(u * tc.t_std + tc.t_mean).to(dev)
                dr = torch.stack([torch.rand(2, generator=g) for g in gens])
                drop_v, drop_t = (dr[:, 0] < tc.cond_dropout).to(dev), (dr[:, 1] < tc.cond_dropout).to(dev)
                feats = batch.get("features") or {}
                cond_feats = {k: v.to(dev) for k, v in feats.items() if k in ("image", "motion", "text", "text_mask")}
                with torch.no_grad():  # a frozen codec's latents come from the store when it has them
                    z = feats["latents"].to(dev) if "latents" in feats and cfg.data.channels != "mono" else \
                        codec.encode(batch["audio"].to(dev))
                    x1 = model.normalize(z.float())
                last_micro = m == tc.grad_accum - 1
                sync = contextlib.nullcontext() if (world == 1 or last_micro) else loss_mod.no_sync()
                with sync:
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                        per = loss_mod(x0, x1, t, batch["frames"].to(dev), batch["caption"], batch["traj"].to(dev),
                                       drop_v, drop_t, cond_feats or None)
                    (per.sum() / b_rank).backward()
                lsum += per.detach().double().sum().cpu()
                per_all.append(per.detach())
                t_all.append(t.detach())
            per, t = torch.cat(per_all), torch.cat(t_all)
            stats = (lsum / b_rank).float().reshape(1).to(dev)
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(stats)
                stats /= world
            lval = float(stats[0])
            if not math.isfinite(lval):
                raise TrainingDiverged(
                    f"non-finite loss ({lval}) at step {step + 1}; batch clip ids {clip_ids}; "
                    f"last good checkpoint kept: {ckpt_path if ckpt_path.is_file() else 'none yet'}"
                )
            gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
            opt.step()
            sched.step()
            step += 1
            with torch.no_grad():
                d = min(tc.ema_decay, (1 + step) / (10 + step)) if tc.ema_warmup else tc.ema_decay
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm.detach(), 1 - d)
                for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
                    be.copy_(bm)
            if phema is not None:
                phema.update(model, step)
            dt = time.time() - t0
            n_samples += tc.batch_size
            losses.append((step, lval))
            if is_main:
                tb_np, pl = t.detach().cpu().numpy(), per.detach().float().cpu().numpy()
                binned = []
                for i in range(tc.t_bins):
                    m = (tb_np >= t_edges[i]) & (tb_np < t_edges[i + 1])
                    binned.append(float(pl[m].mean()) if m.any() else float("nan"))
                row = [step, lval, sched.get_last_lr()[0], gn, tc.batch_size / max(dt, 1e-9)] + binned
                with open(csv_path, "a", newline="") as f:
                    csv.writer(f).writerow(row)
                if tb is not None and step % tc.log_every == 0:
                    tb.add_scalar("train/loss", lval, step)
                    tb.add_scalar("train/lr", row[2], step)
                    tb.add_scalar("train/grad_norm", gn, step)
                    for i, b in enumerate(binned):
                        if math.isfinite(b):
                            tb.add_scalar(f"train/loss_t{i}", b, step)
                prog.update(task, completed=step, info=f"loss {lval:.4f}")
            if val_ds is not None and step % tc.val_every == 0 and is_main:
                vm = validate(ema, codec, val_ds, cfg, dev, step)
                val_hist.append(vm)
                with open(run / "val_log.csv", "a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(vm))
                    if f.tell() == 0:
                        w.writeheader()
                    w.writerow(vm)
                if tb is not None:
                    for k, v in vm.items():
                        if k != "step" and math.isfinite(v):
                            tb.add_scalar(f"val/{k}", v, step)
            if phema is not None and (step % tc.posthoc_every == 0 or step == total_steps):
                save_phema(step)
            if step % tc.ckpt_every == 0 or step == total_steps:
                save(step)
    finally:
        stream.close()
        prog.stop()
        if tb is not None:
            tb.close()
    secs = time.time() - t_start
    from visaudio.model import param_counts

    return {
        "run_dir": str(run), "checkpoint": str(ckpt_path), "config": cfg.name, "start_step": start_step,
        "steps": step, "losses": losses, "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None, "seconds": secs,
        "samples_per_s": n_samples / secs if secs > 0 else None, "n_params": param_counts(model)["total"],
        "n_train": len(train_ds), "n_val": len(val_ds) if val_ds else 0, "n_missing": train_ds.n_missing,
        "world_size": world, "val": val_hist,
    }


@torch.no_grad()
def validate(model, codec, ds: ManifestDataset, cfg: Config, dev, step: int, max_clips: int = 8) -> dict[str, float]:
    """Validation loss at fixed timesteps (same noise every time) and ILD sign agreement of
    generated vs reference audio on a few clips."""
    model.eval()
    tc = cfg.train
    n = min(len(ds), max_clips)
    items = [ds[i] for i in range(n)]
    b = collate(items)
    x1 = model.normalize(codec.encode(b["audio"].to(dev)).float())
    cond = model.encode_conditions(b["frames"].to(dev), b["caption"],
                                   b["traj"].to(dev) if model.traj_enc is not None else None)
    g = torch.Generator().manual_seed(1234)
    tot = 0.0
    ts = [0.1, 0.3, 0.5, 0.7, 0.9]
    for tv in ts:
        x0 = model.prior_noise(n, g).to(dev)
        t = torch.full((n,), tv, device=dev)
        xt = (1 - tv) * x0 + tv * x1
        tot += float((model(xt, t, cond).float() - (x1 - x0)).pow(2).mean(dim=(2, 3)).sum(1).mean())
    out = {"step": float(step), "val_loss": tot / len(ts)}
    k = min(n, tc.val_clips)
    if k > 0:
        sub = type(cond)(*(None if v is None else v[:k] for v in (cond.video, cond.text, cond.sync, cond.spacetime, cond.traj)))
        x = model.sample(sub, steps=tc.val_steps, cfg=cfg.generate.cfg, seed=0)
        audio = codec.decode(model.denormalize(x), cfg.window_samples).cpu().numpy()
        agr = [ild_sign_agreement(audio[i], items[i]["audio"].numpy(), cfg.data.sample_rate) for i in range(k)]
        agr = [a for a in agr if math.isfinite(a)]
        out["ild_sign_agreement"] = float(np.mean(agr)) if agr else float("nan")
    return out
