"""Item function for the fault tests (no tests in here): the engine stand-in, plus one large output
written through the *real* media writers (libsndfile FLAC or the ffmpeg H.264 encoder), so a full
disk is met where the pipeline meets it.

Driven by ``BIAUDIO_FAULTS`` (JSON): ``writer`` ("flac" or "mp4") and ``big`` ({source_id:
seconds of noise}); everything else comes from ``BIAUDIO_STANDIN`` (see
``standin.py``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("_standin", Path(__file__).with_name("standin.py"))
_standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_standin)


def process_item(item, recipe, out_dir: Path, log: logging.Logger):
    cfg = json.loads(os.environ.get("BIAUDIO_FAULTS", "{}"))
    seconds = cfg.get("big", {}).get(item.source_id)
    if seconds:
        rng = np.random.default_rng(0)
        dst = Path(out_dir) / "clips" / f"{item.source_id}_big"
        if cfg.get("writer") == "mp4":
            from biaudio.media.video import VideoWriter

            with VideoWriter(dst.with_suffix(".mp4"), 320, 240, 10, crf=0, preset="ultrafast") as vw:
                for _ in range(int(seconds * 10)):
                    vw.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
        else:
            from biaudio.media.audio import write_audio

            write_audio(dst.with_suffix(".flac"), rng.uniform(-0.9, 0.9, (2, int(48000 * seconds))), 48000)
    return _standin.process_item(item, recipe, out_dir, log)
