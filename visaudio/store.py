"""Sharded feature store: ``visaudio prepare`` decodes each clip once into fixed-size tar shards.

Why tar shards (the WebDataset layout: ``000003.audio.npy``, ``000003.frames.npy``,
``000003.meta.json`` per sample) and not one file per clip or a parquet table: a shard is one
sequential file, so a network file system serves it at streaming speed and a run over 97K clips
opens a few hundred files instead of 97K; any tar tool (or the ``webdataset`` package) reads it;
and numpy arrays stay uncompressed ``.npy``, so reading a sample is a seek plus a copy, no codec.
Each shard has a JSON sidecar that lists its samples with the byte offset of every member, which
gives O(1) random access: exact resume is "shard k, sample i", not a replay of the epoch.

Why the folder is keyed by the preprocessing settings (sample rate, fps, picture size) and the
fingerprints of the frozen parts: a store is only valid for the config that wrote it, and a
second config writes beside it instead of over it. A config mismatch is found by key, and the
error says which settings differ.

Why resumable per shard: a shard is written to a temporary name and renamed, then its sidecar
is written the same way; a shard is done exactly when its sidecar exists and the tar has the
size the sidecar records. Killing ``prepare`` loses at most the shards in flight; running it
again skips the finished ones. Shards are split across torchrun ranks (``RANK``/``WORLD_SIZE``)
and local processes by shard number, so no two workers write the same shard.

The mirrored picture (L/R-swap augmentation): for the from-scratch encoders the store keeps the
decoded uint8 frames, and flipping them is exact, so the mirror is computed when a sample is
read. A frozen part's features cannot be flipped afterwards, so ``encode`` is called a second
time on the mirrored example (flipped frames, swapped channels, swapped caption) and stored under
keys prefixed ``mirror/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import tarfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biaudio import atomic
from visaudio.config import Config, load_config
from visaudio.data import (
    DataError,
    load_audio,
    load_manifest_split,
    preprocess_settings,
    read_video_frames,
    swap_caption,
)

STORE_VERSION = 1
STORE_META = "store.json"


class StoreError(DataError):
    """A store that cannot be used (missing, incomplete, damaged, written for another config)."""


# ------------------------------------------------------------------------------------- frozen parts


def load_frozen_parts(cfg: Config, device: str = "cpu") -> list[Any]:
    """The config's frozen parts (pretrained encoders, learned codec); [] for from-scratch configs."""
    from visaudio import pretrained

    return list(pretrained.frozen_parts(cfg, device))


def store_settings(cfg: Config, parts: list[Any] | None = None) -> dict[str, Any]:
    """Everything that decides a store's content: the decode settings plus each frozen part's
    fingerprint (its checkpoint files and settings)."""
    return {"store_version": STORE_VERSION, "decode": preprocess_settings(cfg),
            "parts": {p.name: p.fingerprint for p in (parts or [])}}


def store_key(settings: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _store_dtype(key: str, v: np.ndarray) -> np.ndarray:
    """Encoder features are kept as float16 (half the disk; the model casts them back); codec
    latents stay float32, they are the flow's regression target."""
    if v.dtype.kind == "f" and key.rsplit("/", 1)[-1] != "latents":
        return v.astype(np.float16)
    return v


def _npy_bytes(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, np.ascontiguousarray(a), allow_pickle=False)
    return b.getvalue()


def _feat_member(key: str) -> str:
    return "f." + urllib.parse.quote(key, safe="") + ".npy"


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


# ------------------------------------------------------------------------------------- prepare


@dataclass
class _ShardJob:
    key_dir: str
    split: str
    shard: int
    manifest_dir: str
    rows: list[dict[str, Any]]
    config: dict[str, Any]
    device: str


def _clip_meta(row: dict[str, Any]) -> dict[str, Any]:
    cap = row.get("caption")
    if cap is not None and isinstance(cap, float) and math.isnan(cap):
        cap = None
    tr = row.get("trajectory")
    traj = None if tr is None or len(tr) == 0 else [{k: float(p[k]) for k in ("t", "yaw", "pitch", "roll")} for p in tr]
    return {"clip_id": str(row["clip_id"]), "caption": None if cap is None else str(cap), "trajectory": traj,
            "video_path": str(row["video_path"]), "audio_path": str(row["audio_path"])}


_PARTS_CACHE: dict[str, list[Any]] = {}


def _write_shard(job: _ShardJob, parts: list[Any] | None = None) -> dict[str, Any]:
    """Decode the job's clips, run the frozen parts, write shard tar + sidecar. A clip that fails
    is listed under "failed" with its reason; the shard is written with the others."""
    cfg = load_config(job.config)
    d = cfg.data
    if parts is None:  # a pool process: load the parts once per process, not per shard
        ck = json.dumps(job.config, sort_keys=True) + job.device
        if ck not in _PARTS_CACHE:
            _PARTS_CACHE.clear()
            _PARTS_CACHE[ck] = load_frozen_parts(cfg, job.device)
        parts = _PARTS_CACHE[ck]
    root = Path(job.manifest_dir)
    out_dir = Path(job.key_dir) / job.split
    failed: list[dict[str, str]] = []

    def decoded():
        for row in job.rows:
            meta = _clip_meta(row)
            try:
                audio = load_audio(root / meta["audio_path"], d.sample_rate)
                frames = read_video_frames(root / meta["video_path"], d.sync_fps, d.width, d.height)
                feats: dict[str, np.ndarray] = {}
                for p in parts:
                    feats.update({k: np.asarray(v) for k, v in p.encode(frames, audio, meta["caption"]).items()})
                    mir = p.encode(np.ascontiguousarray(frames[:, :, ::-1]), np.ascontiguousarray(audio[::-1]),
                                   swap_caption(meta["caption"]))
                    feats.update({f"mirror/{k}": np.asarray(v) for k, v in mir.items()})
            except (DataError, OSError, RuntimeError, ValueError) as e:
                failed.append({"clip_id": meta["clip_id"], "error": str(e).splitlines()[0][:300] if str(e) else
                               type(e).__name__})
                print(f"warning: prepare: clip {meta['clip_id']} skipped: {failed[-1]['error']}", file=sys.stderr)
                continue
            yield audio, frames, meta, {k: _store_dtype(k, v) for k, v in feats.items()}

    return write_shard(out_dir, job.split, job.shard, decoded(), failed, [str(r["clip_id"]) for r in job.rows])


def write_shard(out_dir: Path, split: str, shard: int, samples_in, failed: list[dict[str, str]] | None = None,
                clip_ids: list[str] | None = None) -> dict[str, Any]:
    """Write ``samples_in`` (an iterable of (audio, frames, meta, features)) as shard ``shard``:
    the tar under a temporary name, renamed, then its sidecar (the "done" mark), also renamed."""
    failed = [] if failed is None else failed
    name = f"shard-{shard:06d}"
    tar_path = out_dir / f"{name}.tar"
    samples: list[dict[str, Any]] = []
    t0 = time.time()
    with atomic.atomic_path(tar_path, fsync=True) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for audio, frames, meta, feats in samples_in:
                key = f"{len(samples):06d}"
                members = {"audio": _npy_bytes(audio.astype(np.float32)), "frames": _npy_bytes(frames),
                           "meta": json.dumps(meta).encode()}
                members.update({_feat_member(k)[:-4]: _npy_bytes(v) for k, v in feats.items()})
                entry: dict[str, Any] = {"clip_id": meta["clip_id"], "members": {},
                                         "n_audio": int(audio.shape[1]), "n_frames": int(frames.shape[0])}
                for mname, data in members.items():
                    ext = "json" if mname == "meta" else "npy"
                    ti = tarfile.TarInfo(f"{key}.{mname}.{ext}")
                    ti.size = len(data)
                    ti.mtime = 0
                    start = tf.offset
                    tf.addfile(ti, io.BytesIO(data))
                    header = tf.offset - start - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                    entry["members"][mname] = [int(start + header), len(data)]
                samples.append(entry)
        size = tmp.stat().st_size
    side = {"shard": shard, "split": split, "n": len(samples), "bytes": size, "samples": samples,
            "failed": failed, "seconds": time.time() - t0,
            "clip_ids": clip_ids if clip_ids is not None else [e["clip_id"] for e in samples]}
    atomic.write_bytes(out_dir / f"{name}.json", json.dumps(side).encode(), fsync=True)
    return {"shard": shard, "split": split, "n": len(samples), "failed": failed, "bytes": size}


def _shard_done(out_dir: Path, k: int) -> bool:
    side = out_dir / f"shard-{k:06d}.json"
    tar = out_dir / f"shard-{k:06d}.tar"
    if not side.is_file() or not tar.is_file():
        return False
    try:
        return int(json.loads(side.read_text())["bytes"]) == tar.stat().st_size
    except (ValueError, KeyError, OSError):
        return False


def _plan_split(manifest_dir: str | Path, split: str, cfg: Config, kdir: Path, shard_size: int, rank: int,
                world: int, device: str, say) -> tuple[list[_ShardJob], dict[str, int]] | None:
    """This rank's unfinished shard jobs of ``split`` and the split's summary entry; None when a
    split other than train is empty (skipped with a message).

    The clip list is fixed the first time (``<split>/plan.json``); a later run with a manifest
    whose clip list changed is refused rather than silently mixing two datasets."""
    try:
        df = load_manifest_split(manifest_dir, split, qa_ok=cfg.data.qa_ok)
    except DataError as e:
        if "is empty" in str(e) and split != "train":
            say(f"prepare: split {split!r} skipped ({e})")
            return None
        raise
    df = df.sort_values("clip_id").reset_index(drop=True)
    ids = df["clip_id"].astype(str).tolist()
    sdir = kdir / split
    sdir.mkdir(exist_ok=True)
    plan_path = sdir / "plan.json"
    plan = {"clip_ids": ids, "shard_size": shard_size}
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())
        if old["clip_ids"] != ids or old["shard_size"] != shard_size:
            raise StoreError(
                f"store {kdir} split {split!r} was planned for {len(old['clip_ids'])} clips in shards of "
                f"{old['shard_size']}; the manifest now gives {len(ids)} clips (shards of {shard_size}). "
                "Prepare into a new --out folder (the existing store is left as it is)")
    else:
        atomic.write_bytes(plan_path, json.dumps(plan).encode(), fsync=True)
    n_shards = math.ceil(len(ids) / shard_size)
    records = df.to_dict("records")
    todo, done = [], 0
    for k in range(n_shards):
        if k % world != rank:
            continue
        if _shard_done(sdir, k):
            done += 1
            continue
        todo.append(_ShardJob(str(kdir), split, k, str(manifest_dir), records[k * shard_size:(k + 1) * shard_size],
                              cfg.model_dump(), device))
    return todo, {"clips": len(ids), "shards": n_shards, "skipped_done": done, "written": len(todo)}


def _write_shards(jobs: list[_ShardJob], parts: list[Any], workers: int, say) -> list[dict[str, Any]]:
    """Write the shard jobs here (the frozen ``parts`` already loaded) or over ``workers`` spawned
    processes (each loads its own); one message per shard written."""
    results: list[dict[str, Any]] = []
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            results.append(_write_shard(j, parts))
            say(f"prepare: {j.split} shard {j.shard} written ({results[-1]['n']} clips)")
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for r in pool.imap_unordered(_write_shard, jobs):
                results.append(r)
                say(f"prepare: {r['split']} shard {r['shard']} written ({r['n']} clips)")
    return results


def prepare(manifest_dir: str | Path, config: str | Path | Config, out: str | Path, overrides: list[str] | tuple[str, ...] = (),
            splits: tuple[str, ...] = ("train", "val"), shard_size: int = 64, workers: int = 1, device: str = "cpu",
            rank: int | None = None, world: int | None = None, log=None) -> dict[str, Any]:
    """Write (or complete) the store for ``config`` under ``out/<key>/``; returns a summary.

    Each split's clip list is fixed the first time (see ``_plan_split``). Shards are taken by
    rank ``k % world == rank`` (torchrun env when not given), then spread over ``workers`` local
    processes."""
    cfg = load_config(config, overrides)
    if shard_size < 1:
        raise StoreError(f"shard size must be >= 1, got {shard_size}")
    if rank is None:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    world = world or 1
    say = log or (lambda m: print(m, file=sys.stderr))
    parts = load_frozen_parts(cfg, device)
    settings = store_settings(cfg, parts)
    key = store_key(settings)
    kdir = Path(out) / key
    kdir.mkdir(parents=True, exist_ok=True)
    meta_path = kdir / STORE_META
    meta = {"store_version": STORE_VERSION, "key": key, "settings": settings, "config": cfg.model_dump(),
            "manifest": str(Path(manifest_dir).resolve()),  # identical on every rank
            "rates": {k: r for p in parts for k, r in getattr(p, "rates", {}).items()}}
    if not meta_path.is_file():  # every rank may write it: same content, atomic rename
        atomic.write_bytes(meta_path, json.dumps(meta, indent=1).encode(), fsync=True)
    jobs: list[_ShardJob] = []
    summary: dict[str, Any] = {"store": str(kdir), "key": key, "splits": {}, "rank": rank, "world": world}
    for split in splits:
        planned = _plan_split(manifest_dir, split, cfg, kdir, shard_size, rank, world, device, say)
        if planned is not None:
            jobs += planned[0]
            summary["splits"][split] = planned[1]
    t0 = time.time()
    results = _write_shards(jobs, parts, workers, say)
    secs = time.time() - t0
    n = sum(r["n"] for r in results)
    summary.update(clips_written=n, failed=[f for r in results for f in r["failed"]], seconds=secs,
                   clips_per_s=n / secs if secs > 0 and n else None, bytes=sum(r["bytes"] for r in results),
                   complete=all(_shard_done(kdir / s, k) for s, v in summary["splits"].items()
                                for k in range(v["shards"])))
    return summary


# ------------------------------------------------------------------------------------- reading


def find_store(store: str | Path, cfg: Config, parts: list[Any] | None = None) -> Path:
    """The key folder of ``store`` that fits ``cfg``; StoreError naming the differing settings
    when the store was prepared for another config. ``store`` may be the key folder itself."""
    store = Path(store)
    if parts is None:
        parts = load_frozen_parts(cfg)
    settings = store_settings(cfg, parts)
    key = store_key(settings)
    if (store / STORE_META).is_file():
        have = json.loads((store / STORE_META).read_text())
        if have.get("key") != key:
            raise StoreError(f"store {store} was prepared for other settings: {_settings_diff(have['settings'], settings)}; "
                             "run `visaudio prepare` with this config")
        return store
    if (store / key / STORE_META).is_file():
        return store / key
    if not store.is_dir():
        raise StoreError(f"no feature store at {store}; write one with `visaudio prepare --manifest M --config C --out {store}`")
    others = sorted(p for p in store.iterdir() if (p / STORE_META).is_file())
    if not others:
        raise StoreError(f"{store} holds no feature store; write one with `visaudio prepare --out {store}`")
    diffs = [f"{p.name}: {_settings_diff(json.loads((p / STORE_META).read_text())['settings'], settings)}" for p in others]
    raise StoreError(f"store {store} has no shards for this config (key {key}); it holds {'; '.join(diffs)[:600]}. "
                     "Run `visaudio prepare` with this config")


def _settings_diff(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            s = _settings_diff(va, vb, f"{prefix}{k}.")
            if s:
                out.append(s)
        elif va != vb:
            out.append(f"{prefix}{k} {va!r} (store) != {vb!r} (config)")
    return ", ".join(out)


class StoreReader:
    """Random access to the samples of one split of a store (see the module docstring).

    Holds only the sidecar indexes (a few hundred bytes per sample), never decoded data, so its
    memory does not grow with what has been read. File handles are opened per process (safe in
    DataLoader workers)."""

    def __init__(self, key_dir: str | Path, split: str):
        self.dir = Path(key_dir) / split
        self.key_dir = Path(key_dir)
        self.split = split
        plan_path = self.dir / "plan.json"
        if not plan_path.is_file():
            raise StoreError(f"store {key_dir} has no split {split!r} (no {plan_path.name}); run `visaudio prepare`")
        plan = json.loads(plan_path.read_text())
        n_shards = math.ceil(len(plan["clip_ids"]) / plan["shard_size"])
        missing = [k for k in range(n_shards) if not _shard_done(self.dir, k)]
        if missing:
            raise StoreError(f"store {key_dir} split {split!r} is incomplete: {len(missing)} of {n_shards} shard(s) "
                             f"missing or damaged (first: shard-{missing[0]:06d}); run the same `visaudio prepare` "
                             "command again to finish it")
        # compact index: per shard the member names, an (n, members, 2) int64 array of byte
        # offsets and sizes, and the clip ids; ~100 bytes per sample, not a dict per member
        self._members: list[tuple[str, ...]] = []
        self._off: list[np.ndarray] = []
        self._ids: list[list[str]] = []
        self.failed: list[dict[str, str]] = []
        for k in range(n_shards):
            side = json.loads((self.dir / f"shard-{k:06d}.json").read_text())
            names = tuple(sorted({m for e in side["samples"] for m in e["members"]}))
            off = np.full((len(side["samples"]), len(names), 2), -1, np.int64)
            for i, e in enumerate(side["samples"]):
                for j, m in enumerate(names):
                    if m in e["members"]:
                        off[i, j] = e["members"][m]
            self._members.append(names)
            self._off.append(off)
            self._ids.append([e["clip_id"] for e in side["samples"]])
            self.failed += side["failed"]
            del side
        self.shard_sizes = [len(x) for x in self._ids]
        if sum(self.shard_sizes) == 0:
            raise StoreError(f"store {key_dir} split {split!r} holds no samples ({len(self.failed)} clip(s) failed "
                             "to decode while preparing)")
        self._fh: dict[int, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        st = self.__dict__.copy()
        st["_fh"] = {}
        return st

    def __len__(self) -> int:
        return sum(self.shard_sizes)

    def _read(self, k: int, i: int, member: str) -> bytes:
        if self._pid != os.getpid():
            self._fh, self._pid = {}, os.getpid()
        f = self._fh.get(k)
        if f is None:
            f = self._fh[k] = open(self.dir / f"shard-{k:06d}.tar", "rb")
        names = self._members[k]
        off, size = (int(x) for x in self._off[k][i, names.index(member)]) if member in names else (-1, -1)
        if off < 0:
            raise StoreError(f"bad shard {self.dir / f'shard-{k:06d}.tar'}: sample {i} has no {member!r}; delete the "
                             "shard and its .json and run `visaudio prepare` again")
        f.seek(off)
        data = f.read(size)
        if len(data) != size:
            raise StoreError(f"bad shard {self.dir / f'shard-{k:06d}.tar'}: sample {i} ({member}) is cut short; "
                             "delete the shard and its .json and run `visaudio prepare` again")
        return data

    def _array(self, k: int, i: int, member: str) -> np.ndarray:
        data = self._read(k, i, member)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError) as e:
            raise StoreError(f"bad shard {self.dir / f'shard-{k:06d}.tar'}: sample {i} ({member}) is unreadable "
                             f"({str(e)[:120]}); delete the shard and its .json and run `visaudio prepare` "
                             "again") from None

    def clip_id(self, k: int, i: int) -> str:
        return self._ids[k][i]

    @property
    def clip_ids(self) -> list[str]:
        return [c for ids in self._ids for c in ids]

    def audio(self, k: int, i: int) -> np.ndarray:
        return self._array(k, i, "audio")

    def sample(self, k: int, i: int) -> dict[str, Any]:
        """audio (2, N) float32, frames (F, H, W, 3) uint8 at sync_fps, meta, features."""
        try:
            meta = json.loads(self._read(k, i, "meta"))
        except ValueError:
            raise StoreError(f"bad shard {self.dir / f'shard-{k:06d}.tar'}: sample {i} metadata is unreadable; "
                             "delete the shard and its .json and run `visaudio prepare` again") from None
        feats = {urllib.parse.unquote(m[2:]): self._array(k, i, m) for m in self._members[k]
                 if m.startswith("f.") and self._off[k][i, self._members[k].index(m), 0] >= 0}
        return {"audio": self._array(k, i, "audio"), "frames": self._array(k, i, "frames"), "meta": meta,
                "features": feats}

    def locate(self, flat: int) -> tuple[int, int]:
        """(shard, offset) of the flat sample index (shards in order)."""
        for k, n in enumerate(self.shard_sizes):
            if flat < n:
                return k, flat
            flat -= n
        raise IndexError(flat)
