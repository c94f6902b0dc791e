"""The build engine: recipe -> per-item work units -> clips + ``manifest.parquet`` (schema v2).

``run.build`` orchestrates; ``items`` turns sources into work items and plans them; ``worker``
runs one item and writes its completion record; ``executors`` run workers in a local process pool
or on Ray; ``state`` owns the records, the lock and the sweeps; ``assemble`` turns records into
the manifest, rejects and stats; ``check`` (``biaudio validate``), ``stats``, ``splits`` and
``upgrade`` work on a finished folder; ``types`` is what crosses the engine/stage boundary. What
one item goes through is ``biaudio.stages``. Nothing is imported here, so importing a submodule
stays cheap.
"""
