"""ViSAudio vs the two-stage baselines on the spatial-bench world (and the demo), CPU budget.

Builds the ``spatial-bench`` recipe (unless ``--bench`` names a finished build), trains the
tiny binaural model with each variant (``--variant NAME=override,override``; ``base`` = tiny as
shipped) and one mono model, runs ``visaudio eval`` (all two-stage baselines, 95 % cluster
bootstrap) on the test split, and prints one JSON line per variant with the pooled and per-scene-type
means of the key metrics and the paired differences against each two-stage baseline.

Usage (the README's spatial-bench tables: both routes trained on the bench's train split plus the
world's 120-scene training-only draw, 4-s windows; the centred and attended settings judged on the
confirmation draw, the attended one also on the fresh draw (``--confirm spatial-bench-fresh``);
``--variant NAME=...,seed=1`` for another training seed):
  python benchmarks/bench_spatial.py --work /tmp/sb --steps 300 --mono-steps 300 \\
      --mix spatial-bench-train --mono-set data.clip_seconds=4.0 --cfg 7 --confirm spatial-bench-confirm \\
      --variant base= \\
      --variant centred=model.camera_motion=true,model.camera_motion_centered=true,data.clip_seconds=4.0 \\
      --variant attended=model.camera_motion=true,model.camera_motion_centered=true,\\
model.spacetime_lateral_attended=true,data.clip_seconds=4.0
The sampler setting judged last: the attended runs again with ``--side-noise 0`` (both ears start
from the same noise; no retraining), also with ``--confirm spatial-bench-fresh2``, the fifth draw.
The demo comparison: ``--bench`` the demo build (no ``--mix``/``--confirm``), one variant per seed (one
call per cfg: ``base`` at 4.5, ``centred`` and ``attended`` at 7), then ``benchmarks/paired_seeds.py`` over
the seeds' reports.
Paper ablations: add ``,model.use_spacetime=false`` or ``,model.shared_branch=true`` to a variant;
no guidance: ``--cfg 1``; ``--mix BUILD`` trains the models on the bench's and BUILD's train splits
together (BUILD: a finished build folder, or a built-in recipe name built into WORK/<name>, e.g.
``--mix spatial-bench-train``, the world's 120-scene training-only draw). With ``--mix`` the mono
model of the two-stage baselines trains on the same mixed train split (``--mono-steps`` steps), so
both routes see the same clips; every evaluation stays on the bench's own test split.
``--confirm BUILD`` (a finished build folder or a built-in recipe name, e.g.
``--confirm spatial-bench-confirm``, a third draw of the world with every clip in test) also
evaluates each bench run and the same mono model on BUILD's test split, without training (dataset
``confirm``; ``confirm-<folder>`` for any build but spatial-bench-confirm, since draws share clip
ids): settings are picked on the bench, and a picked one is judged once on scenes not looked at
while picking.
Runs resume (training and the eval cache, WORK/cache-<dataset>), so a second call only redoes what changed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TRAIN_OVERRIDES = ["train.batch_size=8", "train.val_every=100000", "train.ckpt_every=100", "train.warmup_steps=20",
                   "train.lr=1e-3", "train.ema_decay=0.99", "train.tensorboard=false"]
KEYS = ["lat_corr_ref", "motion_consistency", "ild_sign_agreement", "lat_corr_az"]


def _build(out: Path, recipe: str) -> Path:
    from biaudio.engine.run import build
    from biaudio.recipe import load_recipe

    if not (out / "manifest.parquet").is_file():
        s = build(load_recipe(recipe), out)
        if s.exit_code != 0:
            raise SystemExit(f"build failed: {s.to_dict()}")
    return out


def _trained_to(run: Path) -> int:
    """The last logged step of a run with a checkpoint (0 if none)."""
    log = run / "train_log.csv"
    if not (run / "ckpt" / "last.pt").is_file() or not log.is_file():
        return 0
    rows = log.read_text().strip().splitlines()[1:]
    return int(rows[-1].split(",")[0]) if rows else 0


def _train(manifest: Path, run: Path, steps: int, overrides: list[str], threads: int) -> float:
    from visaudio.train import train

    # A finished run is not resumed: resuming rewrites its config.yaml, which changes the
    # checkpoint fingerprint the eval cache is keyed on, so every system would be generated again.
    if _trained_to(run) >= steps:
        return 0.0
    t0 = time.time()
    train(manifest, "tiny", run, max_steps=steps, overrides=TRAIN_OVERRIDES + [f"train.num_threads={threads}"] + overrides,
          progress=False)
    return time.time() - t0


def _finished_build(work: Path, spec: str, flag: str) -> Path:
    """``--mix``'s (or ``--confirm``'s) build: a finished build folder, or a built-in recipe name
    built into WORK/<name>."""
    from biaudio.recipe import builtin_recipes

    p = Path(spec)
    if (p / "manifest.parquet").is_file():
        return p
    if spec in builtin_recipes():
        return _build(work / spec, spec)
    raise SystemExit(f"{flag} {spec}: neither a finished build folder nor a built-in recipe")


def _mix(work: Path, bench: Path, extra: Path) -> Path:
    """A manifest folder whose train split is the bench's train split plus ``extra``'s (val and
    test stay the bench's): both builds are linked in, the media paths point through the links."""
    import pandas as pd

    from biaudio.manifest import read_manifest_frame, write_frame

    out = work / f"mix-{extra.name}"  # one folder per added build: a finished mix is reused as it is
    if (out / "manifest.parquet").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, root, splits in (("bench", bench, None), ("extra", extra, ["train"])):
        link = out / name
        if not link.exists():
            link.symlink_to(Path(root).resolve())
        df = read_manifest_frame(root)
        if splits is not None:
            df = df[df["split"].isin(splits)]
        df = df.assign(clip_id=[f"{name}-{c}" for c in df["clip_id"]],
                       video_path=[f"{name}/{v}" for v in df["video_path"]],
                       audio_path=[f"{name}/{v}" for v in df["audio_path"]])
        parts.append(df)
    write_frame(pd.concat(parts, ignore_index=True), out / "manifest.parquet")
    return out


def _compact(summary: dict) -> dict:
    def ms(systems: dict) -> dict:
        return {s: {k: round(v[k]["mean"], 3) if k in v and v[k]["mean"] == v[k]["mean"] else None for k in KEYS}
                for s, v in systems.items()}

    out = {"n_clips": summary["n_clips"],
           "pooled": ms({s: v["metrics"] for s, v in summary["systems"].items()}),
           "paired": [{k: c[k] for k in ("metric", "baseline", "paired_diff_mean", "paired_diff_ci", "paired_better")}
                      for c in summary["comparisons"] if c["baseline"] != "mono"]}
    for t, d in (summary.get("by_scene_type") or {}).items():
        out[t] = {"n_clips": d["n_clips"], **ms(d["systems"]),
                  "paired": [{k: c[k] for k in ("metric", "baseline", "paired_diff_mean", "paired_diff_ci")}
                             for c in d["comparisons"] if c["baseline"] != "mono"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--bench", type=Path, default=None, help="a finished spatial-bench build")
    ap.add_argument("--demo", type=Path, default=None, help="a finished demo build (also evaluated)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--mono-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", action="append", default=[], help="NAME=override,override (repeatable)")
    ap.add_argument("--mono-set", default="", help="overrides for the mono model too (comma-separated), e.g. "
                    "data.clip_seconds=4.0 when the variants use 4-s windows")
    ap.add_argument("--cfg", type=float, default=4.5)
    ap.add_argument("--gen-steps", type=int, default=25)
    ap.add_argument("--side-noise", type=float, default=None,
                    help="ViSAudio's side-noise temperature at sampling (generate.side_noise, 0..1; default: the "
                         "run's own, 1); reports get a -sn<value> suffix")
    ap.add_argument("--mix", default=None,
                    help="a finished build folder or a built-in recipe name (spatial-bench-train) whose train split is "
                         "added to the bench's for the binaural variants and the mono model (every evaluation stays on "
                         "the bench's test split)")
    ap.add_argument("--confirm", default=None,
                    help="a finished build folder or a built-in recipe name (spatial-bench-confirm) on whose test split "
                         "every bench run is evaluated too, without training (dataset 'confirm')")
    a = ap.parse_args()
    from visaudio.eval import runner as R

    a.work.mkdir(parents=True, exist_ok=True)
    datasets = {"bench": a.bench or _build(a.work / "bench", "spatial-bench")}
    if a.demo:
        datasets["demo"] = a.demo
    variants = [v.split("=", 1) for v in (a.variant or ["base="])]
    extra = _finished_build(a.work, a.mix, "--mix") if a.mix else None
    confirm = _finished_build(a.work, a.confirm, "--confirm") if a.confirm else None
    # the eval cache names files by clip id, and every draw of the world has the same ids
    # (scene_0000_0, ...): each --confirm build gets its own dataset name, so its own cache and reports
    confirm_name = "confirm" if confirm is None or confirm.name == "spatial-bench-confirm" else f"confirm-{confirm.name}"
    for dname, manifest in datasets.items():
        train_on = _mix(a.work, manifest, extra) if (extra and dname == "bench") else manifest
        # the mono run's folder names what it was trained on: a finished run is never retrained
        mono = a.work / "-".join([f"{dname}-mono"] + ([train_on.name] if train_on != manifest else [])
                                 + ([a.mono_set.replace(",", "-")] if a.mono_set else []))
        t_mono = _train(train_on, mono, a.mono_steps, ["data.channels=mono"] + [o for o in a.mono_set.split(",") if o],
                        a.threads)
        for name, ov in variants:
            run = a.work / f"{dname}-{name}"
            t_train = _train(train_on, run, a.steps, [o for o in ov.split(",") if o], a.threads)
            evals = [(dname, manifest)] + ([(confirm_name, confirm)] if (confirm and dname == "bench") else [])
            for ename, edir in evals:
                t0 = time.time()
                # one cache per evaluated build: the mono and two-stage audio every variant shares is
                # generated once (cache keys name the checkpoint, steps and cfg)
                sn = "" if a.side_noise is None else f"-sn{a.side_noise:g}"
                cfg = R.EvalConfig(manifest_dir=edir, report_dir=a.work / f"report-{ename}-{name}-cfg{a.cfg:g}{sn}",
                                   ckpt=run, mono_ckpt=mono, systems=R.resolve_systems(None, run, mono),
                                   steps=a.gen_steps, cfg=a.cfg, side_noise=a.side_noise, n_audio_clips=0,
                                   cache_dir=a.work / f"cache-{ename}")
                summary = R.run(cfg)
                print(json.dumps({"dataset": ename, "variant": name, "overrides": ov,
                                  "mix": str(extra) if extra else None, "steps": a.steps, "mono_steps": a.mono_steps,
                                  "mono_set": a.mono_set, "train_s": round(t_train), "mono_train_s": round(t_mono),
                                  "eval_s": round(time.time() - t0), "cfg": a.cfg, "side_noise": a.side_noise,
                                  **_compact(summary)}), flush=True)


if __name__ == "__main__":
    main()
