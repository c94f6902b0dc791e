"""`biaudio annotate` throughput on CPU with tiny random models: batch 1 vs batch 8, and a projection
for the paper's ~97K clips on GPUs.

What is measured (real code, real clips): a small demo build is made, then the caption stage
(tiny Qwen2.5-Omni thinker + tiny GPT-2, greedy, ``--max-new-tokens`` tokens per step) and the
audio-visual consistency stage (tiny CLIP + CLAP towers) run over its clips through
``Captioner.caption_batch`` / ``AVConsistencyStage.run`` with warm models, at each batch size;
the clip decode alone (frames + audio, by ffmpeg) is timed too, because it does not batch.

What is *projected* (no GPU in the session that wrote this; the figures are assumptions, printed
with the result, and can be changed with the options): per-clip GPU time of the real models at
batch 8, added to the measured per-clip decode, divided over 1 and 8 GPUs (one Ray actor each).
Run: ``python benchmarks/bench_annotate.py`` (``--clips 16 --max-new-tokens 8``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tiny-checkpoint builders of the tests (package tests._support)


def _timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=16, help="clips in the demo build (about; filters may drop some)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--dataset-clips", type=int, default=97_000, help="clips to project for (paper: ~97K)")
    ap.add_argument("--gpu-s-per-clip", type=float, default=0.55,
                    help="ASSUMED GPU seconds per clip at batch 8 for Qwen2.5-Omni-7B (bf16) + a 4B text model; "
                         "see the note printed with the result")
    ap.add_argument("--decode-threads", type=int, default=4, help="clips of a batch decoded at once")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from biaudio.annotate.config import AnnotateConfig, AVConsistencyConfig
    from biaudio.annotate.stages import AVConsistencyStage
    from biaudio.engine.run import build
    from biaudio.manifest import read_manifest
    from biaudio.recipe import load_recipe
    from biaudio.stages.caption import CaptionConfig, ClipRef, LocalModelCaptioner
    from tests._support.tiny_models import make_tiny_omni_model, make_tiny_text_model
    from tests.biaudio.annotate.test_annotate import make_av_towers

    tmp = Path(tempfile.mkdtemp(prefix="bench-annotate-"))
    scenes = max(1, args.clips // 2)
    recipe = load_recipe("demo", [f"sources.0.synth.scenes={scenes}", "sources.0.synth.size=[480,240]",
                                  "execution.workers=2"])
    build(recipe, tmp / "demo")
    rows = read_manifest(tmp / "demo", columns=["clip_id", "source_id", "video_path", "duration_s", "width",
                                               "height"]).to_pylist()
    clips = [ClipRef(r["clip_id"], r["source_id"], tmp / "demo" / r["video_path"]) for r in rows]
    omni = make_tiny_omni_model(tmp / "omni")
    (tmp / "text").mkdir()
    text = make_tiny_text_model(tmp / "text")
    (tmp / "av").mkdir()
    towers = make_av_towers(tmp / "av")

    cap = LocalModelCaptioner(CaptionConfig(backend="local-model", av_model_path=omni, text_model_path=text,
                                            max_new_tokens=args.max_new_tokens, av_video_fps=1.0))
    cap.decode_threads = args.decode_threads
    av = AVConsistencyStage(AnnotateConfig(av_consistency=AVConsistencyConfig(model_path=towers, frames=4),
                                           decode_threads=args.decode_threads))
    av.load()
    cap.caption_batch(clips[:1])  # load + warm up
    av.run(clips[:1])

    n = len(clips)
    decoded: list = []
    dec_w, _ = _timed(lambda: decoded.extend(cap.decode_clip(c.video_path) for c in clips))
    res: dict = {"clips": n, "clip": f"{rows[0]['width']}x{rows[0]['height']}, {rows[0]['duration_s']:.0f} s",
                 "decode_s_per_clip": dec_w / n, "caption": {}, "av_consistency": {}}
    for b in args.batches:
        chunks = [clips[i:i + b] for i in range(0, n, b)]
        w, c = _timed(lambda: [cap.caption_batch(ch) for ch in chunks])  # noqa: B023
        res["caption"][b] = {"wall_s": w, "cpu_s": c, "clips_per_s": n / w}
        dchunks = [decoded[i:i + b] for i in range(0, n, b)]
        w, c = _timed(lambda: [cap.restructure_batch(cap._generate_descriptions(d)) for d in dchunks])  # noqa: B023
        res["caption"][b]["models_only_clips_per_s"] = n / w
        w, c = _timed(lambda: [av.run(ch) for ch in chunks])  # noqa: B023
        res["av_consistency"][b] = {"wall_s": w, "cpu_s": c, "clips_per_s": n / w}
    # the whole command: records, two batches in flight per worker (decode overlaps the forward), manifest
    import shutil

    from biaudio.annotate.engine import annotate

    res["engine"] = {}
    for b in args.batches:
        d = tmp / f"engine-b{b}"
        shutil.copytree(tmp / "demo", d)
        cfg = AnnotateConfig(captions=CaptionConfig(backend="local-model", av_model_path=omni, text_model_path=text,
                                                    max_new_tokens=args.max_new_tokens, av_video_fps=1.0),
                             av_consistency=AVConsistencyConfig(model_path=towers, frames=4), batch_size=b,
                             decode_threads=args.decode_threads)
        w, c = _timed(lambda: annotate(d, cfg))  # noqa: B023
        res["engine"][b] = {"wall_s": w, "cpu_s": c, "clips_per_s": n / w}
    per_clip = max(args.gpu_s_per_clip, res["decode_s_per_clip"] / args.decode_threads)
    res["projection"] = {
        "assumption": (f"{args.gpu_s_per_clip} GPU-s per clip at batch 8 (Qwen2.5-Omni-7B thinker bf16: ~1.5K prompt "
                       "tokens per 8-s clip at 1 fps + audio, ~100 new tokens at ~30 ms per decode step shared by "
                       "the batch; 4B text model ~60 new tokens at ~20 ms), or the decode measured here divided by "
                       f"{args.decode_threads} decode threads if larger (it overlaps the forward: two batches in "
                       "flight per worker; a box with that many free cores per GPU); not measured on a GPU"),
        "s_per_clip_one_gpu": per_clip,
        "hours_1_gpu": args.dataset_clips * per_clip / 3600,
        "hours_8_gpus": args.dataset_clips * per_clip / 3600 / 8,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{n} clips ({res['clip']}), tiny random models, CPU, 1 torch thread, {args.decode_threads} decode "
          f"threads per batch; decode alone (serial) "
          f"{res['decode_s_per_clip'] * 1000:.0f} ms per clip")
    for stage in ("caption", "av_consistency"):
        base = res[stage][args.batches[0]]["clips_per_s"]
        for b, r in res[stage].items():
            extra = (f"; models alone (clips decoded beforehand) {r['models_only_clips_per_s']:.2f} clips/s"
                     if "models_only_clips_per_s" in r else "")
            print(f"  {stage:15s} batch {b:2d}: {r['clips_per_s']:6.2f} clips/s  ({r['clips_per_s'] / base:.2f}x){extra}")
    base = res["engine"][args.batches[0]]["clips_per_s"]
    for b, r in res["engine"].items():
        print(f"  whole command (both stages, models loaded, records, manifest) batch {b:2d}: "
              f"{r['clips_per_s']:5.2f} clips/s ({r['clips_per_s'] / base:.2f}x)")
    p = res["projection"]
    print(f"projection for {args.dataset_clips} clips: {p['hours_1_gpu']:.1f} h on 1 GPU, "
          f"{p['hours_8_gpus']:.1f} h on 8 (one Ray actor each)\n  assumption: {p['assumption']}")


if __name__ == "__main__":
    main()
