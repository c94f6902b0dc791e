"""Camera trajectories for one clip: where the virtual perspective camera looks, per output frame.

Why seeded by clip id: a dataset must be rebuildable bit-for-bit (resume after a crash, the Ray and
local executors, a re-run with the same recipe). The random generator is seeded from
``sha256(recipe_seed, clip_id)``, never Python's ``hash()`` (salted per process), so the same clip id
and recipe give the same path in every worker on every machine.

Modes (``TrajectoryConfig.mode``):

- ``paper`` (the ViSAudio/BiAudio recipe): start at the clip's dominant sound direction plus random
  offsets (``yaw0 = az_max + Δyaw``, ``pitch0 = el_max + Δpitch``), then piecewise-linear yaw, pitch
  and roll with a random drift rate per segment between random breakpoints. Pitch and roll are
  clipped to their limits; yaw is kept *unwrapped* (it may leave (-180, 180]) so a path that crosses
  the back of the sphere never jumps by 360° between frames.
- ``static``: the start pose of ``paper`` (same offsets), held for the whole clip.
- ``track``: follow the per-window dominant direction (smoothed on the unit sphere, not on angles),
  keeping the random start offsets as a constant bias so the source sits at a fixed off-centre spot
  (an offset of 0 would put it dead ahead, where a symmetric binaural decoder gives L == R).

Angles are degrees in the world frame and follow ``biaudio.spatial.angles`` (yaw > 0 looks left,
pitch > 0 looks up, roll > 0 turns the camera clockwise seen from behind).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from biaudio.errors import BiaudioError
from biaudio.spatial.angles import dir_to_vec, unwrap_deg, vec_to_dir, wrap_deg

Range = tuple[float, float]


class TrajectoryConfig(BaseModel):
    """Recipe section ``trajectory``: every number of the camera path is a parameter, none in code."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["paper", "static", "track"] = "paper"
    seed: int = 0
    """Recipe-level seed mixed with the clip id (change it to draw a new set of paths)."""
    yaw_offset_deg: Range = (-60.0, 60.0)
    """Δyaw drawn uniformly in this range and added to the dominant azimuth at the start."""
    pitch_offset_deg: Range = (-15.0, 15.0)
    """Δpitch drawn uniformly in this range and added to the dominant elevation at the start."""
    roll_start_deg: Range = (0.0, 0.0)
    """Initial roll drawn uniformly in this range (the paper starts level)."""
    n_breakpoints: tuple[int, int] = (1, 3)
    """Number of interior breakpoints (inclusive range); each segment gets its own drift rates."""
    yaw_drift_deg_per_s: float = Field(10.0, ge=0)
    """Per-segment yaw rate drawn uniformly in [-v, v]."""
    pitch_drift_deg_per_s: float = Field(3.0, ge=0)
    roll_drift_deg_per_s: float = Field(2.0, ge=0)
    pitch_limit_deg: float = Field(30.0, ge=0, le=90)
    """Pitch is clipped to [-limit, limit] (looking straight up or down makes poor video)."""
    roll_limit_deg: float = Field(10.0, ge=0, le=180)
    track_smoothing_s: float = Field(1.0, ge=0)
    """Gaussian smoothing (sigma, seconds) of the dominant-direction track in ``track`` mode."""

    @model_validator(mode="after")
    def _ranges_ordered(self) -> TrajectoryConfig:
        for name in ("yaw_offset_deg", "pitch_offset_deg", "roll_start_deg", "n_breakpoints"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} > upper bound {hi}")
        if self.n_breakpoints[0] < 0:
            raise ValueError("n_breakpoints must be >= 0")
        return self


@dataclass
class Trajectory:
    """Per-output-frame camera pose. ``t`` is seconds from the clip start (frame k at k / fps)."""

    t: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    mode: str

    def __len__(self) -> int:
        return len(self.t)

    def to_records(self) -> list[dict[str, float]]:
        """Manifest form: one ``{t, yaw, pitch, roll}`` dict per output frame (plain floats)."""
        return [
            {"t": float(t), "yaw": float(y), "pitch": float(p), "roll": float(r)}
            for t, y, p, r in zip(self.t, self.yaw, self.pitch, self.roll, strict=True)
        ]


def clip_seed(clip_id: str, recipe_seed: int | str) -> int:
    """A 64-bit seed from the recipe seed and the clip id (stable across processes and machines)."""
    h = hashlib.sha256(f"biaudio-trajectory\x00{recipe_seed}\x00{clip_id}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def frame_times(duration_s: float, fps: float) -> np.ndarray:
    """Output frame times ``k / fps`` for every frame that starts inside the clip."""
    if fps <= 0 or duration_s <= 0:
        raise BiaudioError(None, "bad_trajectory_input", f"duration {duration_s} s, fps {fps}", "trajectory")
    n = max(1, int(np.floor(duration_s * fps + 1e-6)))
    return np.arange(n, dtype=np.float64) / fps


def _piecewise(rng: np.random.Generator, t: np.ndarray, start: float, rate: float, bps: np.ndarray) -> np.ndarray:
    """Integrate a piecewise-constant random rate: a continuous piecewise-linear angle path."""
    starts = np.concatenate([[0.0], bps])  # segment i starts at starts[i]
    rates = rng.uniform(-rate, rate, size=len(starts))
    seg = np.searchsorted(bps, t, side="right")
    seg_start_val = start + np.concatenate([[0.0], np.cumsum(rates[:-1] * np.diff(starts))])
    return seg_start_val[seg] + rates[seg] * (t - starts[seg])


def _smooth_track(t_w: np.ndarray, az: np.ndarray, el: np.ndarray, t: np.ndarray, sigma_s: float):
    """Smooth direction vectors with a Gaussian in time and evaluate at ``t`` (averaging on the sphere)."""
    v = dir_to_vec(az, el)  # (N, 3)
    if sigma_s > 0:
        w = np.exp(-0.5 * ((t[:, None] - t_w[None, :]) / sigma_s) ** 2)
    else:  # nearest window
        w = np.zeros((len(t), len(t_w)))
        w[np.arange(len(t)), np.abs(t[:, None] - t_w[None, :]).argmin(1)] = 1.0
    s = w @ v
    # A direction exactly cancelled out (opposite windows) has no meaning: fall back to nearest window.
    bad = np.linalg.norm(s, axis=1) < 1e-9
    if bad.any():
        s[bad] = v[np.abs(t[bad, None] - t_w[None, :]).argmin(1)]
    return vec_to_dir(s)


def make_trajectory(
    clip_id: str,
    duration_s: float,
    fps: float,
    clip_dir: tuple[float, float],
    window_dirs: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    cfg: TrajectoryConfig,
    recipe_seed: int | str = 0,
) -> Trajectory:
    """Camera path for one clip.

    ``clip_dir`` is the clip's dominant (azimuth, elevation) in degrees; ``window_dirs`` the per-window
    track ``(t, az, el)`` (t in seconds from the clip start), used by ``track`` mode only and allowed
    to be ``None``/empty (then the clip direction is used). The random draws happen in a fixed order
    whatever the mode, so switching mode does not change the start offsets of a clip.
    """
    t = frame_times(duration_s, fps)
    rng = np.random.default_rng(clip_seed(clip_id, recipe_seed))
    d_yaw = rng.uniform(*cfg.yaw_offset_deg)
    d_pitch = rng.uniform(*cfg.pitch_offset_deg)
    roll0 = rng.uniform(*cfg.roll_start_deg)
    az0, el0 = float(clip_dir[0]), float(clip_dir[1])
    if not (np.isfinite(az0) and np.isfinite(el0)):
        raise BiaudioError(None, "bad_direction", f"clip direction {clip_dir} is not finite", "trajectory")
    yaw0 = float(wrap_deg(az0 + d_yaw))
    pitch0 = float(np.clip(el0 + d_pitch, -cfg.pitch_limit_deg, cfg.pitch_limit_deg))
    roll0 = float(np.clip(roll0, -cfg.roll_limit_deg, cfg.roll_limit_deg))

    if cfg.mode == "paper":
        n_bp = int(rng.integers(cfg.n_breakpoints[0], cfg.n_breakpoints[1] + 1))
        bps = np.sort(rng.uniform(0.0, duration_s, size=n_bp))
        yaw = _piecewise(rng, t, yaw0, cfg.yaw_drift_deg_per_s, bps)
        pitch = _piecewise(rng, t, pitch0, cfg.pitch_drift_deg_per_s, bps)
        roll = _piecewise(rng, t, roll0, cfg.roll_drift_deg_per_s, bps)
    elif cfg.mode == "static":
        yaw = np.full_like(t, yaw0)
        pitch = np.full_like(t, pitch0)
        roll = np.full_like(t, roll0)
    else:  # track
        if window_dirs is not None and len(window_dirs[0]) > 0:
            tw, aw, ew = (np.asarray(a, dtype=np.float64) for a in window_dirs)
            ok = np.isfinite(tw) & np.isfinite(aw) & np.isfinite(ew)
            tw, aw, ew = tw[ok], aw[ok], ew[ok]
        else:
            tw = np.zeros(0)
        if len(tw) == 0:
            tw, aw, ew = np.zeros(1), np.array([az0]), np.array([el0])
        az_t, el_t = _smooth_track(tw, aw, ew, t, cfg.track_smoothing_s)
        yaw = unwrap_deg(az_t + d_yaw)
        # start in (-180, 180] like the other modes, unwrapped from there
        yaw = yaw - 360.0 * np.round((yaw[0] - wrap_deg(yaw[0])) / 360.0)
        pitch = el_t + d_pitch
        roll = np.full_like(t, roll0)

    pitch = np.clip(pitch, -cfg.pitch_limit_deg, cfg.pitch_limit_deg)
    roll = np.clip(roll, -cfg.roll_limit_deg, cfg.roll_limit_deg)
    return Trajectory(t=t, yaw=np.asarray(yaw, float), pitch=np.asarray(pitch, float),
                      roll=np.asarray(roll, float), mode=cfg.mode)
