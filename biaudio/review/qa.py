"""QA summary (counts, inter-pass agreement) and ``qa apply`` (decisions -> a new manifest version).

Definitions used everywhere here:

* A pass's decision on a clip is the newest decision in that pass that was not undone (if several
  reviewers share a pass, the newest of theirs). ``skip`` means "not decided": it is counted in the
  summary but ignored by agreement and by every apply policy.
* Agreement between two passes is **Cohen's kappa** over the clips both passes decided, with the
  three categories accept / reject / flag (reject reasons are not compared: two reviewers who both
  reject agree even if they name different reasons). ``kappa = (p_o - p_e) / (1 - p_e)`` where
  ``p_o`` is the observed agreement and ``p_e = sum_k p_a(k) p_b(k)`` the agreement expected by
  chance from each pass's marginals. When ``p_e == 1`` (both passes used one and the same single
  category) kappa is undefined and reported as ``None``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from biaudio.review.clips import manifest_path, read_manifest_table
from biaudio.review.db import QADatabase, db_path, now_iso

KAPPA_CATEGORIES = ("accept", "reject", "flag")
POLICIES = ("last-pass-wins", "any-reject-rejects", "majority")
STATUS = {"accept": "accepted", "reject": "rejected", "flag": "flagged"}

POLICY_HELP = (
    "How passes combine into qa_status per clip (skips and undone decisions never count; clips no "
    "pass decided keep their current qa_status, 'pending' when none):\n\n"
    "last-pass-wins: the decision of the highest-numbered pass that decided the clip.\n\n"
    "any-reject-rejects: rejected if any pass rejected it, else flagged if any pass flagged it, "
    "else accepted.\n\n"
    "majority: the decision most passes made; a tie between different decisions gives flagged "
    "(a person must look again).\n\n"
    "qa_reason: the reject reason (or flag note) of the pass that set the status (for majority and "
    "any-reject-rejects the newest rejecting pass), with the reviewer's note appended after ': '."
)


@dataclass
class Kappa:
    pass_a: int
    pass_b: int
    n: int
    observed: float | None
    expected: float | None
    kappa: float | None
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)


def cohen_kappa(
    a: list[str], b: list[str], categories: tuple[str, ...] = KAPPA_CATEGORIES
) -> tuple[float | None, float | None, float | None]:
    """(observed, expected, kappa) for two aligned label lists; ``None`` where undefined."""
    if len(a) != len(b):
        raise ValueError("label lists must be aligned")
    n = len(a)
    if n == 0:
        return None, None, None
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum((ca[k] / n) * (cb[k] / n) for k in categories)
    if abs(1.0 - pe) < 1e-12:
        return po, pe, None
    return po, pe, (po - pe) / (1.0 - pe)


def _reason_text(reason: str | None, note: str | None) -> str | None:
    if reason and note:
        return f"{reason}: {note}"
    return reason or note or None


def summary(out_dir: Path) -> dict[str, Any]:
    """Counts per pass (decisions, reject reasons, reviewers) and kappa for every pair of passes."""
    path = db_path(out_dir)
    db = QADatabase(path, create=False, readonly=True)
    rows = db.all_rows()
    effective = db.effective()
    by_pass: dict[int, dict[str, Any]] = {}
    for p in sorted({r["pass"] for r in rows}):
        live = [d for d in effective if d.pass_ == p]
        decided = [d for d in live if d.decision != "skip"]
        by_pass[p] = {
            "pass": p,
            "reviewers": sorted({r["reviewer"] for r in rows if r["pass"] == p}),
            "clips_seen": len(live),
            "clips_decided": len(decided),
            "decisions": dict(Counter(d.decision for d in live)),
            "reject_reasons": dict(Counter(d.reason or "(none)" for d in live if d.decision == "reject")),
            "events": sum(1 for r in rows if r["pass"] == p),
            "undone": sum(1 for r in rows if r["pass"] == p and r["undone"]),
        }
    per_pass = defaultdict(dict)
    for d in effective:
        if d.decision != "skip":
            per_pass[d.pass_][d.clip_id] = d.decision
    agreement = []
    for pa, pb in combinations(sorted(per_pass), 2):
        common = sorted(set(per_pass[pa]) & set(per_pass[pb]))
        la = [per_pass[pa][c] for c in common]
        lb = [per_pass[pb][c] for c in common]
        po, pe, k = cohen_kappa(la, lb)
        conf = {x: {y: 0 for y in KAPPA_CATEGORIES} for x in KAPPA_CATEGORIES}
        for x, y in zip(la, lb, strict=True):
            conf[x][y] += 1
        agreement.append(asdict(Kappa(pa, pb, len(common), po, pe, k, conf)))
    return {
        "db": str(path),
        "passes": list(by_pass.values()),
        "agreement": agreement,
        "kappa_categories": list(KAPPA_CATEGORIES),
    }


def resolve(policy: str, per_pass: dict[int, Any]) -> tuple[str, str | None] | None:
    """(qa_status, qa_reason) for one clip from its decisions keyed by pass (skips removed)."""
    if not per_pass:
        return None
    ordered = [per_pass[p] for p in sorted(per_pass)]
    rejects = [d for d in ordered if d.decision == "reject"]
    if policy == "last-pass-wins":
        d = ordered[-1]
        return STATUS[d.decision], _reason_text(d.reason, d.note) if d.decision != "accept" else None
    if policy == "any-reject-rejects":
        if rejects:
            return "rejected", _reason_text(rejects[-1].reason, rejects[-1].note)
        flags = [d for d in ordered if d.decision == "flag"]
        if flags:
            return "flagged", _reason_text(flags[-1].reason, flags[-1].note)
        return "accepted", None
    if policy == "majority":
        counts = Counter(d.decision for d in ordered)
        top = counts.most_common()
        if len(top) > 1 and top[0][1] == top[1][1]:
            return "flagged", "tie: " + ", ".join(f"{k} {v}" for k, v in sorted(top))
        winner = top[0][0]
        if winner == "reject":
            return "rejected", _reason_text(rejects[-1].reason, rejects[-1].note)
        if winner == "flag":
            flags = [d for d in ordered if d.decision == "flag"]
            return "flagged", _reason_text(flags[-1].reason, flags[-1].note)
        return "accepted", None
    raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")


def apply(out_dir: Path, policy: str = "last-pass-wins") -> dict[str, Any]:
    """Write a new ``manifest.parquet`` with ``qa_status``/``qa_reason`` set by ``policy``.

    The current manifest is first copied to ``manifest_versions/manifest.v<N>.parquet`` (N grows),
    then the new one is written to a temporary file in OUT and renamed over ``manifest.parquet``,
    so readers see either the old or the new manifest, never half of one, and every earlier
    version stays available for rollback.
    """
    import pyarrow as pa

    from biaudio import manifest as mf

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    out_dir = Path(out_dir)
    table = read_manifest_table(out_dir)
    db = QADatabase(db_path(out_dir), create=False)
    decided: dict[str, dict[int, Any]] = defaultdict(dict)
    for d in db.effective():
        if d.decision != "skip":
            decided[d.clip_id][d.pass_] = d
    ids = [str(x) for x in table.column("clip_id").to_pylist()]
    old_status = (
        table.column("qa_status").to_pylist() if "qa_status" in table.column_names else [None] * len(ids)
    )
    old_reason = (
        table.column("qa_reason").to_pylist() if "qa_reason" in table.column_names else [None] * len(ids)
    )
    status, reason = [], []
    for cid, s0, r0 in zip(ids, old_status, old_reason, strict=True):
        res = resolve(policy, decided.get(cid, {}))
        if res is None:
            status.append(s0 or "pending")
            reason.append(r0)
        else:
            status.append(res[0])
            reason.append(res[1])
    for name, values in (("qa_status", status), ("qa_reason", reason)):
        arr = pa.array(values, type=pa.string())
        if name in table.column_names:
            i = table.column_names.index(name)
            field_ = table.schema.field(i)
            table = table.set_column(i, field_.with_type(pa.string()), arr)
        else:
            table = table.append_column(pa.field(name, pa.string(), nullable=True), arr)
    counts = dict(Counter(status))
    unknown = sorted(set(decided) - set(ids))
    previous = mf.keep_version(out_dir)
    meta = dict(table.schema.metadata or {})
    meta[b"biaudio.qa_apply"] = json.dumps(
        {"policy": policy, "applied_at": now_iso(), "previous_version": previous.name, "counts": counts}
    ).encode()
    table = table.replace_schema_metadata(meta)
    mf.write_table(table, manifest_path(out_dir))
    result = {
        "manifest": str(manifest_path(out_dir)),
        "previous_version": str(previous),
        "policy": policy,
        "counts": counts,
        "clips": len(ids),
        "clips_with_decisions": sum(1 for c in ids if c in decided),
        "decisions_for_unknown_clips": unknown,
    }
    db.log_apply(policy, previous.name, json.dumps(counts))
    return result
