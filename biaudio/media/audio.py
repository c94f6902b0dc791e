"""Audio decode that never remixes, and atomic wav/flac writing.

Why so strict: ffmpeg silently remixes channels whenever a layout option is given (``-ac 4`` on a
"quad" file, ``-channel_layout quad`` on "4.0") and an FOA file then decodes with plausible-looking
but wrong directions. So ``decode_audio`` passes **no** layout option at all (``-map 0:a:N -f
f32le -acodec pcm_f32le -``), takes the channel count from ffprobe and only ever resamples (``-ar``),
which ffmpeg does per channel.

Windows (``start_s`` / ``duration_s``) are cut with ``-ss`` / ``-t`` placed *after* ``-i`` (output
options): ffmpeg then decodes from the start and drops samples by decoded timestamp, which is
sample-exact against a full decode (checked for AAC and Opus; input-side ``-ss`` seeks to a packet
and was off by hundreds of samples on AAC). It costs a decode of the skipped head, which for audio
is cheap. Matroska/Vorbis timestamps are millisecond-rounded, so there the cut can sit a few
samples off the full decode's sample index.

``AUDIO_DECODES`` counts every ffmpeg run that decodes an audio stream (here and in
``biaudio.media.multidecode.shared_decode``) per resolved path: a plain counter, so tests can prove that a
source's FOA is decoded once without mocking ffmpeg.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import ffmpeg
import numpy as np

from biaudio.atomic import atomic_path, file_mode
from biaudio.errors import MediaError
from biaudio.media.ffgraph import command, run, source
from biaudio.media.probe import probe

AUDIO_DECODES: Counter[str] = Counter()


def count_audio_decode(path: str | os.PathLike) -> None:
    """Record one ffmpeg audio decode of ``path`` in :data:`AUDIO_DECODES`."""
    AUDIO_DECODES[str(Path(path).resolve())] += 1


def _ts(x: float) -> str:
    return f"{float(x):.6f}"


_TRUNC_MARKERS = ("file ended prematurely", "truncat", "invalid data found", "partial file", "end of file")


def build_decode_cmd(path: str | os.PathLike, sr: int | None = None, stream: int = 0,
                     start_s: float | None = None, duration_s: float | None = None) -> list[str]:
    """The exact ffmpeg command line ``decode_audio`` runs (exposed so tests can assert on it).

    ``-ss`` / ``-t`` come after ``-i`` (output options: decode, then drop by timestamp), so the
    window is sample-accurate; never a layout option.
    """
    opts: dict[str, str | None] = {"vn": None}
    if start_s:
        opts["ss"] = _ts(start_s)
    if duration_s is not None:
        opts["t"] = _ts(duration_s)
    if sr is not None:
        opts["ar"] = str(int(sr))
    out = ffmpeg.output(source(path)[f"a:{stream}"], "-", **opts, f="f32le", acodec="pcm_f32le")
    return command(out, loglevel="warning")


def decode_audio(path: str | os.PathLike, sr: int | None = None, stream: int = 0, start_s: float | None = None,
                 duration_s: float | None = None, info=None) -> tuple[np.ndarray, int]:
    """Decode audio stream ``stream`` to float32 ``(C, T)`` with its own channel order.

    ``start_s`` / ``duration_s``: only that window of the source (sample-accurate, see the module
    doc); at most ``round(duration_s * sr)`` samples come back. ``info``: the file's ProbeInfo when
    the caller already has it (saves an ffprobe run).

    Raises MediaError: missing/empty/unreadable/truncated (from probe or ffmpeg), ``no_audio``,
    ``zero_length``, ``non_finite`` (NaN/Inf samples), ``bad_window`` (negative start or duration).
    """
    p = Path(path)
    if (start_s is not None and start_s < 0) or (duration_s is not None and duration_s <= 0):
        raise MediaError(str(p), "bad_window", f"start_s={start_s} duration_s={duration_s}")
    info = info if info is not None else probe(p)
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
    count_audio_decode(p)
    r = run(build_decode_cmd(p, sr, stream, start_s, duration_s), capture_output=True)
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
    x = np.frombuffer(buf, dtype="<f4").reshape(-1, channels).T
    if duration_s is not None:
        x = x[:, : int(round(duration_s * out_sr))]
    x = x.copy()
    if x.shape[1] == 0:
        raise MediaError(str(p), "zero_length", "decoded no samples" + (f" from {start_s} s" if start_s else ""))
    # a container that claims much more than was decoded lost its tail
    adur = None
    try:
        adur = float(a.get("duration")) if a.get("duration") else None
    except ValueError:
        adur = None
    if adur is not None:  # the part of the stream the window asks for
        adur = max(0.0, adur - float(start_s or 0.0))
        if duration_s is not None:
            adur = min(adur, float(duration_s))
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
    # encoded in memory, written by Python: a full disk is then an OSError with its errno
    # (libsndfile itself reports only "System error."), which the build treats as a write failure
    buf = io.BytesIO()
    sf.write(buf, x.T.astype(np.float32 if sub == "FLOAT" else np.float64), int(sr), format=fmt, subtype=sub)
    with atomic_path(p, mode=file_mode()) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())
    return p


def resample(x: np.ndarray, sr_in: int, sr_out: int, axis: int = -1) -> np.ndarray:
    """The one resampler: polyphase with the exact rational ratio ``sr_out/sr_in`` along ``axis``
    (scipy's default Kaiser window; computed in float64 whatever the input), ``x`` itself when
    the rates are equal. Audio, HRIRs and the VAD input all go through it, so one clip's numbers do
    not depend on which stage resampled it."""
    if int(sr_in) == int(sr_out):
        return x
    import math

    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(x, int(sr_out) // g, int(sr_in) // g, axis=axis)


def resample_audio(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """:func:`resample` of ``(C, T)`` audio one channel at a time into a float32 output (peak
    memory: input + output + one float64 channel), channel order untouched."""
    if int(sr_in) == int(sr_out):
        return x
    import math

    g = math.gcd(int(sr_in), int(sr_out))
    n_out = -(-x.shape[1] * (int(sr_out) // g) // (int(sr_in) // g))
    out = np.empty((x.shape[0], n_out), dtype=np.float32)
    for c in range(x.shape[0]):
        out[c] = resample(x[c], sr_in, sr_out)[:n_out]
    return out


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


def peak_gain(x: np.ndarray, limit: float, target: float | None = None) -> float:
    """The one gain that brings ``x``'s peak down to ``target`` (default ``limit``) when the peak
    exceeds ``limit``; exactly 1.0 otherwise (also for an empty array).

    One global gain for all channels and samples, never clipping: the L/R ratio (and an FOA
    signal's directions) survive the limiting. Callers test ``gain != 1.0`` and skip the multiply,
    so a signal under the limit keeps its exact bytes; the gain is ``target / peak`` computed in
    float64 as the builds always did, so their output does not change by a bit.
    """
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > limit:
        return (limit if target is None else target) / peak
    return 1.0


def limit_peak(x: np.ndarray, limit: float, target: float | None = None) -> np.ndarray:
    """``x`` scaled by :func:`peak_gain` (the same array, untouched, when it is under ``limit``)."""
    g = peak_gain(x, limit, target)
    return x if g == 1.0 else x * g
