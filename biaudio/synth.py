"""Synthetic 360° scenes with exact ground truth: equirect video + 4-channel ambiX FOA.

Why: every spatial claim of the project (marker side = FOA azimuth = louder ear, direction
accuracy, projection seams) needs a scene whose true directions are known exactly. Each scene has
1-3 sources with distinct sounds (tone, noise bursts, clicks, speech-like formant bursts, or a
given speech wav) moving along smooth analytic paths; the same path places a coloured disc on the
equirect frame and pans the sound with a plane-wave ambiX encoder (``W = s, Y = s·d_y, Z = s·d_z,
X = s·d_x``, conventions §4 in docs/ARCHITECTURE.md). A ground-truth JSON records every source's direction per frame.

Container: MP4 with H.264 video and **AAC 4.0** audio (512 kb/s, intensity stereo and PNS off)
plus injected ``SA3D`` (ambiX ACN/SN3D) and ``st3d``/``sv3d`` (equirectangular) boxes, the layout
YouTube uses for MP4 spatial audio, so our probe reads it as 360° FOA. AAC keeps the channel
order (tone-per-channel test) and levels within 0.1 dB; it is lossy, so directions decoded from
the MP4 carry a small codec error (one source, 0.1-s windows: median 0.02-0.3°, max 1.5°).
Intensity stereo is disabled because it codes the second channel of a channel pair (ambiX Y) as
a scaled copy of the first (W) in high bands: exact for one plane wave, wrong for mixtures and
ambience (not measured here; disabled as a precaution, it costs only bitrate). The FOA is relabelled to ``4.0`` with
``channelmap`` (pure relabel, no remix). ``keep_foa_wav`` also writes the exact float FOA.

Deterministic: same seed -> byte-identical files (numpy Generator from the seed; ffmpeg with
bit-exact flags, no metadata, one x264 thread).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from biaudio import atomic
from biaudio.spatial.angles import dir_to_vec, wrap_deg

KINDS = ("tone", "noise", "clicks", "formant")
EXTRA_KINDS = ("rumble",)  # continuous ambience (spatial-bench world); not drawn by the demo
COLORS: list[tuple[str, tuple[int, int, int]]] = [
    ("red", (255, 0, 0)),
    ("green", (0, 255, 0)),
    ("blue", (0, 0, 255)),
    ("yellow", (255, 255, 0)),
    ("magenta", (255, 0, 255)),
    ("cyan", (0, 255, 255)),
]
TRUTH_VERSION = 1


@dataclass
class SourceSpec:
    """One source: analytic path ``az(t) = az0 + rate·t + az_amp·sin(2π az_freq t + az_phase)``,
    ``el(t) = el0 + el_amp·sin(2π el_freq t + el_phase)`` (degrees, |el| ≤ 40 by construction)."""

    name: str
    kind: str
    color_name: str
    color: tuple[int, int, int]
    az0: float
    el0: float
    rate: float = 0.0
    az_amp: float = 0.0
    az_freq: float = 0.0
    az_phase: float = 0.0
    el_amp: float = 0.0
    el_freq: float = 0.0
    el_phase: float = 0.0
    radius_deg: float = 8.0
    gain_db: float = 0.0
    static: bool = False
    # spatial-bench world (see biaudio.synth_bench): a source may be heard and not drawn
    # (off-screen ambience, an unseen second source) or drawn and not heard (a silent distractor);
    # ``pulse`` makes its disc radius follow a loudness envelope: "own" = its own sound's (the
    # audio-visual synchrony that tells the sounding disc apart), "decoy" = the envelope of a
    # sound of the same kind that is never played (a distractor that pulses just as much).
    visible: bool = True
    sounding: bool = True
    pulse: str = "none"
    pulse_depth: float = 0.6

    def direction(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        az = self.az0 + self.rate * t + self.az_amp * np.sin(2 * np.pi * self.az_freq * t + self.az_phase)
        el = self.el0 + self.el_amp * np.sin(2 * np.pi * self.el_freq * t + self.el_phase)
        return wrap_deg(az), np.clip(el, -89.0, 89.0)


@dataclass
class SceneSpec:
    """Everything that defines a scene; stored in the truth JSON so a scene can be regenerated."""

    scene_id: str
    seed: int
    duration: float = 10.0
    size: tuple[int, int] = (1920, 960)
    fps: float = 30.0
    sr: int = 48000
    sources: list[SourceSpec] = field(default_factory=list)
    ambience: bool = True
    ambience_db: float = -40.0
    silent: bool = False
    frozen: bool = False
    speech_wav: str | None = None
    spatial_metadata: bool = True
    cuts_s: list[float] = field(default_factory=list)
    crf: int = 23
    world: str = "demo"
    scene_type: str | None = None
    texture_drift: bool = True  # False: the background is fixed in the world (only the camera moves it)


@dataclass
class ScenePaths:
    """Where a scene went. Iterates as ``(video, truth_json)`` so ``video, truth = make_scene(...)``
    works as the contract's two-field form; ``foa_wav`` is set only with ``keep_foa_wav``."""

    video: Path
    truth_json: Path
    foa_wav: Path | None = None

    def __iter__(self):
        return iter((self.video, self.truth_json))


# ----------------------------------------------------------------------------------- sounds


def _env(n: int, sr: int, attack_s: float = 0.01, release_s: float = 0.03) -> np.ndarray:
    e = np.ones(n)
    a, r = min(n // 2, int(attack_s * sr)), min(n // 2, int(release_s * sr))
    if a:
        e[:a] = np.linspace(0, 1, a, endpoint=False)
    if r:
        e[n - r :] = np.linspace(1, 0, r)
    return e


def _sound_tone(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    f0 = float(rng.choice([220.0, 330.0, 440.0, 523.25, 660.0]))
    x = sum((0.6**k) * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 2 * np.pi)) for k in range(4))
    am = 1.0 - 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    return x * am


def _bursts(
    rng: np.random.Generator, n: int, sr: int, on=(0.15, 0.4), off=(0.05, 0.3)
) -> list[tuple[int, int]]:
    out, i = [], int(rng.uniform(0, off[1]) * sr)
    while i < n:
        L = int(rng.uniform(*on) * sr)
        out.append((i, min(n, i + L)))
        i += L + int(rng.uniform(*off) * sr)
    return out


def _sound_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    lo = float(rng.uniform(400, 900))
    sos = butter(4, [lo, min(lo * 6, 0.45 * sr)], btype="band", fs=sr, output="sos")
    w = sosfilt(sos, rng.standard_normal(n))
    env = np.zeros(n)
    for a, b in _bursts(rng, n, sr):
        env[a:b] = _env(b - a, sr)
    return w * env


def _sound_clicks(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    x = np.zeros(n)
    L = int(0.008 * sr)
    tt = np.arange(L) / sr
    f = float(rng.uniform(1500, 3000))
    click = np.sin(2 * np.pi * f * tt) * np.exp(-tt / 0.0015)
    i = int(rng.uniform(0, 0.1) * sr)
    while i + L < n:
        x[i : i + L] += click * rng.uniform(0.7, 1.0)
        i += int(rng.uniform(0.06, 0.16) * sr)
    return x


_VOWELS = [
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (660, 1720, 2410),
]


def _sound_formant(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    x = np.zeros(n)
    base_f0 = float(rng.uniform(100, 220))
    for a, b in _bursts(rng, n, sr, on=(0.12, 0.3), off=(0.04, 0.25)):
        L = b - a
        t = np.arange(L) / sr
        f0 = base_f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)) * rng.uniform(0.9, 1.1)
        phase = np.cumsum(f0) / sr
        pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
        y = np.zeros(L)
        for k, fc in enumerate(_VOWELS[int(rng.integers(len(_VOWELS)))]):
            bw = 80.0 + 40 * k
            r = np.exp(-np.pi * bw / sr)
            th = 2 * np.pi * fc / sr
            y += lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], pulses) * (0.5**k)
        x[a:b] = y * _env(L, sr, 0.02, 0.05)
    return x


def _sound_speech(path: str, n: int, sr: int) -> np.ndarray:
    """Speech from a wav (mono mix of its channels), resampled, looped to length ``n``."""
    import soundfile as sf

    from biaudio.media.audio import resample

    y, fs = sf.read(path, dtype="float64", always_2d=True)
    y = resample(y.mean(axis=1), fs, sr)
    if len(y) == 0:
        from biaudio.errors import MediaError

        raise MediaError(path, "zero_length", "speech wav has no samples")
    reps = int(np.ceil(n / len(y)))
    return np.tile(y, reps)[:n]


def _sound_rumble(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Continuous band-limited noise (150-1500 Hz) with a slow, shallow level wander: ambience
    that is always on, so its direction is audible in every frame."""
    from scipy.signal import butter, sosfilt

    sos = butter(2, [150.0, min(1500.0, 0.45 * sr)], btype="band", fs=sr, output="sos")
    t = np.arange(n) / sr
    am = 1.0 - 0.2 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 2 * np.pi)))
    return sosfilt(sos, rng.standard_normal(n)) * am


def _make_sound(kind: str, rng: np.random.Generator, n: int, sr: int, speech_wav: str | None) -> np.ndarray:
    if kind == "speech":
        assert speech_wav is not None
        x = _sound_speech(speech_wav, n, sr)
    else:
        x = {"tone": _sound_tone, "noise": _sound_noise, "clicks": _sound_clicks, "formant": _sound_formant,
             "rumble": _sound_rumble}[kind](rng, n, sr)
    rms = np.sqrt(np.mean(x[np.abs(x) > 1e-9] ** 2)) if np.any(np.abs(x) > 1e-9) else 1.0
    return x / rms * 0.1  # -20 dBFS while active


# ----------------------------------------------------------------------------------- spec


def random_scene_spec(
    scene_id: str,
    seed: int,
    duration: float = 10.0,
    size: tuple[int, int] = (1920, 960),
    fps: float = 30.0,
    sr: int = 48000,
    n_sources: int | None = None,
    ambience: bool = True,
    static_source: tuple[float, float] | None = None,
    silent: bool = False,
    frozen: bool = False,
    speech_wav: str | os.PathLike | None = None,
    spatial_metadata: bool = True,
    cuts_s: list[float] | None = None,
) -> SceneSpec:
    """Draw a scene from ``seed``. Sources start evenly spread in azimuth (jittered) and share one
    drift rate plus a small individual wobble, so they stay ≥ ~50° apart (3 sources) and markers
    never overlap. ``static_source=(az, el)`` makes source 0 stay exactly there (the others then
    only wobble around their start). Sources are not all active all the time (bursts, clicks):
    the truth JSON's per-frame ``rms_db`` says which one is audible."""
    rng = np.random.default_rng(seed)
    n = int(n_sources) if n_sources is not None else int(rng.integers(1, 4))
    if not 1 <= n <= len(COLORS):
        raise ValueError(f"n_sources must be 1..{len(COLORS)}, got {n}")
    kinds = list(rng.permutation(KINDS))
    rate = float(rng.uniform(-12, 12))
    az_start = float(rng.uniform(-180, 180))
    if static_source is not None:
        az_start = float(static_source[0])  # the others keep their spacing from the static one
        rate = 0.0  # ... and only wobble, so they never cross it
    jitter, wobble = min(15.0, 90.0 / n), min(20.0, 60.0 / n)  # spacing 360/n stays > 2 discs
    sources = []
    for i in range(n):
        kind = "speech" if (i == 0 and speech_wav is not None) else kinds[i % len(kinds)]
        cname, col = COLORS[i]
        el0 = float(rng.uniform(-25, 25))
        el_amp = float(rng.uniform(0, 40 - abs(el0)))
        s = SourceSpec(
            name=f"s{i}",
            kind=kind,
            color_name=cname,
            color=col,
            az0=float(wrap_deg(az_start + i * 360.0 / n + rng.uniform(-jitter, jitter))),
            el0=el0,
            rate=rate,
            az_amp=float(rng.uniform(0, wobble)),
            az_freq=float(rng.uniform(0.05, 0.2)),
            az_phase=float(rng.uniform(0, 2 * np.pi)),
            el_amp=min(el_amp, 15.0),
            el_freq=float(rng.uniform(0.05, 0.2)),
            el_phase=float(rng.uniform(0, 2 * np.pi)),
            radius_deg=float(rng.uniform(6, 10)),
            gain_db=float(rng.uniform(-3, 0)),
        )
        if i == 0 and static_source is not None:
            s.az0, s.el0 = float(wrap_deg(static_source[0])), float(static_source[1])
            s.rate = s.az_amp = s.el_amp = 0.0
            s.static = True
        sources.append(s)
    return SceneSpec(
        scene_id=scene_id,
        seed=int(seed),
        duration=float(duration),
        size=(int(size[0]), int(size[1])),
        fps=float(fps),
        sr=int(sr),
        sources=sources,
        ambience=ambience,
        silent=silent,
        frozen=frozen,
        speech_wav=None if speech_wav is None else str(speech_wav),
        spatial_metadata=spatial_metadata,
        cuts_s=sorted(float(c) for c in (cuts_s or [])),
    )


# ----------------------------------------------------------------------------------- audio


def render_foa(spec: SceneSpec) -> tuple[np.ndarray, list[np.ndarray]]:
    """ambiX FOA ``(4, T)`` float32 and each source's mono signal (after gain)."""
    foa, sigs, _ = render_foa_full(spec)
    return foa, sigs


def render_foa_full(spec: SceneSpec) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """As :func:`render_foa`, plus each source's drawn sound before muting: a silent distractor
    (``sounding=False``) emits nothing, but its "decoy" pulse follows the sound it would have made."""
    rng = np.random.default_rng([spec.seed, 1])
    n = int(round(spec.duration * spec.sr))
    t = np.arange(n) / spec.sr
    foa = np.zeros((4, n))
    sigs, raws = [], []
    for s in spec.sources:
        x = _make_sound(s.kind, rng, n, spec.sr, spec.speech_wav) * 10 ** (s.gain_db / 20)
        raws.append(x)
        if spec.silent or not s.sounding:
            x = np.zeros(n)
        az, el = s.direction(t)
        d = dir_to_vec(az, el)  # (T, 3): x, y, z
        foa[0] += x
        foa[1] += x * d[:, 1]
        foa[2] += x * d[:, 2]
        foa[3] += x * d[:, 0]
        sigs.append(x)
    if spec.ambience and not spec.silent:
        from scipy.signal import lfilter

        amb = lfilter([1.0], [1.0, -0.95], rng.standard_normal((4, n)), axis=1)  # decorrelated, reddish
        amb /= np.sqrt(np.mean(amb**2, axis=1, keepdims=True))
        level = 0.1 * 10 ** (spec.ambience_db / 20)
        amb *= (
            level * np.array([1.0, 1 / np.sqrt(3), 1 / np.sqrt(3), 1 / np.sqrt(3)])[:, None]
        )  # SN3D diffuse
        foa += amb
    from biaudio.media.audio import peak_gain

    g = peak_gain(foa, 0.9)
    if g != 1.0:  # one global gain: directions unchanged
        foa *= g
        sigs = [x * g for x in sigs]
    return foa.astype(np.float32), sigs, raws


# ----------------------------------------------------------------------------------- video


class _Canvas:
    """Precomputed equirect background (periodic texture, lat/long grid every 30°, cardinal
    labels) and per-pixel helpers for drawing discs by angular radius."""

    def __init__(self, spec: SceneSpec) -> None:
        import cv2

        W, H = spec.size
        self.W, self.H = W, H
        rng = np.random.default_rng([spec.seed, 2])
        az = (0.5 - (np.arange(W) + 0.5) / W) * 2 * np.pi  # column centres, rad
        el = (0.5 - (np.arange(H) + 0.5) / H) * np.pi
        self.az_cols = np.rad2deg(az)
        self.el_rows = np.rad2deg(el)
        A, E = np.meshgrid(az, el)
        self.textures = []
        for palette in range(2 if spec.cuts_s else 1):  # a second palette after each cut
            tex = np.zeros((H, W))
            for _ in range(6):
                m = int(rng.integers(2, 25))  # integer az frequency: seamless at ±180
                k = float(rng.uniform(1, 12))
                tex += rng.uniform(0.3, 1.0) * np.sin(m * A + k * E + rng.uniform(0, 2 * np.pi))
            tex = (tex - tex.min()) / (np.ptp(tex) + 1e-9)
            sky = np.clip((E / (np.pi / 2) + 1) / 2, 0, 1)  # 0 at nadir, 1 at zenith
            if palette == 0:
                base = np.stack([70 + 60 * sky, 80 + 60 * sky, 90 + 70 * sky], -1)
            else:
                base = np.stack([120 - 40 * sky, 90 + 20 * sky, 60 + 30 * sky], -1)
            img = (
                base + (tex[..., None] - 0.5) * 90
            )  # grey offset: low saturation, stays away from marker colours
            self.textures.append(np.clip(img, 0, 255).astype(np.uint8))
        # grid: meridians every 30° az, parallels every 30° el, 1-2 px wide
        lw = max(1, W // 960)
        self.grid_cols = sorted(
            {int(round((0.5 - a / 360.0) * W - 0.5)) % W + o for a in range(-180, 180, 30) for o in range(lw)}
        )
        self.grid_cols = [c for c in self.grid_cols if 0 <= c < W]
        self.grid_rows = sorted(
            {int(round((0.5 - e / 180.0) * H - 0.5)) + o for e in range(-60, 90, 30) for o in range(lw)}
        )
        self.grid_rows = [r for r in self.grid_rows if 0 <= r < H]
        self.labels = np.zeros((H, W), np.uint8)
        scale = max(0.4, H / 960 * 1.2)
        for name, a in (("F", 0), ("L", 90), ("B", 180), ("R", -90)):
            x = (int(round((0.5 - a / 360.0) * W - 0.5)) + 4) % W
            y = int(round(0.5 * H + 0.06 * H))
            cv2.putText(
                self.labels,
                name,
                (min(x, W - 30), y),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                255,
                max(1, int(2 * scale)),
            )
        ys, xs = np.nonzero(self.labels)
        self.label_px = (ys, xs)  # few hundred pixels: cheaper than a full-frame boolean mask

    def background(self, frame_index: int, palette: int, frozen: bool) -> np.ndarray:
        tex = self.textures[palette % len(self.textures)]
        shift = 0 if frozen else (frame_index * max(1, self.W // 240)) % self.W  # texture drifts, grid stays
        img = np.roll(tex, shift, axis=1) if shift else tex.copy()
        img[:, self.grid_cols] = (235, 235, 235)
        img[self.grid_rows, :] = (235, 235, 235)
        img[self.label_px] = (20, 20, 20)
        return img

    def disc(
        self, img: np.ndarray, az: float, el: float, radius_deg: float, color: tuple[int, int, int]
    ) -> None:
        """Fill the pixels within ``radius_deg`` (great-circle) of (az, el); wraps across the seam
        and covers all columns near a pole, so the disc is round on the sphere."""
        W, H = self.W, self.H
        rows = np.nonzero(np.abs(self.el_rows - el) <= radius_deg + 180.0 / H)[0]
        if rows.size == 0:
            return
        el_max = min(89.9, abs(el) + radius_deg)
        half_w = 180.0 if el_max > 85 else min(180.0, (radius_deg + 360.0 / W) / np.cos(np.deg2rad(el_max)))
        c0 = (0.5 - az / 360.0) * W - 0.5
        span = int(np.ceil(half_w / 360.0 * W)) + 1
        cols = np.arange(int(np.floor(c0)) - span, int(np.ceil(c0)) + span + 1) % W
        cols = np.unique(cols)
        d = dir_to_vec(az, el)
        er = np.deg2rad(self.el_rows[rows])[:, None]
        ac = np.deg2rad(self.az_cols[cols])[None, :]
        dot = np.cos(er) * np.cos(ac) * d[0] + np.cos(er) * np.sin(ac) * d[1] + np.sin(er) * d[2]
        m = dot >= np.cos(np.deg2rad(radius_deg))
        rr, cc = np.nonzero(m)
        img[rows[rr], cols[cc]] = color


def _frame_palette(k: int, cuts_frames: list[int]) -> int:
    return int(sum(1 for c in cuts_frames if k >= c))


# ----------------------------------------------------------------------------------- scene


def _rms_db_per_frame(x: np.ndarray, sr: int, fps: float, n_frames: int) -> np.ndarray:
    hop = sr / fps
    out = np.empty(n_frames)
    for k in range(n_frames):
        a, b = int(round(k * hop)), int(round((k + 1) * hop))
        seg = x[a:b]
        out[k] = 10 * np.log10(np.mean(seg**2) + 1e-12) if seg.size else -120.0
    return out


def _disc_radii(s: SourceSpec, raw: np.ndarray, sr: int, fps: float, n_frames: int) -> np.ndarray:
    """Per-frame disc radius: constant, or (``pulse``) swelling with the loudness envelope of
    ``raw`` (frame RMS over its 95th percentile, clipped to [0, 1]): ``r·(1 - d/2 + d·env)``."""
    if s.pulse == "none":
        return np.full(n_frames, s.radius_deg)
    hop = sr / fps
    env = np.array([np.sqrt(np.mean(raw[int(round(k * hop)):int(round((k + 1) * hop))] ** 2) + 1e-20)
                    for k in range(n_frames)])
    env = np.clip(env / (np.percentile(env, 95) + 1e-12), 0.0, 1.0)
    return s.radius_deg * (1.0 - s.pulse_depth / 2 + s.pulse_depth * env)


def truth_dict(spec: SceneSpec, sigs: list[np.ndarray], video_name: str) -> dict:
    n_frames = int(round(spec.duration * spec.fps))
    t = np.arange(n_frames) / spec.fps
    cuts = [int(round(c * spec.fps)) for c in spec.cuts_s if 0 < c * spec.fps < n_frames]
    sources = []
    for s, x in zip(spec.sources, sigs, strict=True):
        az, el = s.direction(t)
        rms = _rms_db_per_frame(x, spec.sr, spec.fps, n_frames)
        frames = [
            {
                "t": round(float(tt), 6),
                "azimuth_deg": round(float(a), 6),
                "elevation_deg": round(float(e), 6),
                "rms_db": round(float(r), 3),
            }
            for tt, a, e, r in zip(t, az, el, rms, strict=True)
        ]
        d = asdict(s)
        path = {
            k: d[k]
            for k in ("az0", "el0", "rate", "az_amp", "az_freq", "az_phase", "el_amp", "el_freq", "el_phase")
        }
        sources.append(
            {
                "name": s.name,
                "kind": s.kind,
                "color": list(s.color),
                "color_name": s.color_name,
                "radius_deg": s.radius_deg,
                "gain_db": s.gain_db,
                "static": s.static,
                "visible": s.visible,
                "sounding": s.sounding and not spec.silent,
                "pulse": s.pulse,
                "path": path,
                "frames": frames,
            }
        )
    return {
        "version": TRUTH_VERSION,
        "scene_id": spec.scene_id,
        "seed": spec.seed,
        "video": video_name,
        "fps": spec.fps,
        "sr": spec.sr,
        "duration_s": spec.duration,
        "size": list(spec.size),
        "n_frames": n_frames,
        "n_samples": int(round(spec.duration * spec.sr)),
        "foa_convention": "ambix",
        "container": {
            "video": "h264",
            "audio": "aac 4.0 (ambiX ACN/SN3D)",
            "spatial_metadata": spec.spatial_metadata,
        },
        "ambience": spec.ambience and not spec.silent,
        "ambience_db": spec.ambience_db,
        "silent": spec.silent,
        "frozen": spec.frozen,
        "speech_wav": None if spec.speech_wav is None else Path(spec.speech_wav).name,
        "cuts": cuts,
        "world": spec.world,
        "scene_type": spec.scene_type,
        "texture_drift": spec.texture_drift and not spec.frozen,
        "frame_time": "t = frame_index / fps; audio sample n is at n / sr",
        "sources": sources,
    }


def render_scene(
    spec: SceneSpec, out_dir: str | os.PathLike, keep_foa_wav: bool = False, threads: int = 1
) -> ScenePaths:
    """Render ``spec`` into ``out_dir/<scene_id>.mp4`` + ``<scene_id>.json`` (atomic)."""
    from biaudio.media.audio import write_audio
    from biaudio.media.video import VideoWriter, mux_foa

    W, H = spec.size
    if W % 2 or H % 2:
        raise ValueError(f"size must be even, got {W}x{H}")
    if spec.duration <= 0 or spec.fps <= 0:
        raise ValueError("duration and fps must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video = out / f"{spec.scene_id}.mp4"
    truth = out / f"{spec.scene_id}.json"
    foa, sigs, raws = render_foa_full(spec)
    n_frames = int(round(spec.duration * spec.fps))
    radii = [_disc_radii(s, x, spec.sr, spec.fps, n_frames) for s, x in zip(spec.sources, raws, strict=True)]
    cuts = [int(round(c * spec.fps)) for c in spec.cuts_s if 0 < c * spec.fps < n_frames]
    canvas = _Canvas(spec)
    t = np.arange(n_frames) / spec.fps
    paths = [s.direction(t) for s in spec.sources]
    work = Path(tempfile.mkdtemp(prefix=f".{spec.scene_id}-", dir=out))
    try:
        vtmp = work / "video.mp4"
        # superfast is ~1.5x quicker; but its P-frames drift on a still picture (mean |diff| ~1.3
        # grey levels), so frozen scenes use veryfast, which keeps identical frames identical
        preset = "veryfast" if spec.frozen else "superfast"
        with VideoWriter(vtmp, W, H, spec.fps, crf=spec.crf, preset=preset, threads=threads) as vw:
            frozen_img = None
            for k in range(n_frames):
                if spec.frozen and frozen_img is not None:
                    vw.write(frozen_img)
                    continue
                img = canvas.background(k, _frame_palette(k, cuts), spec.frozen or not spec.texture_drift)
                for s, (az, el), rad in zip(spec.sources, paths, radii, strict=True):
                    if s.visible:
                        canvas.disc(img, float(az[k]), float(el[k]), float(rad[k]), s.color)
                if spec.frozen:
                    frozen_img = img
                vw.write(img)
        mux_foa(vtmp, foa, spec.sr, video, spatial_metadata=spec.spatial_metadata)
        foa_path = None
        if keep_foa_wav:
            foa_path = write_audio(out / f"{spec.scene_id}_foa.wav", foa, spec.sr)
        td = truth_dict(spec, sigs, video.name)
        if foa_path is not None:
            td["foa_wav"] = foa_path.name
        atomic.write_text(truth, json.dumps(td, indent=1, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ScenePaths(video=video, truth_json=truth, foa_wav=foa_path)


# make_scene's format options, as random_scene_spec's defaults: the spatial-bench world takes only these
_FORMAT_DEFAULTS: dict = {"duration": 10.0, "size": (1920, 960), "fps": 30.0, "sr": 48000, "spatial_metadata": True}


def make_scene(
    out_dir: str | os.PathLike,
    scene_id: str,
    seed: int,
    *,
    keep_foa_wav: bool = False,
    world: str = "demo",
    index: int = 0,
    **options,
) -> ScenePaths:
    """Draw a scene from ``seed`` and render it; ``options`` are :func:`random_scene_spec`'s
    (duration, size, fps, sr, n_sources, ambience, static_source, silent, frozen, speech_wav,
    spatial_metadata, cuts_s).

    ``world="spatial-bench"``: the hard spatial world of :mod:`biaudio.synth_bench` instead (scene
    type from ``index``; of the options only the format ones, ``_FORMAT_DEFAULTS``, apply)."""
    if world != "demo":
        from biaudio.synth_bench import bench_scene_spec

        fmt = {k: options.get(k, v) for k, v in _FORMAT_DEFAULTS.items()}
        spec = bench_scene_spec(scene_id, seed, index, world=world, **fmt)
    else:
        spec = random_scene_spec(scene_id, seed, **options)
    return render_scene(spec, out_dir, keep_foa_wav=keep_foa_wav)


def scene_seed(seed: int, index: int) -> int:
    """Per-scene seed: independent streams for scene i of a run seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def scene_name(index: int) -> str:
    """Id of scene ``index`` of a run: ``scene_0000``, ``scene_0001``, ... (the build uses the same)."""
    return f"scene_{int(index):04d}"


def iter_scenes(out_dir: str | os.PathLike, n: int, seed: int, **kwargs) -> Iterator[tuple[str, int, ScenePaths]]:
    """Make ``n`` scenes one by one, yielding ``(scene_id, scene seed, paths)`` as each is written."""
    for i in range(int(n)):
        s = scene_seed(seed, i)
        yield scene_name(i), s, make_scene(out_dir, scene_name(i), s, index=i, **kwargs)


def make_scenes(out_dir: str | os.PathLike, n: int, seed: int, **kwargs) -> list[ScenePaths]:
    """``n`` scenes ``scene_0000..`` with seeds derived from ``seed`` (keyword args as make_scene)."""
    return [p for _, _, p in iter_scenes(out_dir, n, seed, **kwargs)]


def load_truth(path: str | os.PathLike) -> dict:
    """Read a ground-truth JSON (see :func:`truth_dict` for the fields)."""
    with open(path) as f:
        d = json.load(f)
    if d.get("version") != TRUTH_VERSION:
        raise ValueError(f"{path}: unsupported truth version {d.get('version')}")
    return d


def truth_directions(truth: dict, source: int | str = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, az, el)`` arrays of one source of a loaded truth dict."""
    src = (
        truth["sources"][source]
        if isinstance(source, int)
        else next(s for s in truth["sources"] if s["name"] == source)
    )
    f = src["frames"]
    return (
        np.array([x["t"] for x in f]),
        np.array([x["azimuth_deg"] for x in f]),
        np.array([x["elevation_deg"] for x in f]),
    )


# ----------------------------------------------------------------------------------- flashes


@dataclass
class FlashScene:
    """A video-only 360° scene for shot detection: textured equirect shots that pan by
    ``pan_deg_per_frame``, hard ``cuts`` and an optional ``dissolve=(first_frame, frames)`` between shots,
    and light that is not a cut: ``flashes=[(first_frame, frames), ...]`` brighten the whole frame
    (gain ``flash_gain`` plus ``flash_offset`` grey levels, clipped to white where it saturates, as
    lightning, a strobe or an exposure jump does) and ``bursts=[(first_frame, frames, azimuth_deg),
    ...]`` are fireworks: a coloured glow above the horizon that blooms and fades while the sky lights
    up a little. ``exposure=[(frame, gain), ...]``: from that frame on the picture keeps that gain (an
auto-exposure step; steps multiply). ``noise``: std of Gaussian sensor noise in grey levels. Frame
indices count from 0 at ``fps``."""

    n_frames: int
    fps: float = 25.0
    size: tuple[int, int] = (320, 160)
    cuts: list[int] = field(default_factory=list)
    dissolve: tuple[int, int] | None = None
    flashes: list[tuple[int, int]] = field(default_factory=list)
    bursts: list[tuple[int, int, float]] = field(default_factory=list)
    flash_gain: float = 1.6
    flash_offset: float = 60.0
    exposure: list[tuple[int, float]] = field(default_factory=list)
    pan_deg_per_frame: float = 0.25
    noise: float = 0.0
    seed: int = 0

    def boundaries(self) -> list[int]:
        """First frame of each new shot (a dissolve's shot starts with its first blended frame)."""
        return sorted([*self.cuts, *([self.dissolve[0]] if self.dissolve else [])])

    def _texture(self, k: int) -> np.ndarray:
        W, H = self.size
        rng = np.random.default_rng([self.seed, k])
        az = (np.arange(W) + 0.5) / W * 2 * np.pi
        el = (0.5 - (np.arange(H) + 0.5) / H) * np.pi
        A, E = np.meshgrid(az, el)
        img = np.zeros((H, W, 3))
        for c in range(3):
            tex = sum(rng.uniform(0.3, 1) * np.sin(int(rng.integers(1, 9)) * A + rng.uniform(1, 6) * E + rng.uniform(0, 6.3))
                      for _ in range(5))
            img[..., c] = tex
        img = (img - img.min()) / (np.ptp(img) + 1e-9)
        return 30 + 150 * img * rng.uniform(0.5, 1.0, 3)

    def frames(self) -> Iterator[np.ndarray]:
        """RGB uint8 frames ``(h, w, 3)``."""
        W, H = self.size
        bounds = self.boundaries()
        tex = [self._texture(k) for k in range(len(bounds) + 1)]
        el = (0.5 - (np.arange(H) + 0.5) / H) * 180.0
        az = (np.arange(W) + 0.5) / W * 360.0
        rng = np.random.default_rng([self.seed, 99])
        for f in range(self.n_frames):
            k = sum(1 for b in bounds if f >= b)
            shift = int(round(f * self.pan_deg_per_frame * W / 360.0))
            img = np.roll(tex[k], shift, axis=1)
            if self.dissolve and self.dissolve[0] <= f < self.dissolve[0] + self.dissolve[1]:
                a = (f - self.dissolve[0] + 1) / (self.dissolve[1] + 1)
                img = (1 - a) * np.roll(tex[k - 1], shift, axis=1) + a * img
            for s, n, baz in self.bursts:
                if s <= f < s + n:
                    life = (f - s) / max(1, n)
                    r = 25.0 + 25.0 * life  # degrees, blooming
                    d2 = ((((az - baz + 180) % 360) - 180)[None, :] ** 2 + (el - 20.0)[:, None] ** 2) / r**2
                    glow = 255.0 * np.exp(-3.0 * life) * np.exp(-d2)[..., None] * np.array([1.0, 0.7, 0.35])
                    img = img * (1 + 0.6 * np.exp(-3.0 * life)) + glow
            if any(s <= f < s + n for s, n in self.flashes):
                img = img * self.flash_gain + self.flash_offset
            for s, g in self.exposure:
                if f >= s:
                    img = img * g
            if self.noise:
                img = img + rng.normal(0.0, self.noise, img.shape)
            yield np.clip(img, 0, 255).astype(np.uint8)

    def write(self, path: str | os.PathLike) -> Path:
        """Encode to H.264 (no audio: shot detection only needs the picture)."""
        from biaudio.media.video import VideoWriter

        W, H = self.size
        with VideoWriter(path, W, H, self.fps, crf=18, preset="ultrafast") as vw:
            for img in self.frames():
                vw.write(img)
        return Path(path)


@dataclass
class BusyScene(FlashScene):
    """A :class:`FlashScene` with motion that is neither a cut nor a dissolve: ``water`` (share of
    the picture height below the horizon) ripples with waves running at different speeds (its
    texture a second later is unrelated to now), and ``movers=[(first_frame, elevation_deg,
    deg_per_frame), ...]`` are dark figures, 20 x 30 degrees, crossing the picture from azimuth 0."""

    water: float = 0.0
    movers: list[tuple[int, float, float]] = field(default_factory=list)

    def frames(self) -> Iterator[np.ndarray]:
        W, H = self.size
        az = (np.arange(W) + 0.5) / W * 2 * np.pi
        el = (0.5 - (np.arange(H) + 0.5) / H) * 180.0
        A, E = np.meshgrid(az, np.deg2rad(el))
        rng = np.random.default_rng([self.seed, 7])
        waves = [(int(rng.integers(3, 40)), rng.uniform(10, 60), rng.uniform(0.1, 0.6) * rng.choice([-1, 1]), rng.uniform(0, 6.3))
                 for _ in range(8)]
        rows = slice(H // 2, H // 2 + int(round(self.water * H)))
        for f, img in enumerate(super().frames()):
            out = img.astype(np.float32)
            if self.water > 0:
                w = sum(np.sin(kx * A[rows] + ke * E[rows] - sp * f + ph) for kx, ke, sp, ph in waves)
                out[rows] = (90 + 18 * w)[..., None] * np.array([0.6, 0.8, 1.0])
            for s, m_el, speed in self.movers:
                if f >= s:
                    c = ((f - s) * speed) % 360.0
                    d_az = np.abs(((np.rad2deg(az) - c + 180) % 360) - 180)
                    mask = (d_az[None, :] < 10) & (np.abs(el - m_el)[:, None] < 15)
                    out[mask] = 25.0
            yield np.clip(out, 0, 255).astype(np.uint8)
