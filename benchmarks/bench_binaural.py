"""FOA -> binaural speed: 10 s of 4-channel ambiX at 48 kHz on one core (target < 0.1 s).

Times the decoder alone (8 FFT convolutions folded into 4 forward + 2 inverse batched FFTs) and
the full ``render_binaural`` (per-frame rotation with cross-fade at 30 fps, then decode), for the
MagLS and cube decoders built from the built-in KEMAR set. Run: ``python benchmarks/bench_binaural.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

from biaudio.spatial.binaural import render_binaural  # noqa: E402
from biaudio.spatial.decoders import get_decoder  # noqa: E402

SR, DUR, FPS = 48000, 10.0, 30.0


def best_of(fn, n: int = 5) -> tuple[float, float]:
    """Best wall time and best CPU time of n runs (CPU time is what one core costs on a shared machine)."""
    walls, cpus = [], []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main() -> None:
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((4, int(SR * DUR)))).astype(np.float32)
    ft = np.arange(int(DUR * FPS)) / FPS
    yaw = 90.0 * ft  # 90°/s pan
    zeros = np.zeros_like(ft)
    for kind in ("magls", "cube"):
        t0 = time.perf_counter()
        dec = get_decoder("kemar", kind, SR)
        t_build = time.perf_counter() - t0
        dec.decode(x[:, :4800])  # warm the filter spectra
        t_dec = best_of(lambda d=dec: d.decode(x))
        t_full = best_of(lambda d=dec: render_binaural(x, SR, ft, yaw, zeros, zeros, d))
        print(f"{dec.name:30s} taps {dec.filters.shape[-1]:5d}  build {t_build:5.2f} s  decode 10 s: "
              f"{1000 * t_dec[0]:5.1f} ms wall / {1000 * t_dec[1]:5.1f} ms CPU (target < 100 ms)  "
              f"rotate+decode: {1000 * t_full[0]:5.1f} ms wall / {1000 * t_full[1]:5.1f} ms CPU")


if __name__ == "__main__":
    main()
