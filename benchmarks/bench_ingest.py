"""Ingest speed: probe + filters (silence, static, speech) + segmentation of one real 10-s Sphere360
clip, against the ffmpeg decode-only time of the same clip. One core: ``-threads 1`` for both, torch
intra-op threads 1. Target: ours <= 1.5x the decode-only time, ratio measured in the same run.

Both wall and CPU time (this process + children) are reported, best of N interleaved runs; on a
shared machine CPU time is the fairer one-core measure. The Silero model load is a one-time cost
per worker and is done before timing. The probe comes from the decoding ffmpeg's own input dump
(no ffprobe process; biaudio.media.header). ``analyze_file`` here does what the build needs: it also keeps
the decoded FOA (the build renders from it instead of decoding the audio again) and runs the speech
detector only over the windows that survived the silence filter.
Run: ``python benchmarks/bench_ingest.py [CLIP]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT = Path(os.environ.get("BIAUDIO_TESTDATA", REPO.parent / "shared" / "testdata")) / "sphere360-erp-foa" / "pC2WmY6bkB4_251.webm"


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - w0, _cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--no-speech", action="store_true", help="skip the speech filter (as the demo recipe does)")
    args = ap.parse_args()

    import ffmpeg
    import numpy as np

    from biaudio.clean.speech import SpeechConfig, speech_score
    from biaudio.ingest.analysis import analyze_file
    from biaudio.ingest.validate import ValidateConfig
    from biaudio.media.ffgraph import command, run, source

    speech_score(np.zeros(16000, np.float32), 16000, SpeechConfig())  # load Silero once
    vcfg = ValidateConfig(declared_convention="ambix")

    def decode_only() -> None:
        run(command(ffmpeg.output(source(args.clip, threads="1"), "-", f="null")), check=True)

    result = {}

    def ours() -> None:
        result["r"] = analyze_file(args.clip, validate_cfg=vcfg, threads=1,
                                   speech_cfg=SpeechConfig(enabled=not args.no_speech))

    base, mine = [], []
    for _ in range(args.n):
        base.append(timed(decode_only))
        mine.append(timed(ours))
    r = result["r"]
    assert r.ok, r.reject
    bw, bc = min(b[0] for b in base), min(b[1] for b in base)
    mw, mc = min(m[0] for m in mine), min(m[1] for m in mine)
    print(f"clip {args.clip.name}: {r.n_frames} frames, cuts {r.cuts}, windows {r.clip_ids()}")
    print("source scores: " + ", ".join(f"{k} {v.score:.3f}" for k, v in r.filters.items()))
    print(f"clip scores: {r.window_scores}")
    print(f"stage timings (last run): { {k: round(v, 3) for k, v in r.timings.items()} }")
    print(f"ffmpeg decode-only (-threads 1): wall {bw:.3f} s  CPU {bc:.3f} s")
    print(f"probe+filters+segment          : wall {mw:.3f} s  CPU {mc:.3f} s")
    print(f"ratio: wall {mw / bw:.2f}x  CPU {mc / bc:.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
