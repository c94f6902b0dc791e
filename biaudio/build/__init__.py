"""The dataset build: recipe -> per-item work units -> clips + ``manifest.parquet`` (schema v2).

Engine: ``recipe`` (what to build), ``executor`` (how: resumable per-item units on a process pool
or Ray), ``manifest`` (the schema and its files), ``validate`` / ``stats`` (checking and
summarising a finished folder), ``types`` (what crosses the engine/stage boundary). Stages:
``pipeline.process_item`` chains ``trajectory``, ``render``, ``spatial_cue``, ``caption``.
Nothing is imported here, so importing a submodule stays cheap.
"""
