"""The evaluation run: manifest split -> every system's audio (cached) -> per-clip metrics ->
bootstrap summary -> HTML report.

Why a cache: generation is the only slow part (a flow model, ``steps`` network evaluations per
clip); metrics take a fraction of a second per clip. Outputs are keyed by system, checkpoint
(resolved path + the checkpoint files' sizes and mtimes), steps, cfg and seed, so a rerun with the
same settings decodes files instead of generating, and changing any of them cannot reuse stale
audio.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from biaudio import atomic
from biaudio.atomic import atomic_path
from biaudio.manifest import ClipRow, write_frame
from visaudio.eval import baselines as B
from visaudio.eval import metrics as M

log = logging.getLogger(__name__)

KEY_METRICS = ["lat_corr_ref", "lat_corr_az", "ild_sign_agreement", "motion_consistency"]
SET_METRICS = ["fd_logmel"]


class EvalError(RuntimeError):
    """A user-facing failure (bad manifest, empty split, missing checkpoint); the CLI exits 1."""


@dataclass
class EvalConfig:
    manifest_dir: Path
    report_dir: Path
    split: str = "test"
    ckpt: Path | None = None
    mono_ckpt: Path | None = None
    systems: list[str] = field(default_factory=list)
    steps: int = 25
    cfg: float = 4.5
    seed: int = 0
    # ViSAudio's side-noise temperature (generate.side_noise); None: the run's own. The mono
    # model (two-stage baselines) always samples as trained.
    side_noise: float | None = None
    limit: int | None = None
    device: str = "cpu"
    n_boot: int = 2000
    n_boot_set: int = 200
    n_audio_clips: int = 3
    settings: M.EvalSettings = field(default_factory=M.EvalSettings)
    # Generated audio lives in REPORT/cache unless this names another folder. Reports of the same
    # manifest may share one (keys name the checkpoint fingerprint, steps, cfg and seed), so
    # baselines that several evaluations have in common are generated once. Not across builds:
    # files are named by clip id, and ids repeat across builds (every synthetic draw has
    # scene_0000_0), so a cache records which build each clip id came from and refuses another.
    cache_dir: Path | None = None


def default_systems(ckpt: Path | None, mono_ckpt: Path | None) -> list[str]:
    out = []
    if ckpt is not None:
        out.append("visaudio")
    if mono_ckpt is not None:
        out += ["mono", *B.TWO_STAGE_SYSTEMS]
    return out + ["reference", "swapped-reference", "mono-duplicated-reference"]


def resolve_systems(baselines: str | None, ckpt: Path | None, mono_ckpt: Path | None) -> list[str]:
    """``--baselines`` text -> the ordered system list (``visaudio`` first when ``--ckpt``)."""
    if baselines is None:
        return default_systems(ckpt, mono_ckpt)
    names = [b.strip() for b in baselines.split(",") if b.strip()]
    unknown = [n for n in names if n not in B.ALL_SYSTEMS]
    if unknown:
        raise EvalError(f"unknown baseline(s) {unknown}; known: {', '.join(B.ALL_SYSTEMS[1:])}")
    if {"mono", *B.TWO_STAGE_SYSTEMS} & set(names) and mono_ckpt is None:
        raise EvalError("baselines 'mono', 'two-stage' and 'two-stage-sync' need --mono-ckpt (a run trained with "
                        "data.channels=mono)")
    out = ["visaudio"] if ckpt is not None else []
    return out + [n for n in B.ALL_SYSTEMS if n in names and n != "visaudio"]


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def load_split(manifest_dir: Path, split: str, need_model: bool = True) -> pd.DataFrame:
    """The split's usable clips (not QA-rejected, media present).

    With model systems the model's own loader decides (the same clips it trains/validates on);
    without them the same rule is applied with pandas alone, so evaluating references never pays
    for importing torch.
    """
    manifest_dir = Path(manifest_dir)
    if not (manifest_dir / "manifest.parquet").is_file():
        raise EvalError(f"{manifest_dir}/manifest.parquet not found")
    df = None
    if need_model:
        try:
            from visaudio.data import load_manifest_split
        except ImportError:
            load_manifest_split = None
        if load_manifest_split is not None:
            try:
                df = load_manifest_split(manifest_dir, split, qa_ok=True)
            except ValueError as e:  # visaudio.data.DataError
                raise EvalError(f"no usable clips: {e}") from None
    if df is None:
        from biaudio.errors import BiaudioError
        from biaudio.manifest import read_manifest_frame

        try:  # v1 and v2 alike (v1: group_id derived on read)
            df = read_manifest_frame(manifest_dir)
        except BiaudioError as e:
            raise EvalError(f"unreadable manifest: {e}") from None
        df = df[df["split"] == split]
        if "qa_status" in df.columns:
            df = df[df["qa_status"].fillna("pending") != "rejected"]
        ok = [(manifest_dir / v).is_file() and (manifest_dir / a).is_file()
              for v, a in zip(df["video_path"], df["audio_path"], strict=True)]
        if not all(ok):
            log.warning("%d clip(s) of split %r skipped: media missing", len(ok) - sum(ok), split)
        df = df[np.asarray(ok, dtype=bool)] if len(df) else df
    if len(df) == 0:
        raise EvalError(f"split {split!r} of {manifest_dir} has no usable clips")
    return df.sort_values("clip_id").reset_index(drop=True)


def _records(v) -> list[dict]:
    if v is None:
        return []
    if isinstance(v, float) and math.isnan(v):
        return []
    return [dict(r) for r in list(v)]


def clip_geometry(row: ClipRow, times: np.ndarray) -> dict[str, np.ndarray]:
    """Camera yaw, source world azimuth and camera-frame azimuth at ``times`` (clip seconds).

    The dominant source direction comes from ``window_directions`` (world frame) and the camera
    pose from ``trajectory``; both are interpolated (unwrapped, so nothing jumps across +-180)
    to the ILD frame times, then rotated into the camera by ``world_to_camera_dir``.
    """
    from biaudio.spatial.angles import unwrap_deg, world_to_camera_dir, wrap_deg

    traj = _records(row.trajectory)
    wd = _records(row.window_directions)
    n = len(times)
    nan = np.full(n, np.nan)
    if not traj or not wd:
        return {"yaw": nan, "az_world": nan, "az_cam": nan, "lateral": nan}
    tt = np.array([r["t"] for r in traj], dtype=float)
    tw = np.array([r["t"] for r in wd], dtype=float)
    dur = float(row.duration_s or (tt.max() if len(tt) else 0.0))
    start = float(row.start_s or 0.0)
    # accept source-relative times too: shift if they lie beyond the clip
    if len(tt) and tt.min() > dur and start > 0:
        tt = tt - start
    if len(tw) and tw.min() > dur and start > 0:
        tw = tw - start
    yaw = np.interp(times, tt, unwrap_deg([r["yaw"] for r in traj]))
    pitch = np.interp(times, tt, [r.get("pitch", 0.0) for r in traj])
    roll = np.interp(times, tt, [r.get("roll", 0.0) for r in traj])
    az_w = np.interp(times, tw, unwrap_deg([r["azimuth_deg"] for r in wd]))
    el_w = np.interp(times, tw, [r["elevation_deg"] for r in wd])
    az_c, _ = world_to_camera_dir(az_w, el_w, yaw, pitch, roll)
    return {"yaw": yaw, "az_world": wrap_deg(az_w), "az_cam": az_c, "lateral": np.sin(np.deg2rad(az_c))}


def load_reference(manifest_dir: Path, row: ClipRow) -> tuple[np.ndarray, int]:
    import soundfile as sf

    x, sr = sf.read(str(Path(manifest_dir) / row.audio_path), dtype="float32", always_2d=True)
    return x.T.copy(), int(sr)


# --------------------------------------------------------------------------------------------
# Systems with a cache
# --------------------------------------------------------------------------------------------


def _ckpt_fingerprint(run_dir: Path) -> str:
    run_dir = Path(run_dir).resolve()
    parts = [str(run_dir)]
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and p.suffix in {".pt", ".pth", ".safetensors", ".yaml", ".json", ".ckpt"}:
            st = p.stat()
            parts.append(f"{p.relative_to(run_dir)}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


class SystemSource:
    """Produces (and caches) each model system's audio for a clip."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir is not None else Path(cfg.report_dir) / "cache"
        self._synth: dict[str, object] = {}
        self._spatialiser: B.Spatialiser | None = None
        self.notes: dict[str, str] = {}

    def claim(self, df: pd.DataFrame) -> None:
        """Record, in CACHE/builds.json, the build (manifest ``recipe_hash``) of every clip id about
        to be evaluated; refuse the run if the cache already holds that clip id from another build,
        whose cached audio would otherwise be reused as this clip's. Manifests without recipe
        hashes are not checked."""
        if "recipe_hash" not in df.columns:
            return
        now = {str(c): str(h) for c, h in zip(df["clip_id"], df["recipe_hash"], strict=True) if isinstance(h, str) and h}
        mark = self.cache / "builds.json"
        held = json.loads(mark.read_text()) if mark.is_file() else {}
        clash = sorted(c for c, h in now.items() if held.get(c, h) != h)
        if clash:
            raise EvalError(f"cache {self.cache} holds audio of clip {clash[0]} (and {len(clash) - 1} more) from "
                            f"another build (recipe hash {held[clash[0]]}, this manifest's is {now[clash[0]]}); "
                            "clip ids repeat across builds: give this build its own cache folder (EvalConfig.cache_dir)")
        if now.keys() - held.keys():
            self.cache.mkdir(parents=True, exist_ok=True)
            atomic.write_text(mark, json.dumps(held | now, indent=0, sort_keys=True))

    def _key(self, which: str) -> str:
        run = self.cfg.ckpt if which == "visaudio" else self.cfg.mono_ckpt
        fp = _ckpt_fingerprint(run)
        key = f"{which}-{fp}-s{self.cfg.steps}-c{self.cfg.cfg:g}-seed{self.cfg.seed}"
        if which == "visaudio" and self.cfg.side_noise is not None:
            key += f"-sn{self.cfg.side_noise:g}"
        return key

    def _synthesizer(self, which: str):
        if which not in self._synth:
            from visaudio.generate import Synthesizer

            run = self.cfg.ckpt if which == "visaudio" else self.cfg.mono_ckpt
            if run is None or not Path(run).exists():
                raise EvalError(f"checkpoint run dir for {which!r} not found: {run}")
            from visaudio.checkpoint import CheckpointError
            from visaudio.config import ConfigError

            try:
                self._synth[which] = Synthesizer.from_run(run, device=self.cfg.device, use_ema=True)
            except (CheckpointError, ConfigError, FileNotFoundError) as e:
                flag = "--ckpt" if which == "visaudio" else "--mono-ckpt"
                raise EvalError(f"{flag}: {e}") from None
        return self._synth[which]

    def generated(self, which: str, row: ClipRow) -> tuple[np.ndarray, int]:
        """``which`` in {visaudio, mono}: the model's output for the clip (from cache when there)."""
        import soundfile as sf

        path = self.cache / self._key(which) / f"{row.clip_id}.wav"
        if path.is_file():
            x, sr = sf.read(str(path), dtype="float32", always_2d=True)
            return x.T.copy(), int(sr)
        syn = self._synthesizer(which)
        video = Path(self.cfg.manifest_dir) / row.video_path
        caption = row.caption
        audio, sr = syn.generate(str(video), caption=caption, steps=self.cfg.steps, cfg=self.cfg.cfg,
                                 seed=self.cfg.seed, start_s=0.0,
                                 side_noise=self.cfg.side_noise if which == "visaudio" else None)
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2 or audio.shape[0] != 2:
            raise EvalError(f"{which} generated shape {audio.shape}, expected (2, T)")
        if not np.isfinite(audio).all():
            raise EvalError(f"{which} generated non-finite audio for {row.clip_id}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, keep_suffix=True) as tmp:  # soundfile picks the format by the suffix
            sf.write(str(tmp), audio.T, sr, subtype="FLOAT")
        return audio, int(sr)

    def video_direction(self, row: ClipRow, duration_s: float) -> B.VideoDirection:
        path = self.cache / "video-direction" / f"{row.clip_id}.npz"
        if path.is_file():
            z = np.load(path)
            return B.VideoDirection(z["t"], z["azimuth_deg"], z["column"], int(z["width"]))
        hfov = float(row.hfov_deg or 90.0)
        d = B.estimate_video_azimuth(Path(self.cfg.manifest_dir) / row.video_path, hfov, duration_s)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, t=d.t, azimuth_deg=d.azimuth_deg, column=d.column, width=d.width)
        return d

    def get(self, system: str, row: ClipRow, ref: np.ndarray, ref_sr: int) -> tuple[np.ndarray, int]:
        if system in B.REFERENCE_SYSTEMS:
            return B.reference_system(system, ref), ref_sr
        if system == "visaudio":
            return self.generated("visaudio", row)
        mono, sr = self.generated("mono", row)
        if system == "mono":
            self.notes["mono"] = "mono-trained generator, mid channel duplicated"
            return B.duplicate(B.mid(mono)), sr
        if system == "two-stage":
            key = self._key("mono")
            if self._spatialiser is None:
                self._spatialiser = B.make_spatialiser(sr)
            path = self.cache / f"two-stage-{self._spatialiser.name}-{key}" / f"{row.clip_id}.npy"
            d = self.video_direction(row, mono.shape[1] / sr)
            if path.is_file():
                out = np.load(path)
            else:
                out, _ = B.two_stage(mono, sr, d, self._spatialiser)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, out)
            self.notes["two-stage"] = (f"mono generator -> {self._spatialiser.name} along the video-only "
                                       "saliency/motion azimuth")
            return out, sr
        if system == "two-stage-sync":
            key = self._key("mono")
            if self._spatialiser is None:
                self._spatialiser = B.make_spatialiser(sr)
            path = self.cache / f"two-stage-sync-{self._spatialiser.name}-{key}" / f"{row.clip_id}.npy"
            if path.is_file():
                out = np.load(path)
            else:
                hfov = float(row.hfov_deg or 90.0)
                d = B.estimate_sync_azimuth(Path(self.cfg.manifest_dir) / row.video_path, hfov, B.mid(mono), sr,
                                            mono.shape[1] / sr)
                out, _ = B.two_stage(mono, sr, d, self._spatialiser)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, out)
            self.notes["two-stage-sync"] = (f"mono generator -> {self._spatialiser.name} along the azimuth of the "
                                            "picture region in sync with the generated sound, held in the world "
                                            "while the camera turns")
            return out, sr
        raise EvalError(f"unknown system {system!r}")


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def boot_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_clips) resampling weights that draw whole SOURCES with replacement.

    Clips cut from the same source video share scene, sounds and camera style, so they are not
    independent; resampling sources (a cluster bootstrap) keeps the intervals honest. With one
    clip per source it is the ordinary bootstrap over clips.
    """
    _, gidx = np.unique(np.asarray(groups), return_inverse=True)
    ng = int(gidx.max()) + 1 if len(gidx) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, ng, size=(n_boot, ng))
    counts = np.zeros((n_boot, ng))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts[:, gidx]


def bootstrap_ci(values: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None,
                 level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and percentile-bootstrap interval (NaN clips dropped), seeded: reproducible."""
    v = np.asarray(values, dtype=np.float64)
    g = np.arange(len(v)) if groups is None else np.asarray(groups)
    ok = np.isfinite(v)
    v, g = v[ok], g[ok]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    if len(np.unique(g)) == 1:
        # one source: no between-source variation to resample, the interval is not estimable
        # (a zero-width interval would fake certainty)
        return float(v.mean()), float("nan"), float("nan"), int(len(v))
    W = boot_weights(g, n_boot, seed)
    tot = W.sum(axis=1)
    means = (W @ v)[tot > 0] / tot[tot > 0]
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), int(len(v))


def paired_diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int,
                   groups: np.ndarray | None = None) -> tuple[float, float, float, int]:
    """Bootstrap interval of the mean paired difference a - b over clips where both are finite."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return bootstrap_ci(a - b, n_boot, seed, groups)


def _moments(feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-clip frame count, sum and scatter: any resample's Gaussian comes from sums of these."""
    n = np.array([f.shape[0] for f in feats], dtype=np.float64)
    s1 = np.stack([f.sum(axis=0) for f in feats])
    s2 = np.stack([f.T @ f for f in feats])
    return n, s1, s2


def _gauss(n: np.ndarray, s1: np.ndarray, s2: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    N = float(w @ n)
    mu = (w @ s1) / N
    cov = (np.tensordot(w, s2, axes=1) - N * np.outer(mu, mu)) / max(N - 1.0, 1.0)
    return mu, cov


def set_metric_ci(est_feats: list[np.ndarray], ref_feats: list[np.ndarray], n_boot: int,
                  seed: int, groups: np.ndarray | None = None) -> tuple[float, float, float, int]:
    """``fd_logmel`` on all clips, with an interval from resampling sources (paired system/reference).

    Resamples reuse per-clip moments (count, sum, scatter), so each bootstrap draw costs two
    eigen-decompositions and no pass over the frames. FD is a biased statistic (it grows when
    fewer distinct clips are pooled), so its interval can sit above the all-clip value.
    """
    n = len(est_feats)
    me, mr = _moments(est_feats), _moments(ref_feats)
    ones = np.ones(n)
    full = M.frechet_distance(*_gauss(*me, ones), *_gauss(*mr, ones))
    g = np.arange(n) if groups is None else np.asarray(groups)
    if len(np.unique(g)) < 2:
        return full, float("nan"), float("nan"), n
    vals = [M.frechet_distance(*_gauss(*me, w), *_gauss(*mr, w)) for w in boot_weights(g, n_boot, seed)]
    return full, float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975)), n


def summarise(per_clip: pd.DataFrame, fd: dict[str, tuple], cfg: EvalConfig, notes: dict[str, str]) -> dict:
    systems = list(dict.fromkeys(per_clip["system"]))
    metric_names = [m for m in M.METRICS if m in per_clip.columns]
    out: dict = {
        "schema": "visaudio-eval/1",
        "manifest": str(cfg.manifest_dir),
        "split": cfg.split,
        "n_clips": int(per_clip["clip_id"].nunique()),
        "clips": sorted(per_clip["clip_id"].unique().tolist()),
        "ckpt": str(cfg.ckpt) if cfg.ckpt else None,
        "mono_ckpt": str(cfg.mono_ckpt) if cfg.mono_ckpt else None,
        "generation": {"steps": cfg.steps, "cfg": cfg.cfg, "seed": cfg.seed, "side_noise": cfg.side_noise},
        "bootstrap": {"n": cfg.n_boot, "n_set_metrics": cfg.n_boot_set, "seed": cfg.seed, "level": 0.95,
                      "method": "percentile bootstrap of the mean, resampling source videos (group_id; cluster bootstrap)"},
        "settings": cfg.settings.to_dict(),
        "metric_info": {
            **{k: {"higher_is_better": v[0], "direction_sensitive": v[1], "description": v[2]}
               for k, v in M.METRICS.items() if k in metric_names},
            "fd_logmel": {"higher_is_better": False, "direction_sensitive": False,
                          "description": "Frechet distance of pooled [left|right] 40-band log-mel frame "
                                         "statistics to the reference set (a smoke metric; NOT FD_VGG)"},
        },
        "systems": {},
    }
    for s in systems:
        sub = per_clip[per_clip["system"] == s]
        ms = {}
        groups = _groups(sub)
        for m in metric_names:
            # the same seed for every system and metric: identical resamples, comparable intervals
            mean, lo, hi, n = bootstrap_ci(sub[m].to_numpy(), cfg.n_boot, cfg.seed, groups)
            ms[m] = {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}
        if s in fd:
            mean, lo, hi, n = fd[s]
            ms["fd_logmel"] = {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}
        out["systems"][s] = {"metrics": ms, "note": notes.get(s, _default_note(s))}
    out["comparisons"] = compare(per_clip, out, cfg)
    return out


def by_scene_type(per_clip: pd.DataFrame, cfg: EvalConfig, notes: dict[str, str]) -> dict:
    """The summary (metrics with intervals, paired comparisons) of each scene type on its own.

    Why: a benchmark world mixes scene types that favour different systems (a saliency map is
    right about a lone disc and wrong about an off-screen source); the pooled mean hides which
    is which. Clips without a type (no truth JSON) are left out here, not in the pooled summary."""
    out: dict = {}
    sub_all = per_clip[per_clip["scene_type"].notna()]
    for t in sorted(sub_all["scene_type"].unique()):
        sub = sub_all[sub_all["scene_type"] == t]
        s = summarise(sub, {}, cfg, notes)
        out[str(t)] = {"n_clips": s["n_clips"], "systems": {k: v["metrics"] for k, v in s["systems"].items()},
                       "comparisons": s["comparisons"]}
    return out


def _groups(df: pd.DataFrame) -> np.ndarray | None:
    """Bootstrap clusters: the original video (``group_id``). Clips of one video are not independent
    (Sphere360 cuts many sections from one YouTube video), so resampling them one by one would give
    intervals that are too narrow; ``source_id`` only for tables without ``group_id``."""
    for col in ("group_id", "source_id"):
        if col in df:
            return df[col].to_numpy()
    return None


def _default_note(s: str) -> str:
    return {
        "visaudio": "end-to-end model (--ckpt)",
        "reference": "binaural ground truth (upper bound)",
        "swapped-reference": "ground truth, ears swapped (direction lower bound)",
        "mono-duplicated-reference": "mid of the ground truth in both ears (floor)",
    }.get(s, s)


def compare(per_clip: pd.DataFrame, summary: dict, cfg: EvalConfig) -> list[dict]:
    """ViSAudio vs each model baseline on the key direction metrics: intervals and paired test."""
    res = []
    if "visaudio" not in summary["systems"]:
        return res
    wide = per_clip.pivot(index="clip_id", columns="system")
    groups = _groups(per_clip.drop_duplicates("clip_id").set_index("clip_id").loc[wide.index])
    for base in ["mono", *B.TWO_STAGE_SYSTEMS]:
        if base not in summary["systems"]:
            continue
        for m in KEY_METRICS:
            a = summary["systems"]["visaudio"]["metrics"][m]
            b = summary["systems"][base]["metrics"][m]
            d_mean, d_lo, d_hi, n = paired_diff_ci(wide[m]["visaudio"].to_numpy(), wide[m][base].to_numpy(),
                                                    cfg.n_boot, cfg.seed, groups)
            res.append({
                "metric": m, "system": "visaudio", "baseline": base,
                "system_mean": a["mean"], "baseline_mean": b["mean"],
                "non_overlapping_and_better": bool(a["ci_low"] > b["ci_high"]),
                "paired_diff_mean": d_mean, "paired_diff_ci": [d_lo, d_hi], "n": n,
                "paired_better": bool(d_lo > 0),
            })
    return res


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run(cfg: EvalConfig, on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Evaluate every system on the split; writes per_clip.parquet, summary.json, series.json,
    index.html into ``cfg.report_dir`` and returns the summary."""
    s = cfg.settings
    report_dir = Path(cfg.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.systems:
        raise EvalError("no systems to evaluate")
    if cfg.side_noise is not None:  # refused before any clip is generated, not once per clip
        from visaudio.config import check_side_noise

        try:
            check_side_noise(cfg.side_noise)
        except ValueError as e:
            raise EvalError(str(e)) from None
    df = load_split(cfg.manifest_dir, cfg.split, need_model=bool(B.MODEL_SYSTEMS & set(cfg.systems)))
    if cfg.limit:
        df = df.head(cfg.limit)
    src = SystemSource(cfg)
    src.claim(df)
    from visaudio.eval import truth as T

    cam_truth: list[pd.DataFrame] = []
    rows: list[dict] = []
    series: dict[str, dict] = {}
    feats: dict[str, list[np.ndarray]] = {sys_: [] for sys_ in cfg.systems}
    audio_for_report: dict[str, dict[str, tuple[np.ndarray, int]]] = {}
    total = len(df)
    for ci, rec in enumerate(df.to_dict("records")):
        row = ClipRow.from_dict(rec, strict=False)  # one clip at a time, typed (a partial manifest: None)
        cid = row.clip_id
        if on_progress:
            on_progress(cid, ci, total)
        ref_raw, ref_sr = load_reference(cfg.manifest_dir, row)
        outs: dict[str, tuple[np.ndarray, int]] = {}
        for sys_ in cfg.systems:
            outs[sys_] = src.get(sys_, row, ref_raw, ref_sr)
        # compare over the common duration (generators produce ``clip_seconds``, maybe shorter)
        dur = min([ref_raw.shape[1] / ref_sr] + [a.shape[1] / sr for a, sr in outs.values()])
        ref = M.prepare(ref_raw[:, : int(round(dur * ref_sr))], ref_sr, s)
        _, times = M.frames(ref, s)
        geo = clip_geometry(row, times)
        ctx = M.Context(expected_lateral=geo["lateral"], yaw_deg=geo["yaw"], az_cam_deg=geo["az_cam"])
        tru = T.find_truth(cfg.manifest_dir, row)
        stype = T.scene_type(tru)
        if tru is not None:
            ct = T.camera_truth(row, tru, times)
            if len(ct):
                cam_truth.append(ct.assign(scene_type=stype))
        ref_feats = M.logmel_features(ref, s)
        feats.setdefault("__ref__", []).append(ref_feats)
        ser = {"t": times.tolist(), "yaw": geo["yaw"].tolist(), "az_world": geo["az_world"].tolist(),
               "az_cam": geo["az_cam"].tolist(), "loud": M.loud_frames(ref, s).tolist(), "ild": {}}
        for sys_, (a, sr) in outs.items():
            est, _ = M.align(M.prepare(a[:, : int(round(dur * sr))], sr, s), ref)
            est, ref_c = M.align(est, ref)
            met = M.reference_metrics(est, ref_c, s, ctx)
            rows.append({"clip_id": cid, "source_id": str(row.get("source_id", cid)),
                         "group_id": str(row.get("group_id") or row.get("source_id", cid)), "system": sys_,
                         **({"scene_type": stype} if stype is not None else {}), **met})
            feats[sys_].append(M.logmel_features(est, s))
            ser["ild"][sys_] = np.round(np.clip(M.frame_ild(est, s), -40, 40), 3).tolist()
        ser["ild"]["reference"] = np.round(np.clip(M.frame_ild(ref, s), -40, 40), 3).tolist()
        series[cid] = ser
        if ci < cfg.n_audio_clips:
            audio_for_report[cid] = {k: (v[0][:, : int(round(dur * v[1]))], v[1]) for k, v in outs.items()}
            audio_for_report[cid].setdefault("reference", (ref_raw[:, : int(round(dur * ref_sr))], ref_sr))
    if on_progress:
        on_progress("statistics", total, total)
    per_clip = pd.DataFrame(rows)
    write_frame(per_clip, report_dir / "per_clip.parquet")
    src_ids = _groups(per_clip.drop_duplicates("clip_id"))
    fd = {sys_: set_metric_ci(feats[sys_], feats["__ref__"], cfg.n_boot_set, cfg.seed, src_ids) for sys_ in cfg.systems}
    summary = summarise(per_clip, fd, cfg, src.notes)
    if cam_truth:
        write_frame(pd.concat(cam_truth, ignore_index=True), report_dir / "camera_truth.parquet")
        summary["camera_truth"] = "camera_truth.parquet"
    if "scene_type" in per_clip.columns:
        summary["by_scene_type"] = by_scene_type(per_clip, cfg, src.notes)
    _write_json(report_dir / "summary.json", summary)
    _write_json(report_dir / "series.json", series)
    from visaudio.eval.report import write_report

    write_report(report_dir, summary, series, audio_for_report)
    return summary


def _write_json(path: Path, obj) -> None:
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    atomic.write_text(path, json.dumps(clean(obj), indent=1))
