"""ViSAudio tiny config on CPU: training samples/s and generation seconds per 8-s clip.

Synthetic tensors of the real shapes (no dataset needed), so the figure is the model's cost
alone. Usage: python benchmarks/bench_visaudio.py [--threads 2] [--batch 16] [--steps 5]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--gen-steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=4.5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from visaudio.checkpoint import build_model
    from visaudio.config import load_config
    from visaudio.generate import Synthesizer
    from visaudio.train import FlowLoss

    cfg = load_config(a.config)
    model, codec = build_model(cfg)
    B = a.batch
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (B, cfg.n_sync_frames, cfg.data.height, cfg.data.width, 3), generator=g,
                           dtype=torch.uint8)
    audio = torch.randn(B, 2, cfg.window_samples, generator=g) * 0.1
    fl = FlowLoss(model, cfg.train.side_loss_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    nv = torch.zeros(B, dtype=torch.bool)
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            x1 = model.normalize(codec.encode(audio))
        x0 = torch.randn(x1.shape, generator=g)
        loss = fl(x0, x1, torch.rand(B, generator=g), frames, [None] * B, None, nv, nv).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i:  # first step warms up
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    syn = Synthesizer(model, codec, cfg)
    clip = np.random.default_rng(0).integers(0, 256, (8 * 15, 144, 256, 3), dtype=np.uint8)  # 8 s @ 15 fps
    syn.generate_frames(clip[: int(cfg.data.clip_seconds * 15)], 15.0, steps=2, cfg=a.cfg)  # warm-up
    t0 = time.perf_counter()
    out, sr = syn.generate_frames(clip, 15.0, steps=a.gen_steps, cfg=a.cfg)
    gen_s = time.perf_counter() - t0
    print(json.dumps({
        "bench": "visaudio_cpu", "config": cfg.name, "threads": a.threads, "batch": B,
        "train_step_s": round(step_s, 4), "train_samples_per_s": round(B / step_s, 2),
        "gen_s_per_8s_clip": round(gen_s, 3), "gen_steps": a.gen_steps, "cfg": a.cfg,
        "windows_per_clip": int(np.ceil(8.0 / cfg.data.clip_seconds)), "out_shape": list(out.shape), "sr": sr,
    }))


if __name__ == "__main__":
    main()
