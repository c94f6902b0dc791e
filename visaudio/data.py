"""Dataset over a BiAudio manifest: split/QA filtering, decoding, crops, L/R swap, feature cache.

Why a cache: decoding an mp4 and resampling 48 kHz FLAC on every step would dominate a CPU run.
Each clip is decoded once to the model's rates and sizes and stored as ``.npz`` under a folder
named by a hash of the preprocessing settings; each file also records its source media's size
and mtime, so changing either the settings or the media rebuilds it.

Why the L/R swap touches three things: swapping only the audio would teach the model that the
picture says nothing about side. A mirrored picture, swapped channels and a caption with
"left"/"right" exchanged is again a physically consistent example.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from biaudio.atomic import atomic_path
from visaudio.config import Config

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Dataset problems with a clear message (empty split, unreadable manifest...)."""


class VideoTooShortError(DataError):
    pass


# ------------------------------------------------------------------------------------- manifest


def _read_manifest(path: Path) -> pd.DataFrame:
    """The manifest through biaudio's reader: v1 and v2 files alike (v1 gets ``group_id`` and
    source-video times derived), an unknown schema version is a DataError naming it."""
    from biaudio.errors import BiaudioError
    from biaudio.manifest import read_manifest_frame

    try:
        return read_manifest_frame(path)
    except BiaudioError as e:
        raise DataError(str(e)) from None


def load_manifest_split(manifest_dir: str | Path, split: str | None, qa_ok: bool = True,
                        cached: Path | None = None) -> pd.DataFrame:
    """Rows of ``manifest.parquet`` for ``split`` (None = all), without rejected clips.

    Rows whose media files are missing are skipped with a warning and counted in
    ``df.attrs["n_missing"]`` (ids in ``df.attrs["missing_ids"]``), unless ``cached`` (a
    FeatureCache folder) holds the clip's features: then the media need not be shipped (training
    on a machine that has only the cache). Raises DataError if nothing is left."""
    root = Path(manifest_dir)
    mp = root / "manifest.parquet"
    if not mp.is_file():
        raise DataError(f"no manifest.parquet in {root}")
    try:
        df = _read_manifest(mp)
    except (OSError, ValueError) as e:  # truncated or not parquet (pyarrow's errors derive from these)
        raise DataError(f"{mp} is unreadable, probably truncated ({str(e).splitlines()[0][:160]}); restore it "
                        "or rebuild the dataset with `biaudio build`") from None
    n_all = len(df)
    if split is not None:
        df = df[df["split"] == split]
    n_split = len(df)
    n_rejected = 0
    if qa_ok and "qa_status" in df.columns:
        rej = df["qa_status"].fillna("pending") == "rejected"
        n_rejected = int(rej.sum())
        df = df[~rej]
    def present(r: pd.Series) -> bool:
        if (root / r["video_path"]).is_file() and (root / r["audio_path"]).is_file():
            return True
        return cached is not None and (Path(cached) / f"{r['clip_id']}.npz").is_file()

    ok = df.apply(present, axis=1) if len(df) else pd.Series([], dtype=bool)
    missing = df.loc[~ok, "clip_id"].tolist() if len(df) else []
    if missing:
        warnings.warn(f"{len(missing)} clip(s) of split {split!r} skipped: media missing ({missing[:5]}...)", stacklevel=2)
    df = df[ok] if len(df) else df
    df = df.reset_index(drop=True)
    if df.empty:
        raise DataError(
            f"split {split!r} of {root} is empty: {n_all} rows in manifest, {n_split} in split, "
            f"{n_rejected} rejected by QA, {len(missing)} with missing media"
        )
    df.attrs.update(n_missing=len(missing), missing_ids=missing, n_rejected=n_rejected)
    return df


# ------------------------------------------------------------------------------------- decoding


def read_video_frames(path: str | Path, fps: float, width: int, height: int, start_s: float = 0.0,
                      duration_s: float | None = None) -> np.ndarray:
    """Decode RGB frames (F, H, W, 3) uint8 resampled to ``fps`` and stretched to width x height
    (stretching, not cropping, keeps every horizontal position: the side cue survives)."""
    from biaudio.errors import MediaError
    from biaudio.media.video import read_frames

    try:
        return read_frames(path, fps, (width, height), start_s, duration_s)
    except MediaError as e:
        if e.reason == "zero_length":
            raise DataError(f"no video frames decoded from {path}") from None
        raise DataError(f"cannot decode video {path}: {e.detail}") from None


def load_audio(path: str | Path, sr: int) -> np.ndarray:
    """Binaural audio (2, T) float32 at ``sr`` (row 0 = left)."""
    import soundfile as sf

    from biaudio.media.audio import resample

    x, fs = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.T
    if x.shape[0] != 2:
        raise DataError(f"{path}: expected 2 channels (binaural), found {x.shape[0]}")
    if fs != sr:
        x = resample(x, fs, sr, axis=1).astype(np.float32)
    return np.ascontiguousarray(x)


_SIDE = re.compile(r"\b(left|right)", re.IGNORECASE)


def swap_caption(caption: str | None) -> str | None:
    """Exchange 'left' and 'right' (keeping case: Left -> Right, LEFT -> RIGHT)."""
    if caption is None:
        return None

    def sub(m: re.Match) -> str:
        w = m.group(1)
        o = "right" if w.lower() == "left" else "left"
        if w.isupper():
            return o.upper()
        return o.capitalize() if w[0].isupper() else o

    return _SIDE.sub(sub, caption)


# ------------------------------------------------------------------------------------- cache


def preprocess_settings(cfg: Config) -> dict[str, Any]:
    d = cfg.data
    return {"v": 1, "sr": d.sample_rate, "sync_fps": d.sync_fps, "w": d.width, "h": d.height}


def settings_hash(cfg: Config) -> str:
    return hashlib.sha1(json.dumps(preprocess_settings(cfg), sort_keys=True).encode()).hexdigest()[:10]


class FeatureCache:
    def __init__(self, root: Path, cfg: Config):
        self.cfg = cfg
        self.dir = Path(root) / settings_hash(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.built = 0  # clips decoded (not served from cache) in this process

    @staticmethod
    def _stamp(paths: list[Path]) -> str:
        return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)

    def get(self, clip_id: str, video: Path, audio: Path) -> tuple[np.ndarray, np.ndarray]:
        f = self.dir / f"{clip_id}.npz"
        if f.is_file() and not (video.is_file() and audio.is_file()):
            z = np.load(f)  # media not shipped here (cache-only training): trust the cache
            return z["audio"], z["frames"]
        stamp = self._stamp([video, audio])
        if f.is_file():
            try:
                z = np.load(f)
                if str(z["stamp"]) == stamp:
                    return z["audio"], z["frames"]
            except Exception:  # corrupt cache file: rebuild
                pass
        d = self.cfg.data
        a = load_audio(audio, d.sample_rate)
        fr = read_video_frames(video, d.sync_fps, d.width, d.height)
        with atomic_path(f, keep_suffix=True) as tmp:  # numpy appends .npz to a name without it
            np.savez(tmp, audio=a, frames=fr, stamp=np.array(stamp))
        self.built += 1
        return a, fr


# ------------------------------------------------------------------------------------- dataset


def camera_traj_at(row: pd.Series | dict, times: np.ndarray) -> np.ndarray:
    """(len(times), 3) yaw, pitch, roll (deg) interpolated from the manifest trajectory."""
    tr = row.get("trajectory") if hasattr(row, "get") else None
    if tr is None or len(tr) == 0:
        return np.zeros((len(times), 3), np.float32)
    t = np.array([p["t"] for p in tr], float)
    out = []
    for k in ("yaw", "pitch", "roll"):
        v = np.rad2deg(np.unwrap(np.deg2rad([p[k] for p in tr])))
        out.append(np.interp(times, t, v))
    return np.stack(out, -1).astype(np.float32)


class ManifestDataset(torch.utils.data.Dataset):
    """Clips of one split. ``ds[i]`` is the deterministic window at the clip start;
    ``ds.item(i, rng)`` applies the random crop and L/R swap when ``augment``."""

    def __init__(self, manifest_dir: str | Path, split: str, config: Config, augment: bool = False,
                 cache_dir: str | Path | None = None):
        self.root = Path(manifest_dir)
        self.cfg = config
        self.split = split
        self.augment = augment
        croot = cache_dir or config.data.cache_dir or (self.root / ".cache" / "visaudio")
        self.cache = FeatureCache(Path(croot), config)
        self.df = load_manifest_split(self.root, split, qa_ok=config.data.qa_ok, cached=self.cache.dir)
        self.n_missing = int(self.df.attrs.get("n_missing", 0))
        self._mem: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.df)

    @property
    def clip_ids(self) -> list[str]:
        return self.df["clip_id"].tolist()

    def media(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Full decoded clip: audio (2, T) at the model rate, frames (Fs, H, W, 3) at sync_fps."""
        r = self.df.iloc[idx]
        cid = r["clip_id"]
        if cid not in self._mem:
            self._mem[cid] = self.cache.get(cid, self.root / r["video_path"], self.root / r["audio_path"])
        return self._mem[cid]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.item(idx, None)

    def item(self, idx: int, rng: np.random.Generator | None) -> dict[str, Any]:
        audio, frames = self.media(idx)
        from biaudio.manifest import ClipRow

        # one row at a time through the typed row: pandas' NaN for a missing caption reads as None
        row = ClipRow.from_dict(self.df.iloc[idx].to_dict(), strict=False)
        meta = {"clip_id": row.clip_id, "caption": row.caption, "trajectory": row.trajectory}
        return make_item(self.cfg, audio, frames, meta, idx, rng, self.augment)

    # the streaming loader's view (visaudio.stream): one clip per "shard", so the shard order is a
    # plain permutation of the clips
    @property
    def shard_sizes(self) -> list[int]:
        return [1] * len(self)

    def item_at(self, shard: int, offset: int, rng: np.random.Generator | None) -> dict[str, Any]:
        return self.item(shard, rng)

    def audio_at(self, shard: int, offset: int) -> np.ndarray:
        return self.media(shard)[0]


def make_item(cfg: Config, audio: np.ndarray, frames: np.ndarray, meta: dict[str, Any], idx: int,
              rng: np.random.Generator | None, augment: bool, features: dict[str, np.ndarray] | None = None,
              rates: dict[str, float | None] | None = None) -> dict[str, Any]:
    """One training example from a whole decoded clip: the window (random start when ``augment``
    and ``rng``), the L/R swap, mono folding, camera trajectory. Shared by the per-clip dataset
    and the feature store, so both sources give the same example for the same draws. With a
    swap, stored ``mirror/`` features replace the plain ones (frozen parts' features of the
    mirrored example, which cannot be derived by flipping). Whole-clip features with a time rate
    in ``rates`` are cropped to the same window."""
    d = cfg.data
    k = int(round(d.sync_fps / d.fps))
    n_patch_total = frames.shape[0] // k
    start_f = 0
    if rng is not None and augment and n_patch_total > cfg.n_frames:
        start_f = int(rng.integers(0, n_patch_total - cfg.n_frames + 1))
    start_s = start_f / d.fps
    s0 = int(round(start_s * d.sample_rate))
    a = audio[:, s0 : s0 + cfg.window_samples]
    if a.shape[1] < cfg.window_samples:
        a = np.pad(a, ((0, 0), (0, cfg.window_samples - a.shape[1])))
    fr = frames[start_f * k : start_f * k + cfg.n_sync_frames]
    if fr.shape[0] < cfg.n_sync_frames:
        fr = np.concatenate([fr, np.repeat(fr[-1:], cfg.n_sync_frames - fr.shape[0], 0)])
    caption = meta.get("caption")
    swapped = bool(rng is not None and augment and rng.random() < d.swap_prob)
    if d.channels == "mono":
        a = np.repeat(a.mean(0, keepdims=True), 2, 0)
    traj = camera_traj_at(meta, start_s + np.arange(cfg.n_latents) * cfg.codec.hop / d.sample_rate)
    if swapped:
        a = a[::-1]
        fr = fr[:, :, ::-1]
        caption = swap_caption(caption)
        traj = traj * np.array([-1.0, 1.0, -1.0], np.float32)  # mirrored world: yaw and roll flip
    out = {
        "clip_id": str(meta["clip_id"]),
        "index": idx,
        "audio": torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)),
        "frames": torch.from_numpy(np.ascontiguousarray(fr)),
        "caption": caption,
        "start_s": start_s,
        "swapped": swapped,
        "traj": torch.from_numpy(traj),
    }
    if features:
        if rates:
            from visaudio.pretrained import crop_features

            features = crop_features(features, rates, start_s, d.clip_seconds)
        pick = {k[len("mirror/"):]: v for k, v in features.items() if k.startswith("mirror/")} if swapped else \
            {k: v for k, v in features.items() if not k.startswith("mirror/")}
        out["features"] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pick.items()}
    return out


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out = {
        "clip_id": [x["clip_id"] for x in items],
        "audio": torch.stack([x["audio"] for x in items]),
        "frames": torch.stack([x["frames"] for x in items]),
        "caption": [x["caption"] for x in items],
        "traj": torch.stack([x["traj"] for x in items]),
        "swapped": [x["swapped"] for x in items],
    }
    if items and all("features" in x for x in items):
        out["features"] = {k: torch.stack([x["features"][k] for x in items]) for k in items[0]["features"]}
    return out
