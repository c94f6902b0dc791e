"""Shot-detection yield before and after the flash check: windows kept / windows possible.

For every clip, one decode of the horizon-band proxy (the I420 frames ingest decodes, converted as
ingest converts them) feeds two detectors: ``segment.flash_frames: 0`` (PySceneDetect as is, the
old behaviour) and the recipe default (the flash check on). "Possible" is what a detector without
any cut would allow (every window of the clip), so a clip with a true cut may keep fewer windows
than possible with either detector; the truth column says where the real cuts are.

Clips: every real video under the test-data folder (the five Sphere360 clips; the other test data
is audio only) and synthetic 360° scenes made here (biaudio.synth.FlashScene): fireworks bursts,
whole-frame flashes of 1-5 frames, hard cuts. Run: ``python benchmarks/shot_yield.py [--testdata DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("BIAUDIO_TESTDATA", REPO.parent / "shared" / "testdata"))


def synthetic(out: Path) -> list[tuple[str, Path, str]]:
    from biaudio.synth import FlashScene

    scenes = {
        "fireworks (3 bursts, 10 s)": (FlashScene(n_frames=300, fps=30, bursts=[(75, 40, 80.0), (165, 30, 200.0), (240, 45, 320.0)],
                                                  flashes=[(120, 2)], seed=3), "none"),
        "lightning (6 flashes of 1-5 frames, 10 s)": (FlashScene(n_frames=300, fps=30, flashes=[(40, 1), (44, 2), (110, 3), (150, 1), (200, 5), (260, 2)],
                                                                 seed=4), "none"),
        "strobe (2 frames every 1 s, 20 s)": (FlashScene(n_frames=600, fps=30, flashes=[(f, 2) for f in range(15, 600, 30)], seed=6), "none"),
        "fireworks + 2 hard cuts (30 s)": (FlashScene(n_frames=900, fps=30, cuts=[300, 600], seed=8,
                                                      bursts=[(b, 35, float(b % 360)) for b in (60, 150, 240, 390, 480, 700, 800)]), "300, 600"),
    }
    return [(name, sc.write(out / f"syn{k}.mp4"), truth) for k, (name, (sc, truth)) in enumerate(scenes.items())]


def measure(path: Path) -> dict:
    import cv2

    from biaudio.media import iter_frames, probe
    from biaudio.segment import CutDetector, SegmentConfig, windows

    after = SegmentConfig()
    before = after.model_copy(update={"flash_frames": 0})
    info = probe(path)
    fps = float(info.fps or 30.0)
    dets = [CutDetector(fps, before), CutDetector(fps, after)]
    w, h = after.proxy_dims()
    for f in iter_frames(path, size=(w, h), info=info, band=after.proxy_band, pix_fmt="yuv420p"):
        bgr = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_YUV2BGR_I420)
        for d in dets:
            d.add_bgr(bgr)
    n = dets[0].n_frames
    possible = len(windows(n / fps, fps, [], after))
    out = {"possible": possible, "frames": n}
    for key, d, cfg in (("before", dets[0], before), ("after", dets[1], after)):
        cuts = d.cuts()
        out[key] = (len(windows(n / fps, fps, cuts, cfg)), cuts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testdata", type=Path, default=TESTDATA)
    a = ap.parse_args()
    real = sorted((a.testdata / "sphere360-erp-foa").glob("*.webm"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = [(p.stem, p, "256 (waterfall, by eye)" if p.stem == "0B7ds6NmVBQl_20" else "none seen") for p in real]
        clips += synthetic(Path(tmp))
        for name, path, truth in clips:
            rows.append((name, truth, measure(path)))
    print("| clip | true cuts | cuts before | cuts after | windows before | windows after |")
    print("|---|---|---|---|---|---|")
    tot = {"real": [0, 0, 0], "synthetic": [0, 0, 0]}
    for name, truth, m in rows:
        kind = "real" if any(name == p.stem for p in real) else "synthetic"
        t = tot[kind]
        t[0] += m["before"][0]
        t[1] += m["after"][0]
        t[2] += m["possible"]
        print(f"| {name} | {truth} | {m['before'][1] or '-'} | {m['after'][1] or '-'} | "
              f"{m['before'][0]}/{m['possible']} | {m['after'][0]}/{m['possible']} |")
    for kind, (b, af, p) in tot.items():
        if p:
            print(f"| **all {kind}** | | | | {b}/{p} = {b / p:.0%} | {af}/{p} = {af / p:.0%} |")


if __name__ == "__main__":
    main()
