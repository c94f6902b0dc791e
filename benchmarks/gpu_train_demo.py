"""Train ViSAudio (binaural) and the mono baseline on a GPU box that has no media tools.

The GPU machine has no ffmpeg and no soundfile, so it cannot decode the clips. This script splits
the work in three steps:

  pack   (here, with ffmpeg): decode every clip of the chosen splits into the visaudio feature cache,
         then write a compact, travel-sized copy (manifest + int16 audio + uint8 frames) to a folder.
  train  (on the GPU box): unpack that copy into a FeatureCache folder, train the binaural and the
         mono run concurrently (one process each, same GPU) for a wall-clock budget, then export
         slim checkpoints (EMA weights, config, latent statistics) and the logs.
  unpack-runs (here): turn the slim checkpoints back into run folders that
         ``visaudio.generate.Synthesizer.from_run`` and ``visaudio eval`` load.

    python benchmarks/gpu_train_demo.py pack /tmp/demo-large --out gpucarry --splits train,val:8
    python benchmarks/gpu_train_demo.py train gpucarry --runs /tmp/runs --export $OUT --budget-s 270
    python benchmarks/gpu_train_demo.py unpack-runs OUT_FILES --runs /tmp/gpu-runs

Training goes through ``visaudio.train.train`` unchanged (resumable), in two chunks: a short one
that measures the step rate, then one sized to end within the budget.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {"binaural": [], "mono": ["data.channels=mono"]}
COMMON = ["train.tensorboard=false"]


def _cfg(config: str, overrides: list[str]):
    from visaudio.config import load_config

    return load_config(config, overrides)


def _pack_gen(manifest: Path, out: Path, split: str, limit: int | None, cfg) -> int:
    """Frames of the clips ``visaudio eval --split SPLIT --limit N`` evaluates (same order), decoded
    exactly as ``Synthesizer.generate`` decodes them, so the GPU box can generate their audio."""
    from visaudio.data import load_manifest_split, read_video_frames
    from visaudio.generate import video_duration

    df = load_manifest_split(manifest, split, qa_ok=True).sort_values("clip_id").reset_index(drop=True)
    df = df.head(limit) if limit else df
    (out / "gen").mkdir(exist_ok=True)
    d = cfg.data
    for _, r in df.iterrows():
        video = manifest / r["video_path"]
        total = video_duration(video)
        sync = read_video_frames(video, d.sync_fps, d.width, d.height, 0.0, total)
        cap = r.get("caption") if isinstance(r.get("caption"), str) else ""
        buf = io.BytesIO()
        np.savez(buf, frames=sync, total=np.float64(total), caption=np.array(cap))
        (out / "gen" / f"{r['clip_id']}.npz.xz").write_bytes(lzma.compress(buf.getvalue(), preset=6))
    return len(df)


def pack(manifest: Path, out: Path, splits: list[str], config: str, gen_split: str | None = None,
         gen_limit: int | None = None) -> None:
    """``splits``: names, each optionally ``name:N`` to ship only its first N clips (the rest are
    skipped on the GPU box as clips with missing media)."""
    limits = {sp.split(":")[0]: int(sp.split(":")[1]) for sp in splits if ":" in sp}
    splits = [sp.split(":")[0] for sp in splits]
    from visaudio.data import ManifestDataset, settings_hash

    cfg = _cfg(config, COMMON)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clips").mkdir(exist_ok=True)
    import pyarrow as pa
    import pyarrow.compute as pc

    from biaudio.manifest import read_manifest, write_table

    table = read_manifest(manifest)
    write_table(table.filter(pc.is_in(table["split"], pa.array(splits))), out / "manifest.parquet")
    n = 0
    for split in splits:
        ds = ManifestDataset(manifest, split, cfg)
        for i, cid in enumerate(ds.clip_ids):
            a, fr = ds.media(i)
            peak = float(np.abs(a).max()) or 1.0
            q = np.round(a / peak * 32767).astype(np.int16)
            buf = io.BytesIO()
            np.savez(buf, audio=q, scale=np.float32(peak / 32767), frames=fr)
            (out / "clips" / f"{cid}.npz.xz").write_bytes(lzma.compress(buf.getvalue(), preset=6))
            n += 1
            if limits.get(split) and i + 1 >= limits[split]:
                break
    n_gen = _pack_gen(manifest, out, gen_split, gen_limit, cfg) if gen_split else 0
    (out / "info.json").write_text(json.dumps({"clips": n, "splits": splits, "hash": settings_hash(cfg),
                                               "config": config, "gen_clips": n_gen}))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed {n} clips of {splits} into {out} ({size / 2**20:.1f} MiB)")


def unpack_cache(carry: Path, manifest_dir: Path, config: str) -> Path:
    """Write the FeatureCache files (media absent, so the cache is trusted) next to the manifest."""
    from visaudio.data import settings_hash

    cfg = _cfg(config, COMMON)
    manifest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(carry / "manifest.parquet", manifest_dir / "manifest.parquet")
    cdir = manifest_dir / ".cache" / "visaudio" / settings_hash(cfg)
    cdir.mkdir(parents=True, exist_ok=True)
    for f in sorted((carry / "clips").glob("*.npz.xz")):
        z = np.load(io.BytesIO(lzma.decompress(f.read_bytes())))
        a = z["audio"].astype(np.float32) * float(z["scale"])
        np.savez(cdir / f.name.removesuffix(".xz"), audio=a, frames=z["frames"], stamp=np.array("shipped"))
    return cdir


def _train_worker(name: str, manifest: str, config: str, run: str, budget_s: float, probe: int,
                  overrides: list[str], device: str, q) -> None:

    from visaudio.checkpoint import read_checkpoint_file
    from visaudio.train import train

    ov = COMMON + RUNS[name] + overrides
    t0 = time.time()
    ck = Path(run) / "ckpt" / "last.pt"
    done = int(read_checkpoint_file(ck)["step"]) if ck.is_file() else 0
    s1 = train(manifest, config, run, max_steps=done + probe, overrides=ov, device=device, progress=False)
    rate = (s1["steps"] - s1["start_step"]) / max(s1["seconds"], 1e-6)
    left = budget_s - (time.time() - t0)
    more = max(0, int(rate * left * 0.9))
    print(f"[{name}] probe: {s1['steps']} steps, {s1['samples_per_s']:.1f} samples/s, {rate:.2f} steps/s; "
          f"{more} more steps in {left:.0f}s", flush=True)
    s2 = train(manifest, config, run, max_steps=s1["steps"] + more, overrides=ov, device=device, progress=False)
    res = {"name": name, "steps": s2["steps"], "n_train": s2["n_train"], "n_val": s2["n_val"],
           "probe_samples_per_s": s1["samples_per_s"], "samples_per_s": s2["samples_per_s"],
           "seconds": s1["seconds"] + s2["seconds"], "first_loss": s1["first_loss"], "last_loss": s2["last_loss"],
           "val": s2["val"], "n_params": s2["n_params"], "overrides": ov}
    print(f"[{name}] done: {json.dumps(res)}", flush=True)
    q.put(res)


def _finish_worker(name: str, carry: str, runs: str, out: str, device: str, steps: int, q) -> None:
    """Export this run's slim checkpoint, reload it, and generate the packed clips from it (so the
    audio comes from exactly the weights that travel back)."""
    t0 = time.time()
    export(Path(runs), Path(out), [name])
    unpack_runs(Path(out), Path(runs) / "export", [name])
    n = generate_clips(Path(carry), Path(runs) / "export" / name, Path(out) / name, device, steps=steps)
    print(f"[{name}] generated {n} clips in {time.time() - t0:.1f}s", flush=True)
    q.put({"name": name, "gen_clips": n, "gen_s": time.time() - t0})


def generate_clips(carry: Path, run: Path, out: Path, device: str, steps: int = 25, cfg: float = 4.5,
                   seed: int = 0, chunk: int = 40) -> int:
    """The eval's generation (``Synthesizer.generate`` after decoding) for the packed clips; audio
    back as int16 (per-clip scale) in files of ``chunk`` clips."""
    from visaudio.generate import Synthesizer

    files = sorted((carry / "gen").glob("*.npz.xz"))
    if not files:
        return 0
    syn = Synthesizer.from_run(run, device=device, use_ema=True)
    out.mkdir(parents=True, exist_ok=True)
    batch: dict[str, np.ndarray] = {}
    k = 0
    for i, f in enumerate(files):
        z = np.load(io.BytesIO(lzma.decompress(f.read_bytes())))
        cap = str(z["caption"]) or None
        audio, sr = syn._generate_sync_frames(z["frames"], float(z["total"]), cap, steps, cfg, seed)
        peak = float(np.abs(audio).max()) or 1.0
        cid = f.name.removesuffix(".npz.xz")
        batch[f"a__{cid}"] = np.round(audio / peak * 32767).astype(np.int16)
        batch[f"s__{cid}"] = np.float32(peak / 32767)
        if len(batch) // 2 == chunk or i == len(files) - 1:
            np.savez(out / f"gen{k}.npz", sr=np.int64(sr), **batch)
            batch, k = {}, k + 1
    return len(files)


def export(runs: Path, out: Path, names: list[str] | None = None) -> None:
    import torch

    from visaudio.checkpoint import read_checkpoint_file

    out.mkdir(parents=True, exist_ok=True)
    for name in names or list(RUNS):
        ck_path = runs / name / "ckpt" / "last.pt"
        if not ck_path.is_file():
            print(f"[{name}] no checkpoint to export", flush=True)
            continue
        ck = read_checkpoint_file(ck_path)
        slim = {k: ck[k] for k in ("step", "config", "arch_hash", "latent_mean", "latent_std")}
        # big float tensors (weights) as fp16 to fit the 16-MiB transfer limit; small ones (latent
        # statistics, norms, biases) stay exact. unpack-runs casts them back to fp32.
        slim["ema"] = {k: v.half() if v.is_floating_point() and v.numel() > 4096 else v
                       for k, v in ck["ema"].items()}
        (out / name).mkdir(exist_ok=True)
        torch.save(slim, out / name / "last.pt")
        print(f"[{name}] exported step {ck['step']} ({(out / name / 'last.pt').stat().st_size / 2**20:.1f} MiB)")


def train_all(carry: Path, runs: Path, out: Path, budget_s: float, probe: int, config: str,
              overrides: list[str], device: str = "cuda:0", gen_steps: int = 25) -> None:
    info = json.loads((carry / "info.json").read_text())
    manifest = runs / "data"
    t0 = time.time()
    unpack_cache(carry, manifest, info["config"])
    print(f"unpacked {info['clips']} clips in {time.time() - t0:.1f}s", flush=True)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_train_worker, args=(n, str(manifest), config, str(runs / n),
                                                     budget_s - (time.time() - t0), probe, overrides, device, q))
             for n in RUNS]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    results = []
    while not q.empty():
        results.append(q.get())
    print(f"training done at {time.time() - t0:.0f}s", flush=True)
    procs = [ctx.Process(target=_finish_worker, args=(n, str(carry), str(runs), str(out), device, gen_steps, q))
             for n in RUNS]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    while not q.empty():
        results.append(q.get())
    logs = {f"{n}/{log}": (runs / n / log).read_text() for n in RUNS for log in ("train_log.csv", "val_log.csv")
            if (runs / n / log).is_file()}
    (out / "summary.json").write_text(json.dumps({"results": results, "wall_s": time.time() - t0, "logs": logs}))


def unpack_runs(src: Path, runs: Path, names: list[str] | None = None) -> None:
    import torch
    import yaml

    from visaudio.checkpoint import read_checkpoint_file

    for name in names or list(RUNS):
        f = src / name / "last.pt"
        if not f.is_file():
            continue
        d = runs / name
        (d / "ckpt").mkdir(parents=True, exist_ok=True)
        ck = read_checkpoint_file(f)
        ck["ema"] = {k: v.float() if v.dtype == torch.float16 else v for k, v in ck["ema"].items()}
        torch.save(ck, d / "ckpt" / "last.pt")
        (d / "config.yaml").write_text(yaml.safe_dump(ck["config"], sort_keys=False))
        for log in ("train_log.csv", "val_log.csv"):
            if (src / name / log).is_file():
                shutil.copy(src / name / log, d / log)
        print(f"{d}: step {ck['step']}")


def import_gen(src: Path, runs: Path, report: Path, steps: int = 25, cfg: float = 4.5, seed: int = 0) -> None:
    """Reassemble the run dirs and put the GPU-generated audio where ``visaudio eval`` caches its
    generations (same key: run-dir fingerprint, steps, cfg, seed), so eval only computes metrics."""
    import soundfile as sf

    from visaudio.eval.runner import _ckpt_fingerprint

    unpack_runs(src, runs)
    for name, which in (("binaural", "visaudio"), ("mono", "mono")):
        if not (runs / name).is_dir():
            continue
        key = f"{which}-{_ckpt_fingerprint(runs / name)}-s{steps}-c{cfg:g}-seed{seed}"
        d = report / "cache" / key
        d.mkdir(parents=True, exist_ok=True)
        n = 0
        for f in sorted((src / name).glob("gen*.npz")):
            z = np.load(f)
            for k in z.files:
                if k.startswith("a__"):
                    cid = k[3:]
                    audio = z[k].astype(np.float32) * float(z[f"s__{cid}"])
                    sf.write(str(d / f"{cid}.wav"), audio.T, int(z["sr"]), subtype="FLOAT")
                    n += 1
        print(f"{which}: {n} generated clips -> {d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--splits", default="train,val")
    p.add_argument("--config", default="tiny")
    p.add_argument("--gen-split", default=None, help="split whose clips the GPU box generates (e.g. test)")
    p.add_argument("--gen-limit", type=int, default=None, help="first N clips by clip_id (as eval --limit)")
    t = sub.add_parser("train")
    t.add_argument("carry", type=Path)
    t.add_argument("--runs", type=Path, required=True)
    t.add_argument("--export", type=Path, required=True)
    t.add_argument("--budget-s", type=float, default=270.0)
    t.add_argument("--probe-steps", type=int, default=60)
    t.add_argument("--config", default="tiny")
    t.add_argument("--device", default="cuda:0")
    t.add_argument("--gen-steps", type=int, default=25)
    t.add_argument("--set", action="append", default=[], help="extra config override (both runs)")
    u = sub.add_parser("unpack-runs")
    u.add_argument("src", type=Path)
    u.add_argument("--runs", type=Path, required=True)
    g = sub.add_parser("import-gen")
    g.add_argument("src", type=Path)
    g.add_argument("--runs", type=Path, required=True)
    g.add_argument("--report", type=Path, required=True)
    g.add_argument("--steps", type=int, default=25)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.manifest, a.out, a.splits.split(","), a.config, a.gen_split, a.gen_limit)
    elif a.cmd == "train":
        train_all(a.carry, a.runs, a.export, a.budget_s, a.probe_steps, a.config, a.set, a.device, a.gen_steps)
    elif a.cmd == "import-gen":
        import_gen(a.src, a.runs, a.report, a.steps)
    else:
        unpack_runs(a.src, a.runs)


if __name__ == "__main__":
    main()
