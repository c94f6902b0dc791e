"""Projection speed: 1920x960 equirect -> 640x360 perspective, moving camera, one core.

Compares, in the same run and on the same frames and poses:
  ours        biaudio.spatial.projection.Projector (cached rays, per-frame maps, fixed-point remap)
  py360       py360convert.e2p(u_deg=-yaw, v_deg=pitch, in_rot_deg=roll)   (conventions §3 signs, docs/ARCHITECTURE.md)
  ffmpeg      v360=e:flat driven per frame by sendcmd (yaw=-yaw, pitch, roll; reset_rot=1)
and checks that the outputs agree (PSNR against ours). Run: ``python benchmarks/bench_projection.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import ffmpeg  # noqa: E402
import numpy as np  # noqa: E402

from biaudio.media.ffgraph import command, run, source  # noqa: E402
from biaudio.spatial.angles import wrap_deg  # noqa: E402
from biaudio.spatial.projection import Projector, vfov_deg  # noqa: E402

W, H, OW, OH, FOV, FPS = 1920, 960, 640, 360, 90.0, 30.0


def texture() -> np.ndarray:
    """Smooth, structured equirect (gradients + soft grid) so interpolation differences stay small."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r = 128 + 100 * np.sin(xx / W * 2 * np.pi * 3)
    g = 128 + 100 * np.cos(yy / H * np.pi * 4)
    b = 128 + 60 * np.sin((xx + yy) / 40.0)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def poses(n: int) -> np.ndarray:
    k = np.arange(n)
    yaw = wrap_deg(150 + 4.0 * k)  # crosses the ±180 seam
    pitch = 20 * np.sin(k / 15)
    roll = np.full(n, 5.0)  # constant: ffmpeg then needs 2 commands per frame (yaw, pitch)
    return np.stack([yaw, pitch, roll], 1)


def psnr(a: np.ndarray, b: np.ndarray, margin: int = 4) -> float:
    a = a[margin:-margin, margin:-margin].astype(np.float64)
    b = b[margin:-margin, margin:-margin].astype(np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def run_ours(eq, P):
    proj = Projector(OW, OH, FOV, W, H)
    proj.render(eq, 0, 0, 0)  # warm-up (rays are cached at construction)
    out = []
    t0 = time.perf_counter()
    for y, p, r in P:
        out.append(proj.render(eq, y, p, r))
    return out, time.perf_counter() - t0


def run_py360(eq, P):
    import py360convert

    vf = vfov_deg(OW, OH, FOV)
    out = []
    t0 = time.perf_counter()
    for y, p, r in P:
        out.append(py360convert.e2p(eq, (FOV, vf), -y, p, (OH, OW), in_rot_deg=r, mode="bilinear"))
    return out, time.perf_counter() - t0


def run_ffmpeg(eq, P, workdir: Path):
    raw = workdir / "eq.rgb"
    raw.write_bytes(eq.tobytes())
    cmds = workdir / "cmds.txt"
    lines = [f"{k / FPS:.6f} v360 yaw {-y:.6f}, v360 pitch {p:.6f};" for k, (y, p, _r) in enumerate(P)]
    cmds.write_text("\n".join(lines) + "\n")
    y0, p0, r0 = P[0]
    frames_in = source(raw, stream_loop=str(len(P) - 1), f="rawvideo", pix_fmt="rgb24", s=f"{W}x{H}",
                       framerate=str(FPS), threads="1")
    v360 = frames_in.filter("sendcmd", f=str(cmds)).filter(
        "v360", input="e", output="flat", h_fov=FOV, v_fov=f"{vfov_deg(OW, OH, FOV):.6f}", w=OW, h=OH,
        yaw=f"{-y0:.6f}", pitch=f"{p0:.6f}", roll=f"{r0:.6f}", reset_rot=1, interp="linear")
    raw_out = {"frames:v": str(len(P)), "f": "rawvideo", "pix_fmt": "rgb24"}
    cmd = command(ffmpeg.output(v360, "-", **raw_out), filter_threads=1)
    t0 = time.perf_counter()
    r = run(cmd, capture_output=True, check=True)
    dt = time.perf_counter() - t0
    # the same pipeline without v360 (read + convert + pipe), to isolate the projection cost
    base = command(ffmpeg.output(frames_in.filter("scale", OW, OH), "-", **raw_out), filter_threads=1)
    t1 = time.perf_counter()
    run(base, capture_output=True, check=True)
    dbase = time.perf_counter() - t1
    frames = np.frombuffer(r.stdout, np.uint8).reshape(-1, OH, OW, 3)
    return list(frames), dt, dbase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--py360-frames", type=int, default=15, help="py360convert is slow: time fewer frames")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one core for everyone
    eq = texture()
    P = poses(args.frames)
    ours, t_ours = run_ours(eq, P)
    ms_ours = 1000 * t_ours / len(P)
    print(f"ours     : {ms_ours:7.2f} ms/frame ({len(P)} frames)")
    p360, t_p = run_py360(eq, P[: args.py360_frames])
    ms_p = 1000 * t_p / len(p360)
    q_p = np.median([psnr(a, b) for a, b in zip(ours, p360, strict=False)])
    print(f"py360    : {ms_p:7.2f} ms/frame ({len(p360)} frames)  speed-up x{ms_p / ms_ours:.1f}  PSNR vs ours {q_p:.1f} dB")
    with tempfile.TemporaryDirectory() as td:
        ff, t_f, t_base = run_ffmpeg(eq, P, Path(td))
    ms_f = 1000 * t_f / len(P)
    ms_fb = 1000 * max(t_f - t_base, 1e-9) / len(P)
    q_f = np.median([psnr(a, b) for a, b in zip(ours[1:], ff[1:], strict=False)])
    print(f"ffmpeg   : {ms_f:7.2f} ms/frame total, {ms_fb:.2f} ms/frame without its I/O baseline "
          f"({len(ff)} frames)  speed-up x{ms_f / ms_ours:.1f} (x{ms_fb / ms_ours:.1f} net)  PSNR vs ours {q_f:.1f} dB")
    print(f"RATIOS py360/ours={ms_p / ms_ours:.1f} (target >= 5)  ffmpeg-sendcmd/ours={ms_f / ms_ours:.1f} "
          f"net {ms_fb / ms_ours:.1f} (target >= 3)")


if __name__ == "__main__":
    main()
