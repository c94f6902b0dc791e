"""Systems compared by ``visaudio eval``: the model, its baselines, floors and upper bounds.

* ``visaudio``: the end-to-end model (F's ``Synthesizer``) from ``--ckpt``.
* ``reference``: the binaural ground truth rendered from the FOA (upper bound; scores itself).
* ``swapped-reference``: the ground truth with ears swapped: a lower bound on direction that
  keeps every non-directional property perfect (timbre, width, coherence).
* ``mono-duplicated-reference``: the mid of the reference in both ears (the FAIR-Play floor).
* ``mono``: the same generator trained on the mid channel (``data.channels: mono``), its output
  collapsed to the mid and duplicated: what a model without spatial training gives.
* ``two-stage``: the pipeline the paper argues against: the mono model's output, spatialised with
  an HRTF along a direction estimated from the VIDEO ALONE (``estimate_video_azimuth``).
* ``two-stage-sync``: the strongest two-stage we build offline: the same mono output, spatialised
  along a direction found by AUDIO-VISUAL SYNCHRONY with camera-motion compensation
  (``sync_azimuth_from_frames``): it picks the picture region whose size/brightness follows the
  generated sound's loudness, keeps that direction fixed in the world while the camera turns (the
  camera's yaw is estimated from the picture's global motion), so a source that leaves the view
  is still panned to where it went. Falls back to the saliency estimate where nothing is in sync.

The two-stage direction estimate (documented because it decides the baseline's strength): frames
are read at 10 fps, 96 px wide, RGB. Per frame, a saliency map = colour-contrast saliency
(frequency-tuned, Achanta et al. 2009: distance of each blurred pixel from the frame's mean colour
in an opponent colour space; coloured objects against the scene win) times (1 + normalised
absolute frame difference) (moving things count more). The column profile of that map, smoothed
over ~4 % of the width, gives the horizontal position of the strongest salient/moving region (no
clear peak -> the centre); the pixel column maps to camera azimuth through the pinhole model
``az = -atan((x - cx) / cx * tan(hfov / 2))`` (+ = left, the project's convention); the per-frame
azimuths are median-filtered over 5 frames. Sources outside the picture cannot be found this way:
that is the weakness of the two-stage design, not of the evaluation. Then the mono signal is encoded as a first-order
ambisonic plane wave along that (time-varying) azimuth and decoded with the KEMAR MagLS decoder of
``biaudio.spatial.decoders``; if that module is unavailable, a plain ITD + ILD panner
(``itd_ild_pan``: Woodworth ITD, broadband head-shadow ILD) is used and the system says so in
its ``spatialiser`` note.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, signal

log = logging.getLogger(__name__)

ALL_SYSTEMS = ["visaudio", "mono", "two-stage", "two-stage-sync", "reference", "swapped-reference",
               "mono-duplicated-reference"]
REFERENCE_SYSTEMS = {"reference", "swapped-reference", "mono-duplicated-reference"}
MODEL_SYSTEMS = {"visaudio", "mono", "two-stage", "two-stage-sync"}
TWO_STAGE_SYSTEMS = ["two-stage", "two-stage-sync"]

HEAD_RADIUS_M = 0.0875
SPEED_OF_SOUND = 343.0


def mid(x: np.ndarray) -> np.ndarray:
    """Mid channel (L+R)/2 of a (2, T) signal."""
    return 0.5 * (np.asarray(x)[0] + np.asarray(x)[1])


def duplicate(m: np.ndarray) -> np.ndarray:
    return np.stack([m, m]).astype(np.float32)


def reference_system(name: str, ref: np.ndarray) -> np.ndarray:
    """The systems derived from the reference itself (no model needed)."""
    if name == "reference":
        return ref.astype(np.float32)
    if name == "swapped-reference":
        return ref[::-1].copy().astype(np.float32)
    if name == "mono-duplicated-reference":
        return duplicate(mid(ref))
    raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Spatialisers
# --------------------------------------------------------------------------------------------


def itd_ild_pan(x: np.ndarray, sr: int, az_deg: float | np.ndarray, max_ild_db: float = 10.0) -> np.ndarray:
    """Fallback spatialiser: Woodworth ITD + broadband sine-law ILD; (T,) -> (2, T).

    Deliberately simple (no spectral head shadow, no pinna): used for the two-stage baseline only
    when the HRTF decoder is missing, and by tests to build binaural signals with known geometry.
    ``az_deg`` may be per-sample. +az = left: the left ear leads and is louder.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    az = np.broadcast_to(np.asarray(az_deg, dtype=np.float64), (n,))
    lat = np.sin(np.deg2rad(az))
    theta = np.arcsin(np.clip(lat, -1, 1))
    itd = HEAD_RADIUS_M / SPEED_OF_SOUND * (theta + np.sin(theta))  # s, + = left leads
    t = np.arange(n, dtype=np.float64)
    # each ear hears the source delayed by half the ITD relative to the head centre
    d_left = -0.5 * itd * sr
    d_right = 0.5 * itd * sr
    left = np.interp(t - d_left - 0.5 * 0.00066 * sr, t, x, left=0.0, right=0.0)
    right = np.interp(t - d_right - 0.5 * 0.00066 * sr, t, x, left=0.0, right=0.0)
    g = 10 ** (max_ild_db * lat / 40.0)  # ILD(dB) = max_ild_db * sin(az)
    return np.stack([left * g, right / g])


@dataclass
class Spatialiser:
    """Renders a mono signal along a per-sample camera-frame azimuth to binaural (2, T)."""

    name: str
    sr: int

    def __call__(self, x: np.ndarray, az_deg: np.ndarray) -> np.ndarray:
        if self.name == "itd-ild-panner":
            return itd_ild_pan(x, self.sr, az_deg)
        from biaudio.spatial import decoders, foa

        dec = decoders.get_decoder(hrtf="kemar", kind="magls", sr=self.sr)
        b = foa.encode(np.asarray(x, np.float64), np.asarray(az_deg, np.float64), np.zeros(len(x)))
        return np.asarray(dec.decode(b), dtype=np.float64)


def make_spatialiser(sr: int) -> Spatialiser:
    """KEMAR MagLS via FOA when ``biaudio.spatial.decoders`` works, else the named fallback."""
    try:
        from biaudio.spatial import decoders

        decoders.get_decoder(hrtf="kemar", kind="magls", sr=sr)
        return Spatialiser("foa-kemar-magls", sr)
    except Exception as e:  # noqa: BLE001 - any failure means "fall back", and we say so
        log.warning("HRTF decoder unavailable (%s); two-stage uses the ITD+ILD panner", e)
        return Spatialiser("itd-ild-panner", sr)


# --------------------------------------------------------------------------------------------
# Direction from the video alone
# --------------------------------------------------------------------------------------------


def colour_contrast_saliency(rgb: np.ndarray) -> np.ndarray:
    """Frequency-tuned saliency (Achanta et al. 2009) in an opponent colour space, in [0, 1].

    Distance of each (slightly blurred) pixel from the frame's mean colour: objects that stand out
    from the scene's dominant colour win. Opponent axes (R-G, (R+G)/2-B) count fully, luminance at
    a quarter, so texture and grid lines matter less than coloured objects.
    """
    x = np.asarray(rgb, dtype=np.float64) / 255.0
    L = x.mean(axis=-1)
    a = x[..., 0] - x[..., 1]
    b = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    sig = max(1.0, x.shape[1] / 100)
    chans = [ndimage.gaussian_filter(c, sig) for c in (L, a, b)]
    w = (0.25, 1.0, 1.0)
    sal = sum(wi * (c - c.mean()) ** 2 for wi, c in zip(w, chans, strict=True))
    return sal / (sal.max() + 1e-12)


@dataclass
class VideoDirection:
    """Per-frame camera-frame azimuth estimated from pixels only."""

    t: np.ndarray
    azimuth_deg: np.ndarray
    column: np.ndarray
    width: int


def azimuth_from_frames(frames: np.ndarray, fps: float, hfov_deg: float) -> VideoDirection:
    """(F, H, W, 3) rgb uint8 frames -> per-frame azimuth of the strongest salient/moving region.

    A frame with no clear peak (column profile maximum < 1.5x its median) gets azimuth 0: the
    pipeline has nothing to point at and falls back to the centre, as a real two-stage system would.
    """
    fr = np.asarray(frames)
    n, _, w = fr.shape[:3]
    gray = fr.astype(np.float64).mean(axis=-1) / 255.0 if fr.ndim == 4 else fr.astype(np.float64) / 255.0
    cols = np.full(n, w / 2.0)
    prev = gray[0]
    for i in range(n):
        sal = colour_contrast_saliency(fr[i]) if fr.ndim == 4 else np.abs(gray[i] - gray[i].mean())
        motion = np.abs(gray[i] - prev)
        prev = gray[i]
        motion = motion / (motion.max() + 1e-9) if motion.max() > 1e-3 else np.zeros_like(motion)
        prof = ndimage.gaussian_filter1d((sal * (1.0 + motion)).sum(axis=0), sigma=max(1.0, 0.04 * w))
        if prof.max() > 1.5 * (np.median(prof) + 1e-12):
            cols[i] = int(np.argmax(prof)) + 0.5
    cols = signal.medfilt(cols, kernel_size=5) if n >= 5 else cols
    cx = w / 2.0
    az = -np.rad2deg(np.arctan((cols - cx) / cx * np.tan(np.deg2rad(hfov_deg) / 2)))
    return VideoDirection(np.arange(n) / fps, az, cols, w)


def estimate_video_azimuth(video_path: str | Path, hfov_deg: float, duration_s: float | None = None,
                           fps: float = 10.0, width: int = 96) -> VideoDirection:
    """Read a perspective clip (small, ``fps``) and estimate the source azimuth per frame."""
    from biaudio.media.probe import probe
    from biaudio.media.video import iter_frames

    info = probe(video_path)
    h = max(2, int(round(width * (info.height or 9) / (info.width or 16) / 2)) * 2)
    frames = np.stack(list(iter_frames(video_path, size=(width, h), fps=fps, duration_s=duration_s)))
    return azimuth_from_frames(frames, fps, hfov_deg)


def two_stage(mono_audio: np.ndarray, sr: int, direction: VideoDirection,
              spatialiser: Spatialiser | None = None) -> tuple[np.ndarray, str]:
    """Mono generation (its mid) spatialised along the video-estimated azimuth; returns (2,T), name."""
    m = mid(mono_audio) if np.ndim(mono_audio) == 2 else np.asarray(mono_audio)
    sp = spatialiser or make_spatialiser(sr)
    t = np.arange(len(m)) / sr
    az = np.interp(t, direction.t, direction.azimuth_deg)
    out = sp(m, az)
    # keep the mono signal's loudness: the metrics normalise anyway, caches should look sane
    rms_in = np.sqrt(np.mean(m**2)) + 1e-12
    out = out * (rms_in / (np.sqrt(np.mean(out**2)) + 1e-12))
    return out.astype(np.float32), sp.name


# --------------------------------------------------------------------------------------------
# Direction from audio-visual synchrony (the stronger two-stage baseline)
# --------------------------------------------------------------------------------------------


def global_shift_px(a: np.ndarray, b: np.ndarray, max_frac: float = 0.125) -> float:
    """Horizontal shift (pixels, + = content moved right) from gray frame ``a`` to ``b`` by phase
    correlation of the mean-removed, windowed frames (peak searched within ``max_frac`` of the
    frame size), with a parabolic sub-pixel peak."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    h, w = a.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    A = np.fft.fft2((a - a.mean()) * win)
    Bf = np.fft.fft2((b - b.mean()) * win)
    R = Bf * np.conj(A)
    R /= np.abs(R) + 1e-12
    c = np.real(np.fft.ifft2(R))
    # search only plausible frame-to-frame shifts (a periodic pattern, e.g. a grid, aliases far ones)
    dxs = np.minimum(np.arange(w), w - np.arange(w))
    dys = np.minimum(np.arange(h), h - np.arange(h))
    cm = np.where((dys[:, None] <= max_frac * h) & (dxs[None, :] <= max_frac * w), c, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(cm)), c.shape)
    x0, xm, xp = c[iy, ix], c[iy, (ix - 1) % w], c[iy, (ix + 1) % w]
    den = xm - 2 * x0 + xp
    frac = 0.5 * (xm - xp) / den if abs(den) > 1e-12 else 0.0
    dx = ix + frac
    return float(dx - w if dx > w / 2 else dx)


def camera_yaw_from_frames(frames: np.ndarray, hfov_deg: float, max_chroma: float = 0.25) -> np.ndarray:
    """Camera yaw (deg, relative to the first frame, + = turned left) from the picture's global
    horizontal motion: content moving right by dx pixels near the centre = a left turn of
    ``atan(dx / f)`` with the pinhole focal length ``f = (W/2) / tan(hfov/2)``.

    ``frames`` (F, H, W, 3) rgb or (F, H, W) gray in [0, 1] / uint8. Strongly coloured pixels
    (chroma > ``max_chroma``) are replaced by the frame's mean grey first: a large object that
    moves by itself would otherwise win the phase correlation and pass for the camera."""
    fr = np.asarray(frames, dtype=np.float64)
    if fr.max() > 1.5:
        fr = fr / 255.0
    if fr.ndim == 4:
        gray = fr.mean(axis=-1)
        chroma = fr.max(axis=-1) - fr.min(axis=-1)
        mask = ndimage.binary_dilation(chroma > max_chroma, structure=np.ones((1, 5, 5), bool))
        gray = np.where(mask, gray.mean(axis=(1, 2), keepdims=True), gray)
    else:
        gray = fr
    n, _, w = gray.shape
    f = (w / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2)
    d = [0.0] + [float(np.rad2deg(np.arctan(global_shift_px(gray[i - 1], gray[i]) / f))) for i in range(1, n)]
    return np.cumsum(d)


def frame_loudness_db(audio: np.ndarray, sr: int, n_frames: int, fps: float) -> np.ndarray:
    """RMS level (dB) of a mono signal per video frame interval [k/fps, (k+1)/fps)."""
    x = np.asarray(audio, np.float64)
    hop = sr / fps
    out = np.empty(n_frames)
    for k in range(n_frames):
        seg = x[int(round(k * hop)): int(round((k + 1) * hop))]
        out[k] = 10 * np.log10(np.mean(seg**2) + 1e-10) if seg.size else -100.0
    return out


def sync_azimuth_from_frames(frames: np.ndarray, fps: float, hfov_deg: float, audio: np.ndarray, sr: int,
                             window_s: float = 2.0, min_corr: float = 0.5, bin_deg: float = 3.0) -> VideoDirection:
    """(F, H, W, 3) frames + the mono sound -> per-frame camera azimuth of the sounding object.

    Per frame, the colour-saliency column profile is resampled onto WORLD azimuth bins (camera
    azimuth of each column by the pinhole model, plus the camera yaw estimated from the picture's
    global motion). In sliding windows of ``window_s`` the bin whose saliency mass correlates best
    with the sound's frame loudness (Pearson, over the frames the bin is in view) is the source;
    below ``min_corr`` the previous window's world direction is kept (or, before any, the saliency
    estimate is used). The world direction is then rotated back into the camera per frame, so it
    leaves the picture when the camera turns away.
    """
    fr = np.asarray(frames)
    n, _, w = fr.shape[:3]
    yaw = camera_yaw_from_frames(fr, hfov_deg)
    sal_dir = azimuth_from_frames(fr, fps, hfov_deg)
    f = (w / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2)
    az_cols = -np.rad2deg(np.arctan(((np.arange(w) + 0.5) - w / 2.0) / f))
    nb = int(round(360 / bin_deg))
    Q = np.full((n, nb), np.nan)
    for i in range(n):
        prof = colour_contrast_saliency(fr[i]).sum(axis=0)
        b = np.floor(((az_cols + yaw[i]) % 360.0) / bin_deg).astype(int) % nb
        acc = np.bincount(b, weights=prof, minlength=nb)
        cnt = np.bincount(b, minlength=nb)
        Q[i, cnt > 0] = acc[cnt > 0] / cnt[cnt > 0]
    # a little spatial smoothing over bins (a disc spans several)
    Qs = np.where(np.isfinite(Q), Q, 0.0)
    Ws = ndimage.uniform_filter1d(np.isfinite(Q).astype(float), 3, axis=1, mode="wrap")
    Qs = ndimage.uniform_filter1d(Qs, 3, axis=1, mode="wrap") / np.maximum(Ws, 1e-9)
    Qs[~np.isfinite(Q)] = np.nan
    loud = frame_loudness_db(audio, sr, n, fps)
    half = max(2, int(round(window_s * fps / 2)))
    world = np.full(n, np.nan)
    last = np.nan
    for i in range(n):
        a, b = max(0, i - half), min(n, i + half + 1)
        e = loud[a:b]
        best, best_c = np.nan, min_corr
        if np.std(e) > 1e-6:
            win = Qs[a:b]
            seen = np.isfinite(win).sum(axis=0)
            level = np.where(seen > 0, np.nansum(win, axis=0) / np.maximum(seen, 1), 0.0)
            for k in range(nb):
                q = win[:, k]
                ok = np.isfinite(q)
                # candidates: salient objects (not background texture) seen for most of the window
                if ok.sum() < max(4, int(0.8 * (b - a))) or level[k] < 0.3 * level.max() or np.std(q[ok]) < 1e-9:
                    continue
                c = np.corrcoef(q[ok], e[ok])[0, 1]
                if c > best_c:
                    best, best_c = (k + 0.5) * bin_deg, c
        if np.isfinite(best):
            last = best
        world[i] = last
    az = np.where(np.isfinite(world), ((world - yaw + 180.0) % 360.0) - 180.0, sal_dir.azimuth_deg)
    if n >= 5:
        # median over the unwrapped track (no jump across +-180)
        az = ((signal.medfilt(np.rad2deg(np.unwrap(np.deg2rad(az))), 5) + 180.0) % 360.0) - 180.0
    cols = w / 2.0 - f * np.tan(np.deg2rad(np.clip(az, -89.0, 89.0)))
    return VideoDirection(np.arange(n) / fps, az, cols, w)


def estimate_sync_azimuth(video_path: str | Path, hfov_deg: float, audio: np.ndarray, sr: int,
                          duration_s: float | None = None, fps: float = 10.0, width: int = 96) -> VideoDirection:
    """Read a perspective clip (small, ``fps``) and locate the sounding object by synchrony."""
    from biaudio.media.probe import probe
    from biaudio.media.video import iter_frames

    info = probe(video_path)
    h = max(2, int(round(width * (info.height or 9) / (info.width or 16) / 2)) * 2)
    frames = np.stack(list(iter_frames(video_path, size=(width, h), fps=fps, duration_s=duration_s)))
    return sync_azimuth_from_frames(frames, fps, hfov_deg, audio, sr)
