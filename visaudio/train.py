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
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visaudio.checkpoint import (
    CKPT_NAME,
    PREV_CKPT_NAME,
    CheckpointError,
    CheckpointUnreadable,
    atomic_save,
    build_model,
    load_weights,
    newest_checkpoint,
)
from visaudio.config import Config, load_config
from visaudio.data import DataError, ManifestDataset, collate
from visaudio.eval.metrics import block_ild_sign_agreement
from visaudio.model import flow_matching as FM
from visaudio.model.network import frame_ild

RESUME_KEYS = ("model", "ema", "opt", "sched", "sampler", "rng")


class TrainingDiverged(RuntimeError):
    """Non-finite loss; the message names the step and the batch's clip ids."""


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
            atomic_save({"mean": out[0], "std": out[1], "var": out[2], "n_frames": int(n)}, cache)
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

    def __init__(self, model, side_weight: float = 1.0, side_head_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.side_weight = float(side_weight)
        self.side_head_weight = float(side_head_weight)

    def forward(self, x0, x1, t, frames, captions, traj, drop_v, drop_t, features=None, drop_c=None) -> torch.Tensor:
        m = self.model
        cond = m.encode_conditions(frames, captions, traj if m.traj_enc is not None else None, features=features,
                                   drop_camera=drop_c)
        # the side head (model.side_head) regresses the target's per-frame ILD from the full
        # conditions: before the CFG dropout, which would leave it nothing to see
        aux = None
        if m.side_head is not None:
            with torch.no_grad():
                ild = frame_ild(m.denormalize(x1))
            aux = (m.side_pred(cond).float() - ild).pow(2).mean(-1)
        cond = m.drop_conditions(cond, drop_v, drop_t)
        v = m(FM.interpolate(x0, x1, t), t, cond)
        loss = FM.flow_loss(v, x0, x1, self.side_weight)
        return loss if aux is None else loss + self.side_head_weight * aux


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


class Trainer:
    """One training (or resumed) run: ``Trainer(...).fit()`` returns the summary ``train`` returns.

    Why a class: device, data, model, optimiser, EMA, stream and logs are built once and then shared
    by the step, validation and checkpointing; as methods each part reads on its own. The order of
    the setup methods in ``__init__`` is part of the behaviour (the model is initialised, the latent
    statistics computed, then a checkpoint's weights and RNG states restored), so a resumed run
    repeats an uninterrupted one exactly; keep it when adding a part."""

    def __init__(self, manifest_dir: str | Path | None, config: str | Path | Config, run_dir: str | Path,
                 max_steps: int | None = None, overrides: list[str] | tuple[str, ...] = (), device: str | None = None,
                 progress: bool | None = None, store: str | Path | None = None):
        self.cfg = load_config(config, overrides)
        self.tc = self.cfg.train
        self._setup_runtime(device)
        if store is None and manifest_dir is None:
            raise DataError("pass a manifest folder or a feature store (visaudio prepare) to train on")
        self.total_steps = int(max_steps if max_steps is not None else self.tc.max_steps)
        self.run = Path(run_dir)
        self.ckpt_path = self.run / "ckpt" / CKPT_NAME
        self.progress = progress
        self._find_checkpoint()
        self._open_datasets(manifest_dir, store)
        self._build_model()
        self._restore(store)
        self._open_stream()
        self._open_logs()
        self.amp = self.dev.type == "cuda" and self.tc.bf16
        self.losses: list[tuple[int, float]] = []
        self.val_hist: list[dict[str, float]] = []
        self.n_samples = 0

    # ------------------------------------------------------------------------------- setup

    def _setup_runtime(self, device: str | None) -> None:
        """Threads, DDP rank and world, the torch device; the batch must split over ranks."""
        tc = self.tc
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        self.rank, self.world, local_rank = dist_info()
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.dev = torch.device(device)
        if self.dev.type == "cuda":
            torch.cuda.set_device(self.dev)
        if tc.batch_size % (self.world * tc.grad_accum):
            raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by the world size {self.world} x "
                             f"train.grad_accum {tc.grad_accum}")
        self.is_main = self.rank == 0

    def _find_checkpoint(self) -> None:
        """The run folder's newest checkpoint (``self.found``/``self.ck``, None for a new run),
        looked for before any expensive work so a wrong config fails fast."""
        if self.is_main:
            _check_writable(self.run / "ckpt")
        self.found = newest_checkpoint(self.run / "ckpt", self.cfg, quarantine=self.is_main)
        ck = self.ck = self.found[1] if self.found is not None else None
        if ck is not None and any(k not in ck for k in RESUME_KEYS):
            raise CheckpointUnreadable(
                f"checkpoint {self.found[0]} holds weights for generation only (no "
                f"{[k for k in RESUME_KEYS if k not in ck]}), so training cannot resume from it; pass a new --run "
                "folder to start a run")

    def _open_datasets(self, manifest_dir: str | Path | None, store: str | Path | None) -> None:
        """Training and (when the data has that split) validation examples, from the feature store
        or clip by clip from the manifest."""
        cfg = self.cfg
        if store is not None:
            from visaudio.store import StoreError
            from visaudio.stream import StoreDataset

            self.train_ds: Any = StoreDataset(store, "train", cfg, augment=cfg.data.augment)
            try:
                self.val_ds: Any = StoreDataset(store, "val", cfg, augment=False)
            except StoreError as e:
                if "has no split" not in str(e):
                    raise
                self.val_ds = None
        else:
            self.train_ds = ManifestDataset(manifest_dir, "train", cfg, augment=cfg.data.augment)
            try:
                self.val_ds = ManifestDataset(manifest_dir, "val", cfg, augment=False)
            except ValueError:
                self.val_ds = None

    def _build_model(self) -> None:
        """Model and codec (latent statistics computed for a new run), EMA copy, optimiser,
        learning-rate schedule and the optional post-hoc EMA."""
        cfg, tc, dev = self.cfg, self.tc, self.dev
        model, self.codec = build_model(cfg, dev)
        if self.ck is None:
            mean, std, var = compute_latent_stats(self.train_ds, self.codec, cfg, dev, self.rank, self.world)
            model.latent_mean.copy_(mean.to(dev))
            model.latent_std.copy_(std.to(dev))
            model.latent_var.copy_(var.to(dev))
        self.model = model
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                                     betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, tc))
        self.phema = None
        if tc.posthoc_ema:
            from visaudio.phema import PowerEMA

            self.phema = PowerEMA(model, tc.posthoc_sigma_rels)

    def _restore(self, store: str | Path | None) -> None:
        """Step, data position, weights, optimiser and RNG states from the checkpoint (if any)."""
        self.n_data = len(self.train_ds)
        self.data_source = f"store:{self.train_ds.key_dir.name}" if store is not None else "manifest"
        self.step = 0
        self.g0 = 0  # global index of the next training example (visaudio/stream.py)
        ck, found = self.ck, self.found
        if ck is not None:
            load_weights(self.model, ck["model"], found[0])
            load_weights(self.ema, ck["ema"], found[0])
            self.opt.load_state_dict(ck["opt"])
            self.sched.load_state_dict(ck["sched"])
            st = SamplerState(**ck["sampler"])
            self.g0 = st.epoch * self.n_data + st.pos
            dpos = ck.get("data")
            if isinstance(dpos, dict) and (dpos.get("n") != self.n_data or dpos.get("source") != self.data_source):
                print(f"warning: {found[0]} was written while training on {dpos.get('n')} examples from "
                      f"{dpos.get('source')}; now {self.n_data} from {self.data_source}: the data order continues "
                      f"from epoch {st.epoch}, position {st.pos} but is not the one the run had", file=sys.stderr)
            if self.phema is not None:
                if "phema" not in ck:
                    raise CheckpointError(f"checkpoint {found[0]} has no post-hoc EMA state; resume with "
                                          "train.posthoc_ema=false or start a new --run")
                self.phema.load_state_dict(ck["phema"])
            self.step = int(ck["step"])
            _set_rng_state(ck["rng"])
        self.start_step = self.step

    def _open_stream(self) -> None:
        """The streaming loader from the restored position, and the loss module (DDP-wrapped
        over several ranks)."""
        from visaudio.stream import BatchStream, EpochOrder, StreamingDataset

        cfg, tc = self.cfg, self.tc
        self.order = EpochOrder(self.train_ds.shard_sizes, cfg.seed, tc.shuffle_block)
        self.stream = BatchStream(StreamingDataset(self.train_ds, cfg.seed, self.rank, self.world, self.g0,
                                                   tc.shuffle_block), workers=tc.num_workers)
        self.loss_mod: nn.Module = FlowLoss(self.model, tc.side_loss_weight, tc.side_head_weight)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.loss_mod = DDP(self.loss_mod, device_ids=[self.dev.index] if self.dev.type == "cuda" else None,
                                find_unused_parameters=cfg.model.text_encoder == "minilm" or cfg.model.use_trajectory)

    def _open_logs(self) -> None:
        """config.yaml, train_log.csv (rows past a resumed checkpoint dropped: they are redone)
        and the optional tensorboard writer; on rank 0 only."""
        tc = self.tc
        self.csv_path = self.run / "train_log.csv"
        self.t_edges = np.linspace(0, 1, tc.t_bins + 1)
        self.tb = None
        if not self.is_main:
            return
        cfg_text = __import__("yaml").safe_dump(self.cfg.model_dump(), sort_keys=False)
        (self.run / "config.yaml").write_text(cfg_text)
        fields = ["step", "loss", "lr", "grad_norm", "samples_per_s"] + [f"loss_t{i}" for i in range(tc.t_bins)]
        rows = []
        if self.csv_path.is_file() and self.ck is not None:
            with open(self.csv_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        if tc.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run / "tb"))
            except Exception as e:  # tensorboard is optional at run time
                print(f"tensorboard disabled: {e}", file=sys.stderr)

    # ------------------------------------------------------------------------------- run

    def fit(self) -> dict[str, Any]:
        """Step until ``total_steps``; the stream, progress bar and tensorboard are closed even
        when a step raises."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        t_start = time.time()
        show = self.is_main and (self.progress if self.progress is not None else sys.stdout.isatty())
        self._prog = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not show)
        self._task = self._prog.add_task("train", total=self.total_steps, completed=self.step, info="")
        self._prog.start()
        try:
            while self.step < self.total_steps:
                self.train_step()
        finally:
            self.stream.close()
            self._prog.stop()
            if self.tb is not None:
                self.tb.close()
        return self.summary(time.time() - t_start)

    def train_step(self) -> None:
        """One optimiser step over the next global batch, then its logs, validation and saves."""
        tc = self.tc
        t0 = time.time()
        b_rank = tc.batch_size // self.world
        items = self.stream.take(b_rank)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        lval, per, t, clip_ids = self._forward_backward(items, b_rank)
        if not math.isfinite(lval):
            raise TrainingDiverged(
                f"non-finite loss ({lval}) at step {self.step + 1}; batch clip ids {clip_ids}; "
                f"last good checkpoint kept: {self.ckpt_path if self.ckpt_path.is_file() else 'none yet'}"
            )
        gn = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip))
        self.opt.step()
        self.sched.step()
        self.step += 1
        self._update_ema()
        if self.phema is not None:
            self.phema.update(self.model, self.step)
        dt = time.time() - t0
        self.n_samples += tc.batch_size
        self.losses.append((self.step, lval))
        if self.is_main:
            self._log_step(lval, gn, dt, per, t)
        if self.val_ds is not None and self.step % tc.val_every == 0 and self.is_main:
            self._validate_and_log()
        if self.phema is not None and (self.step % tc.posthoc_every == 0 or self.step == self.total_steps):
            self.save_phema(self.step)
        if self.step % tc.ckpt_every == 0 or self.step == self.total_steps:
            self.save(self.step)

    def _forward_backward(self, items: list[dict[str, Any]], b_rank: int
                          ) -> tuple[float, torch.Tensor, torch.Tensor, list[str]]:
        """Gradients of this rank's ``b_rank`` examples in ``grad_accum`` micro-batches. Returns the
        mean loss over the global batch, the per-sample losses and timesteps, and the clip ids.

        Each sample's noise, timestep and condition dropout come from its own generator seeded by
        (seed, step, index in the global batch): see the module docstring."""
        cfg, tc, model, dev, step = self.cfg, self.tc, self.model, self.dev, self.step
        micro = b_rank // tc.grad_accum
        lsum = torch.zeros((), dtype=torch.float64)
        per_all, t_all, clip_ids = [], [], []
        for m in range(tc.grad_accum):
            chunk = items[m * micro:(m + 1) * micro]
            batch = collate(chunk)
            clip_ids += batch["clip_id"]
            js = [it["g"] - step * tc.batch_size for it in chunk]  # index in the global batch
            gens = [torch.Generator().manual_seed(sample_seed(cfg.seed, step, j)) for j in js]
            x0 = torch.cat([model.prior_noise(1, g) for g in gens]).to(dev)
            t = FM.sample_t(gens, tc.t_mean, tc.t_std).to(dev)
            dr = torch.stack([torch.rand(2, generator=g) for g in gens])
            drop_v, drop_t = (dr[:, 0] < tc.cond_dropout).to(dev), (dr[:, 1] < tc.cond_dropout).to(dev)
            drop_c = None  # drawn after the others (and only when on): runs without it are unchanged
            if tc.camera_motion_dropout > 0 and model.camera_motion is not None:
                drop_c = torch.cat([torch.rand(1, generator=g) for g in gens]).lt(tc.camera_motion_dropout).to(dev)
            feats = batch.get("features") or {}
            cond_feats = {k: v.to(dev) for k, v in feats.items() if k in ("image", "motion", "text", "text_mask")}
            with torch.no_grad():  # a frozen codec's latents come from the store when it has them
                z = feats["latents"].to(dev) if "latents" in feats and cfg.data.channels != "mono" else \
                    self.codec.encode(batch["audio"].to(dev))
                x1 = model.normalize(z.float())
            last_micro = m == tc.grad_accum - 1
            sync = contextlib.nullcontext() if (self.world == 1 or last_micro) else self.loss_mod.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                    per = self.loss_mod(x0, x1, t, batch["frames"].to(dev), batch["caption"], batch["traj"].to(dev),
                                        drop_v, drop_t, cond_feats or None, drop_c)
                (per.sum() / b_rank).backward()
            lsum += per.detach().double().sum().cpu()
            per_all.append(per.detach())
            t_all.append(t.detach())
        stats = (lsum / b_rank).float().reshape(1).to(dev)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(stats)
            stats /= self.world
        return float(stats[0]), torch.cat(per_all), torch.cat(t_all), clip_ids

    @torch.no_grad()
    def _update_ema(self) -> None:
        """The classic EMA (warm-up decay (1 + step) / (10 + step) when train.ema_warmup); buffers copied."""
        tc, step = self.tc, self.step
        d = min(tc.ema_decay, (1 + step) / (10 + step)) if tc.ema_warmup else tc.ema_decay
        for pe, pm in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            pe.lerp_(pm.detach(), 1 - d)
        for be, bm in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            be.copy_(bm)

    # ------------------------------------------------------------------------------- logs

    def _log_step(self, lval: float, gn: float, dt: float, per: torch.Tensor, t: torch.Tensor) -> None:
        """One train_log.csv row (loss per timestep bin too), tensorboard every log_every steps,
        the progress bar."""
        tc, step, tb = self.tc, self.step, self.tb
        tb_np, pl = t.detach().cpu().numpy(), per.detach().float().cpu().numpy()
        binned = []
        for i in range(tc.t_bins):
            m = (tb_np >= self.t_edges[i]) & (tb_np < self.t_edges[i + 1])
            binned.append(float(pl[m].mean()) if m.any() else float("nan"))
        row = [step, lval, self.sched.get_last_lr()[0], gn, tc.batch_size / max(dt, 1e-9)] + binned
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow(row)
        if tb is not None and step % tc.log_every == 0:
            tb.add_scalar("train/loss", lval, step)
            tb.add_scalar("train/lr", row[2], step)
            tb.add_scalar("train/grad_norm", gn, step)
            for i, b in enumerate(binned):
                if math.isfinite(b):
                    tb.add_scalar(f"train/loss_t{i}", b, step)
        self._prog.update(self._task, completed=step, info=f"loss {lval:.4f}")

    def _validate_and_log(self) -> None:
        """Validate the EMA weights; append to val_log.csv and tensorboard."""
        vm = validate(self.ema, self.codec, self.val_ds, self.cfg, self.dev, self.step)
        self.val_hist.append(vm)
        with open(self.run / "val_log.csv", "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(vm))
            if f.tell() == 0:
                w.writeheader()
            w.writerow(vm)
        if self.tb is not None:
            for k, v in vm.items():
                if k != "step" and math.isfinite(v):
                    self.tb.add_scalar(f"val/{k}", v, self.step)

    # ------------------------------------------------------------------------------- checkpoints

    def data_position(self, step: int) -> dict[str, Any]:
        """Where the data stream stands after ``step`` steps: the global example index, its
        epoch and position, and the shard and offset it is read from."""
        g = self.g0 + (step - self.start_step) * self.tc.batch_size
        e, p, k, i = self.order.at(g)
        return {"g": g, "epoch": e, "pos": p, "shard": k, "offset": i, "n": self.n_data, "source": self.data_source}

    def save(self, step: int) -> None:
        """Write the resumable checkpoint (rank 0); the previous one is kept as prev.pt."""
        if not self.is_main:
            return
        try:
            self._write_checkpoint(step)
        except OSError as e:
            raise RunFolderError(
                f"could not write the checkpoint for step {step} to {self.ckpt_path.parent} "
                f"({e.strerror or e}); the previous checkpoint is untouched. Free space or fix the "
                "folder, then run the same command again to resume") from None

    def _write_checkpoint(self, step: int) -> None:
        dp = self.data_position(step)
        model, cfg = self.model, self.cfg
        extra = {"phema": self.phema.state_dict()} if self.phema is not None else {}
        atomic_save(extra | {
            "step": step, "sampler": {"epoch": dp["epoch"], "pos": dp["pos"]}, "data": dp, "model": model.state_dict(),
            "ema": self.ema.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "rng": _rng_state(), "config": cfg.model_dump(), "arch_hash": cfg.arch_hash(),
            "latent_mean": model.latent_mean.cpu(), "latent_std": model.latent_std.cpu(),
            "codec_state": self.codec.state_dict() if cfg.codec.kind == "vae" else None,
        }, self.ckpt_path, keep_prev=self.ckpt_path.with_name(PREV_CKPT_NAME))

    def save_phema(self, step: int) -> None:
        """Snapshot the post-hoc EMA into RUN/ema/ (rank 0)."""
        if self.phema is None or not self.is_main:
            return
        from visaudio.phema import snapshot_path

        sp = snapshot_path(self.run, step)
        sp.parent.mkdir(exist_ok=True)
        try:
            atomic_save(self.phema.state_dict(), sp)
        except OSError as e:
            raise RunFolderError(f"could not write the post-hoc EMA snapshot {sp} ({e.strerror or e})") from None

    def summary(self, secs: float) -> dict[str, Any]:
        """What ``train`` returns (``visaudio train`` prints it as JSON, less ``losses``)."""
        from visaudio.model import param_counts

        losses = self.losses
        return {
            "run_dir": str(self.run), "checkpoint": str(self.ckpt_path), "config": self.cfg.name,
            "start_step": self.start_step, "steps": self.step, "losses": losses,
            "first_loss": losses[0][1] if losses else None, "last_loss": losses[-1][1] if losses else None,
            "seconds": secs, "samples_per_s": self.n_samples / secs if secs > 0 else None,
            "n_params": param_counts(self.model)["total"], "n_train": len(self.train_ds),
            "n_val": len(self.val_ds) if self.val_ds else 0, "n_missing": self.train_ds.n_missing,
            "world_size": self.world, "val": self.val_hist,
        }


def train(manifest_dir: str | Path | None, config: str | Path | Config, run_dir: str | Path, max_steps: int | None = None,
          overrides: list[str] | tuple[str, ...] = (), device: str | None = None, progress: bool | None = None,
          store: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) a ViSAudio run; returns a summary dict (``Trainer.summary``).

    The examples come from ``store`` (a feature store written by ``visaudio prepare``; streamed,
    RAM independent of the dataset size) or else from ``manifest_dir`` clip by clip (tiny CPU
    runs). Both go through the same streaming loader (visaudio/stream.py)."""
    return Trainer(manifest_dir, config, run_dir, max_steps=max_steps, overrides=overrides, device=device,
                   progress=progress, store=store).fit()


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
        tot += float(FM.flow_loss(model(FM.interpolate(x0, x1, tv), t, cond), x0, x1).mean())
    out = {"step": float(step), "val_loss": tot / len(ts)}
    k = min(n, tc.val_clips)
    if k > 0:
        sub = type(cond)(*(None if v is None else v[:k] for v in (cond.video, cond.text, cond.sync, cond.spacetime, cond.traj)))
        x = model.sample(sub, steps=tc.val_steps, cfg=cfg.generate.cfg, seed=0)
        audio = codec.decode(model.denormalize(x), cfg.window_samples).cpu().numpy()
        agr = [block_ild_sign_agreement(audio[i], items[i]["audio"].numpy(), cfg.data.sample_rate) for i in range(k)]
        agr = [a for a in agr if math.isfinite(a)]
        out["ild_sign_agreement"] = float(np.mean(agr)) if agr else float("nan")
    return out
