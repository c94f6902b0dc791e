"""Ingest: source lists (``sources``), yt-dlp fetch (``fetch``), probe/validate (``validate``), and
the one-decode analysis of a local file (``analysis.analyze_file``: probe, cleaning filters, shot
segmentation). Nothing is imported here, so importing a submodule stays cheap.
"""
