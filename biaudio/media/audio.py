"""Audio decode that never remixes, and atomic wav/flac writing.

Why so strict: ffmpeg silently remixes channels whenever a layout option is given (``-ac 4`` on a
"quad" file, ``-channel_layout quad`` on "4.0") and an FOA file then decodes with plausible-looking
but wrong directions. So ``decode_audio`` passes **no** layout option at all (``-map 0:a:N -f
f32le -acodec pcm_f32le -``), takes the channel count from ffprobe and only ever resamples (``-ar``),
which ffmpeg does per channel.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from biaudio.errors import MediaError
from biaudio.media.probe import probe

_TRUNC_MARKERS = ("file ended prematurely", "truncat", "invalid data found", "partial file", "end of file")


def build_decode_cmd(path: str | os.PathLike, sr: int | None = None, stream: int = 0) -> list[str]:
    """The exact ffmpeg command line ``decode_audio`` runs (exposed so tests can assert on it)."""
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-v",
        "warning",
        "-i",
        str(path),
        "-map",
        f"0:a:{stream}",
        "-vn",
    ]
    if sr is not None:
        cmd += ["-ar", str(int(sr))]
    cmd += ["-f", "f32le", "-acodec", "pcm_f32le", "-"]
    return cmd


def decode_audio(path: str | os.PathLike, sr: int | None = None, stream: int = 0) -> tuple[np.ndarray, int]:
    """Decode audio stream ``stream`` to float32 ``(C, T)`` with its own channel order.

    Raises MediaError: missing/empty/unreadable/truncated (from probe or ffmpeg), ``no_audio``,
    ``zero_length``, ``non_finite`` (NaN/Inf samples).
    """
    p = Path(path)
    info = probe(p)
    if not info.has_audio or info.n_audio_streams <= stream:
        raise MediaError(str(p), "no_audio", f"no audio stream {stream}")
    a = [s for s in info.raw.get("streams", []) if s.get("codec_type") == "audio"][stream]
    channels = int(a.get("channels") or 0)
    if channels <= 0:
        raise MediaError(str(p), "unreadable", "ffprobe reports no channel count")
    src_sr = int(a.get("sample_rate") or 0)
    out_sr = int(sr) if sr else src_sr
    if out_sr <= 0:
        raise MediaError(str(p), "unreadable", "unknown sample rate")
    r = subprocess.run(build_decode_cmd(p, sr, stream), capture_output=True)
    err = r.stderr.decode("utf-8", "replace")
    low = err.lower()
    if r.returncode != 0:
        reason = "truncated" if any(m in low for m in _TRUNC_MARKERS) else "undecodable"
        raise MediaError(
            str(p), reason, err.strip().splitlines()[-1] if err.strip() else f"ffmpeg exit {r.returncode}"
        )
    if any(m in low for m in _TRUNC_MARKERS):
        raise MediaError(str(p), "truncated", err.strip().splitlines()[-1])
    buf = r.stdout
    if len(buf) % (4 * channels):
        raise MediaError(
            str(p), "truncated", f"{len(buf)} bytes is not a whole number of {channels}-channel frames"
        )
    x = np.frombuffer(buf, dtype="<f4").reshape(-1, channels).T.copy()
    if x.shape[1] == 0:
        raise MediaError(str(p), "zero_length", "decoded no samples")
    # a container that claims much more than was decoded lost its tail
    adur = None
    try:
        adur = float(a.get("duration")) if a.get("duration") else None
    except ValueError:
        adur = None
    if adur and adur > 1.0 and x.shape[1] / out_sr < 0.9 * adur - 0.5:
        raise MediaError(str(p), "truncated", f"decoded {x.shape[1] / out_sr:.2f} s of {adur:.2f} s")
    bad = ~np.isfinite(x)
    if bad.any():
        ch, idx = np.nonzero(bad)
        raise MediaError(
            str(p),
            "non_finite",
            f"{int(bad.sum())} NaN/Inf samples (first: channel {ch[0]}, sample {idx[0]})",
        )
    return x, out_sr


def _umask() -> int:
    um = os.umask(0)
    os.umask(um)
    return um


def write_audio(path: str | os.PathLike, audio: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    """Write ``(C, T)`` audio as wav or flac (by suffix) via a temp file + ``os.replace``.

    Default subtypes: FLOAT for wav (no clipping of FOA sums above 1), PCM_24 for flac (flac has
    no float); flac input is clipped to [-1, 1] first since soundfile would wrap otherwise.
    """
    import soundfile as sf

    p = Path(path)
    x = np.asarray(audio)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"audio must be (C, T), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise MediaError(str(p), "non_finite", "refusing to write NaN/Inf samples")
    suffix = p.suffix.lower()
    if suffix == ".wav":
        fmt, sub = "WAV", subtype or "FLOAT"
    elif suffix == ".flac":
        fmt, sub = "FLAC", subtype or "PCM_24"
        x = np.clip(x, -1.0, 1.0)
    else:
        raise ValueError(f"write_audio supports .wav and .flac, not {suffix!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}-", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        sf.write(
            tmp, x.T.astype(np.float32 if sub == "FLOAT" else np.float64), int(sr), format=fmt, subtype=sub
        )
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def decode_foa(path: str | os.PathLike, sr: int | None = None, stream: int = 0) -> tuple[np.ndarray, int]:
    """``decode_audio`` that insists on exactly 4 channels (first-order ambisonics).

    Raises ``MediaError(not_4_channels)`` instead of guessing: a stereo or 5.1 file is never
    silently padded or remixed into FOA. The channel *convention* is the caller's business.
    """
    info = probe(path)
    if not info.has_audio:
        raise MediaError(str(path), "no_audio", "no audio stream")
    if info.audio_channels != 4:
        raise MediaError(
            str(path), "not_4_channels", f"{info.audio_channels} channels ({info.audio_layout}); FOA needs 4"
        )
    return decode_audio(path, sr=sr, stream=stream)
