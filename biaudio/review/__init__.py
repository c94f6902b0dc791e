"""Manual QA review passes: what the automatic filters cannot judge, people decide.

* ``clips.py``  reads ``OUT/manifest.parquet`` (schema v1 or v2; optional columns may be missing),
  selects a pass's clips (``--where`` duckdb predicate, seeded ``--sample``), builds page payloads.
* ``db.py``     ``OUT/qa.sqlite``: append-only ``decisions`` (clip_id, pass, reviewer, decision,
  reason, note, created_at, undone), WAL, one committed transaction per decision.
* ``server.py`` stdlib HTTP server for the page (``static/``), token-protected JSON API, media with
  Range support; serves only media listed in the manifest, inside OUT.
* ``qa.py``     ``qa summary`` (counts, Cohen's kappa between passes) and ``qa apply`` (policies ->
  ``qa_status``/``qa_reason`` in a new manifest; the old one kept in ``manifest_versions/``).

CLI: ``biaudio review OUT``, ``biaudio qa summary OUT``, ``biaudio qa apply OUT`` (biaudio/cli/review.py).
"""
