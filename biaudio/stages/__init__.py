"""One item's chain of stages: ``item.process_item`` chains ``trajectory``, ``render``,
``spatial_cue`` and ``caption`` over the windows that ingest analysis keeps. The engine
(``biaudio.engine``) calls ``process_item`` in its workers and knows nothing else of this package.
Nothing is imported here, so importing a submodule stays cheap.
"""
