"""Issue 6 sweep: does a model/loss/config variant learn the source side at the e2e test's budget?

The e2e test (tests/e2e/test_build_train_generate.py) trains tiny for 300 steps at batch 8 (tests/
_support/model.py TINY_OVERRIDES) on the demo build's train split, generates the test split with
25 Euler steps at CFG 4.5, seed 0, and asks: is the per-frame ILD sign of the generated audio on
the source's side (one-sided binomial p < 0.01) and corr(ILD, sin az_cam) > 0? This script runs
that exact protocol for several variants x seeds in parallel processes on one GPU (fp32) and
reports the same statistics, plus two diagnostics:

* ``flip``: the same clips with the frames mirrored left/right. A model that reads side from the
  picture must answer with the opposite ILD (corr(ILD, ILD_flipped) < 0); a clip-independent ILD
  bias answers with the same one.
* ``attn``: correlation of each branch's spacetime attention centroid (patch column) with the
  source's lateral position: does the pooling look at the marker?

    # here (ffmpeg): decode the train split and the test clips, plus the per-frame side truth
    # (list /sweepcarry/ in .git/info/exclude and carry it, with .whl for pydantic, to the GPU box)
    python benchmarks/gpu_side_sweep.py pack /tmp/demo-build --out sweepcarry
    # GPU box: variants x seeds, results as JSON lines under --out
    python benchmarks/gpu_side_sweep.py sweep sweepcarry --out $OUT --seeds 0,1,2,3 --jobs 12
    python benchmarks/gpu_side_sweep.py sweep sweepcarry --out $OUT --plan 'cs_lat_sw4:4,5,6;cs_lat_sw8:0,1'
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# the e2e fixture's overrides (tests/_support/model.py), fp32, one thread per process
BASE = ["train.batch_size=8", "train.val_every=100000", "train.ckpt_every=100000", "train.warmup_steps=20",
        "train.lr=1e-3", "train.ema_decay=0.99", "train.num_threads=1", "train.bf16=false",
        "train.tensorboard=false"]
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "cs": ["model.cond_skip=true"],
    "sw4": ["train.side_loss_weight=4"],
    "cs_sw4": ["model.cond_skip=true", "train.side_loss_weight=4"],
    "lat": ["model.spacetime_lateral=true"],
    "cs_lat": ["model.cond_skip=true", "model.spacetime_lateral=true"],
    "cs_lat_sw4": ["model.cond_skip=true", "model.spacetime_lateral=true", "train.side_loss_weight=4"],
    "cs_rho0": ["model.cond_skip=true", "model.noise_lr_corr=0.0"],
    "cs_lat_lr2e-3": ["model.cond_skip=true", "model.spacetime_lateral=true", "train.lr=2e-3"],
    "cs_lat_sw8": ["model.cond_skip=true", "model.spacetime_lateral=true", "train.side_loss_weight=8"],
    "cs_lat_sw4_lr2e-3": ["model.cond_skip=true", "model.spacetime_lateral=true", "train.side_loss_weight=4",
                          "train.lr=2e-3"],
    "cs_lat_sw4_rho0": ["model.cond_skip=true", "model.spacetime_lateral=true", "train.side_loss_weight=4",
                        "model.noise_lr_corr=0.0"],
}
GEN = [("cfg4.5", 4.5, False), ("cfg1", 1.0, False), ("cfg4.5_flip", 4.5, True)]


# ------------------------------------------------------------------------------------- pack (here)


def pack(manifest: Path, out: Path) -> None:
    import soundfile as sf
    from gpu_train_demo import pack as pack_demo

    from biaudio.manifest import read_manifest_frame
    from tests.e2e.test_build_train_generate import camera_azimuth
    from visaudio.eval.metrics import block_ild_db

    pack_demo(manifest, out, ["train"], "tiny", gen_split="test")
    df = read_manifest_frame(manifest)
    truth = {}
    for _, row in df[df.split == "test"].iterrows():
        ref, sr = sf.read(str(manifest / row["audio_path"]), always_2d=True)
        ild, energy = block_ild_db(ref.T, sr, 0.1)
        times = (np.arange(len(ild)) + 0.5) * 0.1
        az, ok = camera_azimuth(row, times)
        lat = np.sin(np.deg2rad(az))
        m = ok & (np.abs(lat) > 0.25) & (energy > energy.max() - 30)
        truth[row["clip_id"]] = {"lateral": lat.tolist(), "ok": ok.tolist(), "az": az.tolist(),
                                 "ref_ild": ild[m].tolist(), "ref_lat": lat[m].tolist()}
    (out / "truth.json").write_text(json.dumps(truth))
    print(f"truth for {len(truth)} test clips")


# ------------------------------------------------------------------------------------- stats


def side_stats(gen: dict[str, np.ndarray], truth: dict, sr: int) -> dict[str, float]:
    """The e2e test's statistics over all clips (same masks and truncation)."""
    from scipy.stats import binomtest

    from visaudio.eval.metrics import block_ild_db

    gi, la, ri, per_clip = [], [], [], {}
    for cid, audio in gen.items():
        t = truth[cid]
        ild, energy = block_ild_db(audio, sr, 0.1)
        lat = np.asarray(t["lateral"])[: len(ild)]
        ok = np.asarray(t["ok"])[: len(ild)]
        m = ok & (np.abs(lat) > 0.25) & (energy > energy.max() - 30)
        g, lg = ild[m], lat[m]
        k = min(len(g), len(t["ref_ild"]))
        gi.append(g[:k])
        la.append(lg[:k])
        ri.append(np.asarray(t["ref_ild"])[:k])
        per_clip[cid] = float(np.mean(g[:k])) if k else float("nan")
    gi, la, ri = np.concatenate(gi), np.concatenate(la), np.concatenate(ri)
    hits = int((np.sign(gi) == np.sign(la)).sum())
    return {"n": len(gi), "agree": hits / len(gi), "corr": float(np.corrcoef(gi, la)[0, 1]),
            "p": float(binomtest(hits, len(gi), 0.5, alternative="greater").pvalue),
            "ref_agree": float((np.sign(ri) == np.sign(la)).mean()), "ref_corr": float(np.corrcoef(ri, la)[0, 1]),
            "mean_ild": float(gi.mean()), "mean_abs_ild": float(np.abs(gi).mean()), "clip_mean_ild": per_clip}


# ------------------------------------------------------------------------------------- sweep (GPU)


def unpack(carry: Path, manifest_dir: Path) -> None:
    from gpu_train_demo import unpack_cache

    unpack_cache(carry, manifest_dir, "tiny")


def attn_diag(syn, clips: dict, truth: dict) -> dict[str, float]:
    """corr(attention column centroid of branch a, sin az_cam) over patch frames of the test clips."""
    import torch

    m, cfg = syn.model, syn.config
    cent = {0: [], 1: []}
    lat_all, peak = [], []
    for cid, (frames, _total) in clips.items():
        lat = np.asarray(truth[cid]["lateral"])
        for w0 in range(0, frames.shape[0] - cfg.n_sync_frames + 1, cfg.n_sync_frames):
            fr = torch.from_numpy(np.ascontiguousarray(frames[w0 : w0 + cfg.n_sync_frames]))[None].to(syn.device)
            with torch.no_grad():
                patch = m.video_enc(fr[:, :: m.sync_stride][:, : m.n_frames])
                st = m.spacetime
                B, Fn, gh, gw, D = patch.shape
                from visaudio.model.encoders import sincos_2d

                pe = sincos_2d(gh, gw, D, patch.device).reshape(gh, gw, D)
                pe = torch.stack([pe, pe.flip(1)]).reshape(2, 1, gh * gw, D)
                x = st.inp(patch.reshape(B, 1, Fn, gh * gw, D)) + pe[None] + st.E[None, :, None, None]
                w = torch.softmax(st.score(st.mlp(x)).squeeze(-1), dim=-1)  # (1, 2, F, P)
            col = torch.arange(gw, device=w.device).repeat(gh).float() - (gw - 1) / 2
            c = (w[0] * col).sum(-1).cpu().numpy()  # (2, F)
            peak.append(float(w.max(-1).values.mean()))
            times = w0 / cfg.data.sync_fps + np.arange(Fn) / cfg.data.fps
            idx = np.clip((times / 0.1).astype(int), 0, len(lat) - 1)
            lat_all.append(lat[idx])
            for a in (0, 1):
                cent[a].append(c[a])
    la = np.concatenate(lat_all)
    out = {"attn_peak": float(np.mean(peak))}
    for a, name in ((0, "L"), (1, "R")):
        ca = np.concatenate(cent[a])
        out[f"attn_corr_{name}"] = float(np.corrcoef(ca, la)[0, 1]) if ca.std() > 0 else float("nan")
    return out


def run_one(name: str, seed: int, manifest: str, carry: str, runs: str, steps: int, device: str) -> dict:
    import torch

    from visaudio.generate import Synthesizer
    from visaudio.train import train

    torch.set_num_threads(1)
    t0 = time.time()
    run = Path(runs) / f"{name}_s{seed}"
    ov = BASE + VARIANTS[name] + [f"seed={seed}"]
    s = train(manifest, "tiny", run, max_steps=steps, overrides=ov, device=device, progress=False)
    t_train = time.time() - t0
    truth = json.loads((Path(carry) / "truth.json").read_text())
    clips = {}
    for f in sorted((Path(carry) / "gen").glob("*.npz.xz")):
        z = np.load(io.BytesIO(lzma.decompress(f.read_bytes())))
        clips[f.name.removesuffix(".npz.xz")] = (z["frames"], float(z["total"]))
    syn = Synthesizer.from_run(run, device=device, use_ema=True)
    res = {"variant": name, "seed": seed, "overrides": VARIANTS[name], "steps": s["steps"],
           "first_loss": s["first_loss"], "last_loss": float(np.mean([v for _, v in s["losses"][-20:]])),
           "train_s": t_train}
    gens = {}
    for tag, cfg, flip in GEN:
        gen = {}
        for cid, (frames, total) in clips.items():
            fr = frames[:, :, ::-1] if flip else frames
            audio, sr = syn._generate_sync_frames(np.ascontiguousarray(fr), total, None, 25, cfg, 0)
            gen[cid] = audio
        gens[tag] = gen
        res[tag] = side_stats(gen, truth, sr)
    # flip consistency: per-frame ILD of the mirrored video vs the original (all loud frames)
    from visaudio.eval.metrics import block_ild_db

    a, b = [], []
    for cid in clips:
        ia, ea = block_ild_db(gens["cfg4.5"][cid], sr, 0.1)
        ib, _ = block_ild_db(gens["cfg4.5_flip"][cid], sr, 0.1)
        mm = ea > ea.max() - 30
        a.append(ia[mm])
        b.append(ib[mm])
    res["flip_corr"] = float(np.corrcoef(np.concatenate(a), np.concatenate(b))[0, 1])
    if syn.model.spacetime is not None:
        res.update(attn_diag(syn, clips, truth))
    res["total_s"] = time.time() - t0
    return res


def _worker(args, q) -> None:
    try:
        q.put(run_one(*args))
    except Exception as e:  # report and go on
        import traceback

        q.put({"variant": args[0], "seed": args[1], "error": f"{e!r}", "tb": traceback.format_exc()[-2000:]})


def sweep(carry: Path, out: Path, todo: list[tuple[str, int]], jobs: int, steps: int, budget_s: float,
          runs: Path, device: str) -> None:
    t0 = time.time()
    manifest = runs / "data"
    unpack(carry, manifest)
    print(f"unpacked in {time.time() - t0:.1f}s", flush=True)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    live: list = []
    out.mkdir(parents=True, exist_ok=True)
    res_f = out / "results.jsonl"
    n_done = 0
    while todo or live:
        while todo and len(live) < jobs and time.time() - t0 < budget_s:
            v, s = todo.pop(0)
            p = ctx.Process(target=_worker, args=((v, s, str(manifest), str(carry), str(runs), steps, device), q))
            p.start()
            live.append(p)
        if todo and time.time() - t0 >= budget_s:
            print(f"budget reached: {len(todo)} runs not started", flush=True)
            todo = []
        try:
            r = q.get(timeout=2.0)
        except Exception:
            r = None
        if r is not None:
            n_done += 1
            with open(res_f, "a") as f:
                f.write(json.dumps(r) + "\n")
            if "error" in r:
                print(f"[{r['variant']} s{r['seed']}] ERROR {r['error']}\n{r['tb']}", flush=True)
            else:
                c = r["cfg4.5"]
                print(f"[{r['variant']} s{r['seed']}] {time.time() - t0:.0f}s agree {c['agree']:.3f} "
                      f"corr {c['corr']:.3f} p {c['p']:.2g} | cfg1 {r['cfg1']['agree']:.3f}/"
                      f"{r['cfg1']['corr']:.3f} | flip {r['cfg4.5_flip']['agree']:.3f}/{r['cfg4.5_flip']['corr']:.3f}"
                      f" fc {r['flip_corr']:.2f} | attn L {r.get('attn_corr_L', float('nan')):.2f} "
                      f"R {r.get('attn_corr_R', float('nan')):.2f} | loss {r['last_loss']:.3f} "
                      f"train {r['train_s']:.0f}s", flush=True)
        live = [p for p in live if p.is_alive() or p.exitcode is None]
        if not todo and not live:
            while not q.empty():
                r = q.get()
                with open(res_f, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"sweep done: {n_done} results in {time.time() - t0:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("sweep")
    s.add_argument("carry", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--runs", type=Path, default=Path("/tmp/sweep-runs"))
    s.add_argument("--variants", default=",".join(VARIANTS))
    s.add_argument("--seeds", default="0,1,2,3")
    s.add_argument("--plan", default=None, help="'variant:s,s;variant:s,s' (overrides --variants/--seeds)")
    s.add_argument("--jobs", type=int, default=12)
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--budget-s", type=float, default=300.0, help="start no run after this many seconds")
    s.add_argument("--device", default="cuda:0")
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.manifest, a.out)
    else:
        if a.plan:
            plan = [(v, int(x)) for part in a.plan.split(";") for v, ss in [part.split(":")] for x in ss.split(",")]
            # interleave variants so an early stop still covers each
            todo = sorted(plan, key=lambda vs: [p for p in plan if p[0] == vs[0]].index(vs))
        else:  # seed-major: every variant gets seed 0 first
            todo = [(v, int(s)) for s in a.seeds.split(",") for v in a.variants.split(",")]
        sweep(a.carry, a.out, todo, a.jobs, a.steps, a.budget_s, a.runs, a.device)


if __name__ == "__main__":
    main()
