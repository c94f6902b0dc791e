"""Sphere360-style cleaning filters. Each returns a :class:`FilterResult` with a score for the
manifest and, when it rejects, a reason slug for the rejects table.

Why scores *and* a verdict: thresholds are recipe parameters that people tune after looking at the
data, so the raw score is always kept (even for kept clips) and the verdict can be recomputed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class FilterResult:
    """``score`` is the filter's ratio (e.g. fraction of silent chunks); ``reason`` is None when passed."""

    name: str
    score: float
    passed: bool
    reason: str | None = None
    detail: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self, with_extra: bool = True) -> dict:
        d = asdict(self)
        if not with_extra:
            d.pop("extra")
        return d


__all__ = ["FilterResult"]
