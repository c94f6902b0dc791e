"""Paired comparison of two settings over several training seeds, on one evaluated split.

Why: on a small test split (the demo's 8 clips from 4 scenes) one training seed of a setting can
differ from another by more than the settings differ; comparing seed 0 with seed 0 then says more
about the seed than the setting. Here each setting's per-clip metrics are first averaged over its
seeds (``visaudio eval`` reports of the same split, one per seed), then the per-clip difference
A - B gets a 95 % cluster-bootstrap interval over the clips' sources (scenes), as ``visaudio eval``
gives its paired intervals.

Usage (the README's demo comparison):
  python benchmarks/paired_seeds.py --a W/report-bench-cmc-cfg7 W/report-bench-cmcs1-cfg7 W/report-bench-cmcs2-cfg7 \\
      --b W/report-bench-base-cfg4.5 W/report-bench-bases1-cfg4.5 W/report-bench-bases2-cfg4.5
Prints one JSON object: per setting the seed-mean of each metric and each seed's mean, and the paired
difference with its interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from biaudio.manifest import read_frame
from visaudio.eval.runner import paired_diff_ci

METRICS = ["lat_corr_ref", "motion_consistency", "ild_sign_agreement"]


def per_clip(reports: list[Path], system: str) -> tuple[pd.DataFrame, list[dict[str, float]]]:
    """Seed-mean per clip (clips every report has), and each report's own means."""
    frames, means = [], []
    for r in reports:
        p = read_frame(Path(r) / "per_clip.parquet")
        p = p[p.system == system].set_index("clip_id")
        if p.empty:
            raise SystemExit(f"{r}: no rows for system {system!r}")
        frames.append(p)
        means.append({m: round(float(p[m].mean()), 3) for m in METRICS})
    common = sorted(set.intersection(*(set(f.index) for f in frames)))
    avg = sum(f.loc[common, METRICS] for f in frames) / len(frames)
    avg["source_id"] = frames[0].loc[common, "source_id"]
    return avg, means


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", nargs="+", type=Path, required=True, help="reports of setting A, one per seed")
    ap.add_argument("--b", nargs="+", type=Path, required=True, help="reports of setting B, one per seed")
    ap.add_argument("--system-a", default="visaudio")
    ap.add_argument("--system-b", default="visaudio")
    ap.add_argument("--n-boot", type=int, default=2000)
    a = ap.parse_args(argv)
    A, ma = per_clip(a.a, a.system_a)
    B, mb = per_clip(a.b, a.system_b)
    clips = A.index.intersection(B.index)
    out: dict = {"n_clips": len(clips), "n_scenes": int(A.loc[clips, "source_id"].nunique()),
                 "a": {"seeds": ma}, "b": {"seeds": mb}, "paired": {}}
    for m in METRICS:
        out["a"][m] = round(float(A.loc[clips, m].mean()), 3)
        out["b"][m] = round(float(B.loc[clips, m].mean()), 3)
        d, lo, hi, n = paired_diff_ci(A.loc[clips, m].to_numpy(), B.loc[clips, m].to_numpy(), a.n_boot, 0,
                                      A.loc[clips, "source_id"].to_numpy())
        out["paired"][m] = {"diff": round(d, 3), "ci": [round(lo, 3), round(hi, 3)], "n": n}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
