"""Self-contained HTML report: plots as inline PNG (matplotlib, Agg), audio files beside it.

No CDN, no JavaScript framework, no network: the report must open from a file:// URL on an
offline machine (and in the headless Chromium test without a single console error).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np

from biaudio import atomic

BAR_METRICS = [
    "lat_corr_ref", "lat_corr_az", "ild_sign_agreement", "motion_consistency",
    "ild_frame_error_db", "ild_error_db", "itd_error_us", "ipd_error_rad",
    "coherence_error", "stft_distance", "env_distance", "width_db", "fd_logmel",
]

COLORS = {
    "reference": "#222222", "visaudio": "#d62728", "mono": "#1f77b4", "two-stage": "#2ca02c",
    "two-stage-sync": "#17becf",
    "swapped-reference": "#9467bd", "mono-duplicated-reference": "#8c8c8c",
}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    av = abs(v)
    return f"{v:.3g}" if av < 1000 else f"{v:.0f}"


def metric_bars(summary: dict) -> str:
    import matplotlib.pyplot as plt

    systems = list(summary["systems"])
    names = [m for m in BAR_METRICS if any(m in summary["systems"][s]["metrics"] for s in systems)]
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.5 * rows), squeeze=False)
    for ax, m in zip(axes.ravel(), names, strict=False):
        vals, lo, hi, cs = [], [], [], []
        for s in systems:
            d = summary["systems"][s]["metrics"].get(m, {})
            v = d.get("mean")
            v = np.nan if v is None else v
            vals.append(v)
            lo.append(v - (d.get("ci_low") if d.get("ci_low") is not None else v))
            hi.append((d.get("ci_high") if d.get("ci_high") is not None else v) - v)
            cs.append(COLORS.get(s, "#777777"))
        y = np.arange(len(systems))
        ax.barh(y, np.nan_to_num(vals), xerr=[np.clip(np.nan_to_num(lo), 0, None), np.clip(np.nan_to_num(hi), 0, None)], color=cs, capsize=3)
        ax.set_yticks(y, [s.replace("-reference", "-ref") for s in systems], fontsize=7)
        ax.invert_yaxis()
        info = summary["metric_info"].get(m, {})
        arrow = "higher better" if info.get("higher_is_better") else "lower better"
        ax.set_title(f"{m}\n({arrow})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.axvline(0, color="k", lw=0.5)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle("Means with 95 % bootstrap intervals over clips", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def clip_plot(cid: str, ser: dict) -> str:
    import matplotlib.pyplot as plt

    t = np.asarray(ser["t"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 2.8))
    for s, v in ser["ild"].items():
        lw = 2.2 if s in ("reference", "visaudio") else 1.0
        a1.plot(t[: len(v)], v, label=s, color=COLORS.get(s, "#777777"), lw=lw,
                ls="--" if s == "swapped-reference" else "-")
    a1.axhline(0, color="k", lw=0.5)
    a1.set_xlabel("time (s)")
    a1.set_ylabel("frame ILD (dB, + = left)")
    a1.set_title(f"{cid}: ILD over time", fontsize=9)
    a1.legend(fontsize=6, ncol=2, loc="upper right")
    yaw = np.asarray(ser["yaw"], dtype=float)
    a2.plot(t, yaw, color="#444444", label="camera yaw (world)")
    a2.plot(t, np.asarray(ser["az_world"], dtype=float), color="#ff7f0e", label="source azimuth (world)")
    a2.plot(t, np.asarray(ser["az_cam"], dtype=float), color="#17becf", label="source azimuth (camera)")
    a2.axhline(0, color="k", lw=0.5)
    a2.set_xlabel("time (s)")
    a2.set_ylabel("degrees (+ = left)")
    a2.set_title("camera yaw vs dominant source azimuth", fontsize=9)
    a2.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    from biaudio.media.audio import limit_peak

    x = limit_peak(np.asarray(audio, dtype=np.float64), 0.99)  # listening copies only; metrics never see this
    sf.write(str(path), x.T, int(sr), subtype="PCM_16")


def write_report(report_dir: Path, summary: dict, series: dict, audio: dict) -> Path:
    """Write ``index.html`` (and ``audio/*.wav`` for the first few clips) into ``report_dir``.

    The page is the sections below in order, each built by its own helper: header, headline
    comparisons, metrics table, per-scene-type table, metric bars, clips, settings."""
    import matplotlib

    matplotlib.use("Agg")
    report_dir = Path(report_dir)
    adir = report_dir / "audio"
    adir.mkdir(parents=True, exist_ok=True)
    parts = _page_head(summary)
    parts += _comparisons_section(summary.get("comparisons") or [])
    parts += _metrics_section(summary)
    parts += _scene_type_section(summary.get("by_scene_type") or {})
    parts.append(f"<h2>Metric bars</h2><img alt='metric bars' src='{metric_bars(summary)}'>")
    parts += _clips_section(series, audio, adir)
    parts.append("<h2>Settings</h2><pre>")
    parts.append(html.escape("\n".join(f"{k}: {v}" for k, v in summary["settings"].items())))
    parts.append("</pre></body></html>")
    out = report_dir / "index.html"
    return atomic.write_text(out, "".join(parts))


def _page_head(summary: dict) -> list[str]:
    """Document head, style sheet, title and the run's settings in one paragraph."""
    esc = html.escape
    return [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<link rel='icon' href='data:,'>",
        "<title>visaudio eval report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}",
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}",
        "th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}",
        ".good{background:#e6f4e6}.bad{background:#fbe9e9}img{max-width:100%}",
        "audio{height:28px;width:220px}.small{color:#666;font-size:12px}</style></head><body>",
        "<h1>visaudio eval</h1>",
        f"<p>Manifest <code>{esc(str(summary['manifest']))}</code>, split <b>{esc(summary['split'])}</b>, "
        f"{summary['n_clips']} clips. Generation: steps {summary['generation']['steps']}, cfg "
        f"{summary['generation']['cfg']}, seed {summary['generation']['seed']}. "
        f"95 % intervals: {esc(summary['bootstrap']['method'])}, {summary['bootstrap']['n']} resamples.</p>",
        "<p class='small'>Offline replacements for the paper's network-based metrics: none of these numbers is "
        "comparable with FD_VGG / KL_PANN / DeSync / IB. <code>fd_logmel</code> is a Fréchet distance on log-mel "
        "statistics, a smoke metric only.</p>",
    ]


def _comparisons_section(comps: list[dict]) -> list[str]:
    """The headline table: ViSAudio against each baseline, green where shown better."""
    esc = html.escape
    if not comps:
        return []
    parts = ["<h2>Headline: does ViSAudio hear where things are?</h2><table><tr><th>metric</th>"
             "<th>baseline</th><th>ViSAudio</th><th>baseline mean</th><th>paired diff [95 %]</th>"
             "<th>non-overlapping &amp; better</th></tr>"]
    for c in comps:
        ok = c["non_overlapping_and_better"]
        lo, hi = c["paired_diff_ci"]
        parts.append(
            f"<tr class='{'good' if ok else 'bad'}'><td>{esc(c['metric'])}</td><td>{esc(c['baseline'])}</td>"
            f"<td>{_fmt(c['system_mean'])}</td><td>{_fmt(c['baseline_mean'])}</td>"
            f"<td>{_fmt(c['paired_diff_mean'])} [{_fmt(lo)}, {_fmt(hi)}]</td><td>{'yes' if ok else 'no'}</td></tr>")
    parts.append("</table>")
    return parts


def _metrics_section(summary: dict) -> list[str]:
    """Every metric (rows) by system (columns), then each system's note."""
    esc = html.escape
    systems = list(summary["systems"])
    parts = ["<h2>Metrics (mean [95 % interval])</h2><table><tr><th>metric</th>"]
    parts += [f"<th>{esc(s)}</th>" for s in systems]
    parts.append("</tr>")
    for m, info in summary["metric_info"].items():
        parts.append(f"<tr><td title='{esc(info['description'])}'>{esc(m)} "
                     f"{'↑' if info['higher_is_better'] else '↓'}</td>")
        for s in systems:
            d = summary["systems"][s]["metrics"].get(m)
            cell = "n/a" if not d else f"{_fmt(d['mean'])} [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]"
            parts.append(f"<td>{cell}</td>")
        parts.append("</tr>")
    parts.append("</table><p class='small'>")
    parts += [f"<b>{esc(s)}</b>: {esc(summary['systems'][s]['note'])}. " for s in systems]
    parts.append("</p>")
    return parts


def _scene_type_section(by_type: dict) -> list[str]:
    """Key metrics per synthetic scene type and system (empty on a non-synthetic build)."""
    esc = html.escape
    if not by_type:
        return []
    key = ["lat_corr_ref", "motion_consistency", "ild_sign_agreement", "lat_corr_az"]
    parts = ["<h2>Per scene type (mean [95 % interval])</h2><table><tr><th>scene type</th><th>system</th>"]
    parts += [f"<th>{esc(m)}</th>" for m in key]
    parts.append("</tr>")
    for t, d in by_type.items():
        for sname, ms in d["systems"].items():
            cells = []
            for m in key:
                v = ms.get(m)
                cells.append("n/a" if not v else f"{_fmt(v['mean'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]")
            parts.append(f"<tr><td>{esc(t)} ({d['n_clips']} clips)</td><td>{esc(sname)}</td>"
                         + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    return parts


def _clips_section(series: dict, audio: dict, adir: Path) -> list[str]:
    """Per clip its ILD/geometry plot and, for clips with audio, players (the wavs go to ``adir``)."""
    esc = html.escape
    parts = ["<h2>Clips</h2>"]
    for cid in list(series)[: max(3, len(audio))]:
        parts.append(f"<h3>{esc(cid)}</h3><img alt='ILD and geometry {esc(cid)}' src='{clip_plot(cid, series[cid])}'>")
        if cid in audio:
            parts.append("<div>")
            for s, (a, sr) in audio[cid].items():
                name = f"{cid}__{s}.wav"
                _write_wav(adir / name, a, sr)
                parts.append(f"<span style='display:inline-block;margin:4px'>{esc(s)}<br>"
                             f"<audio controls preload='none' src='audio/{esc(name)}'></audio></span>")
            parts.append("</div>")
    return parts
