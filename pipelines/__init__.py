"""featstore's stages, one module each, as plain Python functions that the CLI calls.

The batch stages (extract-audio, extract-frames, ...) run on :mod:`featstore.pipelines.runner`, which carries
parallelism (dask), resumption and failure handling once; each stage supplies only its per-clip work.
"""
