"""Feature store + streaming loader benchmarks (CPU).

  rss      peak RSS of `visaudio train --store` over 100 vs 5,000 synthetic clips (micro config);
           the streaming loader must keep memory flat: the two peaks within 10 %.
  step     tiny-config training step fed by the streaming loader (1 worker) vs the same step on
           batches already in memory.
  prepare  `visaudio prepare` throughput (clips per second per core) on a manifest.

    PYTHONPATH=$PWD python3 benchmarks/bench_stream.py rss --work /tmp/bench
    PYTHONPATH=$PWD python3 benchmarks/bench_stream.py step --work /tmp/bench
    PYTHONPATH=$PWD python3 benchmarks/bench_stream.py prepare --manifest OUT --config tiny --work /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def synthetic_store(out: Path, config: str, n: int, shard_size: int = 64, seed: int = 0) -> Path:
    """A store of n random clips for `config` (whole clip = 1.5 x the model window)."""
    from visaudio.config import load_config
    from visaudio.store import STORE_META, _atomic_write_bytes, store_key, store_settings, write_shard

    cfg = load_config(config)
    d = cfg.data
    settings = store_settings(cfg, [])
    kdir = Path(out) / store_key(settings)
    if (kdir / "train" / "plan.json").is_file():
        return Path(out)
    (kdir / "train").mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(kdir / STORE_META, json.dumps({"key": kdir.name, "settings": settings}).encode())
    ids = [f"syn{i:06d}" for i in range(n)]
    rng = np.random.default_rng(seed)
    na = int(cfg.window_samples * 1.5)
    nf = int(cfg.n_sync_frames * 1.5)

    def samples(lo, hi):
        for i in range(lo, hi):
            a = (rng.standard_normal((2, na)) * 0.1).astype(np.float32)
            f = rng.integers(0, 255, (nf, d.height, d.width, 3), dtype=np.uint8)
            yield a, f, {"clip_id": ids[i], "caption": "a sound on the left", "trajectory": None}, {}

    for k in range(0, n, shard_size):
        write_shard(kdir / "train", "train", k // shard_size, samples(k, min(n, k + shard_size)))
    _atomic_write_bytes(kdir / "train" / "plan.json", json.dumps({"clip_ids": ids, "shard_size": shard_size}).encode())
    return Path(out)


def rss(work: Path, steps: int) -> dict:
    out = {}
    for n in (100, 5000):
        t0 = time.time()
        store = synthetic_store(work / f"store{n}", "micro", n)
        t_write = time.time() - t0
        run = work / f"run{n}"
        code = ("import resource, sys; from visaudio.train import train; "
                f"train(None, 'micro', {str(run)!r}, max_steps={steps}, store={str(store)!r}, progress=False, "
                "overrides=['train.num_threads=1', 'train.num_workers=1', 'train.ckpt_every=100000', "
                "'data.augment=true', 'train.shuffle_block=64']); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
                "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        t0 = time.time()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                           env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        main_kb, worker_kb = map(int, r.stdout.split()[-2:])
        out[n] = {"peak_rss_main_mb": main_kb / 1024, "peak_rss_worker_mb": worker_kb / 1024,
                  "train_s": time.time() - t0, "write_store_s": t_write}
        print(n, out[n], flush=True)
    out["ratio_main"] = out[5000]["peak_rss_main_mb"] / out[100]["peak_rss_main_mb"]
    out["ratio_worker"] = out[5000]["peak_rss_worker_mb"] / out[100]["peak_rss_worker_mb"]
    return out


def step(work: Path, steps: int) -> dict:
    import torch

    from visaudio.config import load_config
    from visaudio.data import collate
    from visaudio.stream import BatchStream, StoreDataset, StreamingDataset
    from visaudio.train import FlowLoss, build_model

    torch.set_num_threads(1)
    cfg = load_config("tiny", ["train.batch_size=8"])
    store = synthetic_store(work / "store_tiny", "tiny", 128, shard_size=32)
    ds = StoreDataset(store, "train", cfg, augment=True)
    model, codec = build_model(cfg)
    loss_mod = FlowLoss(model, 1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = cfg.train.batch_size

    def one(batch):
        t0 = time.perf_counter()
        with torch.no_grad():
            x1 = model.normalize(codec.encode(batch["audio"]).float())
        x0 = torch.randn_like(x1)
        t = torch.rand(b)
        z = torch.zeros(b, dtype=torch.bool)
        loss = loss_mod(x0, x1, t, batch["frames"], batch["caption"], batch["traj"], z, z).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    bs = BatchStream(StreamingDataset(ds, 0, 0, 1, 0, block=64), workers=1)
    mem = [collate(bs.take(b)) for _ in range(4)]
    for m in mem[:2]:
        one(m)  # warm-up
    res = {}
    for name in ("memory", "stream", "memory2", "stream2"):
        t0 = time.perf_counter()
        for i in range(steps):
            batch = mem[i % len(mem)] if name.startswith("memory") else collate(bs.take(b))
            one(batch)
        res[name] = (time.perf_counter() - t0) / steps
        print(name, res[name], flush=True)
    bs.close()
    sm = (res["stream"] + res["stream2"]) / 2
    mm = (res["memory"] + res["memory2"]) / 2
    return {"step_s_stream": sm, "step_s_memory": mm, "ratio": sm / mm, "batch": b}


def prepare_bench(manifest: Path, config: str, work: Path) -> dict:
    import shutil

    from visaudio.store import prepare

    out = work / "prep"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    s = prepare(manifest, config, out, splits=("train", "val", "test"), shard_size=16, workers=1, log=lambda m: None)
    secs = time.time() - t0
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = cpu.ru_utime + cpu.ru_stime + ch.ru_utime + ch.ru_stime
    n = s["clips_written"]
    return {"clips": n, "wall_s": secs, "clips_per_s_one_process": n / secs,
            "cpu_s_total_incl_ffmpeg": cpu_s, "clips_per_cpu_s": n / cpu_s, "bytes": s["bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["rss", "step", "prepare"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_stream"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--config", default="tiny")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.what == "rss":
        r = rss(a.work, a.steps)
    elif a.what == "step":
        r = step(a.work, a.steps)
    else:
        r = prepare_bench(a.manifest, a.config, a.work)
    print(json.dumps(r, default=str))


if __name__ == "__main__":
    main()
