"""Shot-detection yield with and without the flash and dissolve checks: windows kept / possible,
and windows that mix two shots.

For every clip, one decode of the horizon-band proxy (the I420 frames ingest decodes, converted as
ingest converts them) feeds three detectors: PySceneDetect alone (``segment.flash_frames: 0``,
``segment.dissolve_frames: 0``), with the flash check only (``dissolve_frames: 0``, the default
before dissolves were detected) and the recipe default (both checks). "Possible" is what a detector
without any cut would allow (every window of the clip), so a clip with a true cut may keep fewer
windows than possible with any detector; "mixed" counts kept windows that contain a true cut or the
middle of a true dissolve (they pair one shot's sound with another's picture).

Clips: every real video under the test-data folder (the five Sphere360 clips; the other test data
is audio only) and synthetic 360° scenes made here (biaudio.synth.FlashScene / BusyScene):
fireworks bursts, whole-frame flashes of 1-5 frames, hard cuts, dissolves, water and moving
figures. Run: ``python benchmarks/shot_yield.py [--testdata DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("BIAUDIO_TESTDATA", REPO.parent / "shared" / "testdata"))
WATERFALL = "0B7ds6NmVBQl_20"


def synthetic(out: Path) -> list[tuple[str, Path, list[float]]]:
    """(name, video, true shot changes in frames: a hard cut's frame or a dissolve's middle)."""
    from biaudio.synth import BusyScene, FlashScene

    scenes = {
        "fireworks (3 bursts, 10 s)": (FlashScene(n_frames=300, fps=30, bursts=[(75, 40, 80.0), (165, 30, 200.0), (240, 45, 320.0)],
                                                  flashes=[(120, 2)], seed=3), []),
        "lightning (6 flashes of 1-5 frames, 10 s)": (FlashScene(n_frames=300, fps=30, flashes=[(40, 1), (44, 2), (110, 3), (150, 1), (200, 5), (260, 2)],
                                                                 seed=4), []),
        "strobe (2 frames every 1 s, 20 s)": (FlashScene(n_frames=600, fps=30, flashes=[(f, 2) for f in range(15, 600, 30)], seed=6), []),
        "fireworks + 2 hard cuts (30 s)": (FlashScene(n_frames=900, fps=30, cuts=[300, 600], seed=8,
                                                      bursts=[(b, 35, float(b % 360)) for b in (60, 150, 240, 390, 480, 700, 800)]), [300, 600]),
        "dissolve of 12 frames at 10 s (20 s)": (FlashScene(n_frames=600, fps=30, dissolve=(300, 12), seed=10), [306]),
        "dissolve of 45 frames at 10 s, pan 1°/frame, bursts (20 s)": (
            FlashScene(n_frames=600, fps=30, dissolve=(300, 45), pan_deg_per_frame=1.0, noise=2.0,
                       bursts=[(100, 40, 90.0), (420, 40, 250.0)], seed=11), [322.5]),
        "water + 3 crossing figures, pan (20 s)": (BusyScene(n_frames=600, fps=30, water=0.25, pan_deg_per_frame=0.5, noise=2.0,
                                                             movers=[(0, -5.0, 1.5), (40, 5.0, -3.0), (100, 0.0, 6.0)], seed=4), []),
    }
    return [(name, sc.write(out / f"syn{k}.mp4"), truth) for k, (name, (sc, truth)) in enumerate(scenes.items())]


CONFIGS = ("PySceneDetect alone", "flash check", "flash + dissolve (default)")


def measure(path: Path, truth: list[float]) -> dict:
    import cv2

    from biaudio.media import iter_frames, probe
    from biaudio.segment import CutDetector, SegmentConfig, windows

    default = SegmentConfig()
    cfgs = [default.model_copy(update={"flash_frames": 0, "dissolve_frames": 0}),
            default.model_copy(update={"dissolve_frames": 0}), default]
    info = probe(path)
    fps = float(info.fps or 30.0)
    dets = [CutDetector(fps, c) for c in cfgs]
    w, h = default.proxy_dims()
    for f in iter_frames(path, size=(w, h), info=info, band=default.proxy_band, pix_fmt="yuv420p"):
        bgr = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_YUV2BGR_I420)
        for d in dets:
            d.add_bgr(bgr)
    n = dets[0].n_frames
    out = {"possible": len(windows(n / fps, fps, [], default)), "frames": n, "runs": []}
    for d, cfg in zip(dets, cfgs, strict=True):
        cuts = d.cuts()
        ws = windows(n / fps, fps, cuts, cfg)
        mixed = sum(1 for win in ws if any(win.start_s < t / fps < win.end_s for t in truth))
        out["runs"].append((cuts, len(ws), mixed))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testdata", type=Path, default=TESTDATA)
    a = ap.parse_args()
    real = sorted((a.testdata / "sphere360-erp-foa").glob("*.webm"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = [(p.stem, p, [256.0] if p.stem == WATERFALL else []) for p in real]
        clips += synthetic(Path(tmp))
        for name, path, truth in clips:
            rows.append((name, truth, measure(path, truth)))
    print("columns per detector: " + "; ".join(f"{k + 1} = {c}" for k, c in enumerate(CONFIGS)))
    print("| clip | true changes | cuts 1 | cuts 2 | cuts 3 | windows 1 | windows 2 | windows 3 | mixed 1/2/3 |")
    print("|---|---|---|---|---|---|---|---|---|")
    tot: dict[str, list[int]] = {"real": [0] * 7, "synthetic": [0] * 7}
    for name, truth, m in rows:
        kind = "real" if any(name == p.stem for p in real) else "synthetic"
        t = tot[kind]
        p = m["possible"]
        t[0] += p
        for k, (_, nw, mixed) in enumerate(m["runs"]):
            t[1 + k] += nw
            t[4 + k] += mixed
        shown = ", ".join(f"{x:g}" for x in truth) or "none"
        if name == WATERFALL:
            shown += " (waterfall, by eye)"
        cuts = " | ".join(str(c) if c else "-" for c, _, _ in m["runs"])
        wins = " | ".join(f"{nw}/{p}" for _, nw, _ in m["runs"])
        print(f"| {name} | {shown} | {cuts} | {wins} | {'/'.join(str(x) for *_, x in m['runs'])} |")
    for kind, t in tot.items():
        if t[0]:
            wins = " | ".join(f"{t[1 + k]}/{t[0]} = {t[1 + k] / t[0]:.0%}" for k in range(3))
            print(f"| **all {kind}** | | | | | {wins} | {t[4]}/{t[5]}/{t[6]} |")


if __name__ == "__main__":
    main()
