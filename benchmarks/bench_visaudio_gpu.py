"""ViSAudio paper config on one CUDA GPU: training samples/s (bf16 autocast) and generation
seconds per 8-s clip (25 Euler steps + CFG 4.5, EMA-free model, batch 1).

Self-contained: synthetic random tensors of the right shapes; the VAE codec is randomly
initialised (its cost is what is timed, not its quality). The frozen MiniLM text encoder is
replaced by the hashed-token embedding unless --minilm (MiniLM runs once per caption and is
cached, so it is not part of the per-step cost). Prints one JSON line. Reference: MMAudio-S-16k
generates an 8-s clip in 1.23 s on one H100.

  python benchmarks/bench_visaudio_gpu.py [--batch 16] [--steps 10] [--compile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--gen-steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=4.5)
    ap.add_argument("--minilm", action="store_true")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--allow-cpu", action="store_true", help="smoke-test the script on CPU (use tiny --set values)")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available() and not a.allow_cpu:
        print(json.dumps({"bench": "visaudio_gpu", "error": "CUDA is not available: this benchmark needs a GPU"}))
        sys.exit(2)
    from visaudio.config import load_config
    from visaudio.train import FlowLoss, build_model

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    ov = ([] if a.minilm else ["model.text_encoder=hashed"]) + list(a.set)
    cfg = load_config("paper_scratch", ov)  # from-scratch encoders: no checkpoint folders needed
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    from visaudio.codecs import VAECodec

    codec = VAECodec(cfg.codec, cfg.data.sample_rate).to(dev).eval()
    import visaudio.codecs as vc

    vc_build = vc.build_codec
    vc.build_codec = lambda c, sr, load_weights=True: VAECodec(c, sr)  # random codec weights for timing
    try:
        model, _ = build_model(cfg, dev)
    finally:
        vc.build_codec = vc_build
    n_params = sum(p.numel() for p in model.parameters())
    B = a.batch
    g = torch.Generator(device=dev).manual_seed(0)
    frames = torch.randint(0, 256, (B, cfg.n_sync_frames, cfg.data.height, cfg.data.width, 3), generator=g,
                           device=dev, dtype=torch.uint8)
    audio = torch.randn(B, 2, cfg.window_samples, generator=g, device=dev) * 0.1
    caps = ["a dog barks on the left of a red car"] * B
    fl = FlowLoss(model, cfg.train.side_loss_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=dev.type == "cuda")
    nv = torch.zeros(B, dtype=torch.bool, device=dev)
    times = []
    for i in range(a.steps + 2):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            x1 = model.normalize(codec.encode(audio).float())
        x0 = torch.randn(x1.shape, generator=g, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = fl(x0, x1, torch.rand(B, generator=g, device=dev), frames, caps, None, nv, nv).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    step_s = times[len(times) // 2]
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
    model.eval()

    def gen_one():
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            c = model.encode_conditions(frames[:1], caps[:1])
            x = model.sample(c, steps=a.gen_steps, cfg=a.cfg, seed=0)
        with torch.no_grad():
            y = codec.decode(model.denormalize(x.float()), cfg.window_samples)
        sync()
        return y

    gen_one()
    gt = []
    for _ in range(3):
        t0 = time.perf_counter()
        y = gen_one()
        gt.append(time.perf_counter() - t0)
    print(json.dumps({
        "bench": "visaudio_gpu", "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "config": "paper_scratch", "params_M": round(n_params / 1e6, 1), "batch": B, "bf16": True,
        "train_step_s": round(step_s, 4), "train_samples_per_s": round(B / step_s, 1),
        "peak_mem_GiB": round(mem, 1), "clip_seconds": cfg.data.clip_seconds,
        "gen_s_per_8s_clip": round(min(gt), 3), "gen_steps": a.gen_steps, "cfg": a.cfg,
        "out_shape": list(y.shape), "text_encoder": cfg.model.text_encoder,
    }))


if __name__ == "__main__":
    main()
