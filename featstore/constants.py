"""Constants from the papers (docs/explanation/data-model.md): the label map, meta-classes, splits, the grid.

Each stage's defaults live in its config (e.g. ``featstore.pipelines.extract_audio.AudioConfig``).

Units are in the names: ``_s`` seconds, ``_hz`` hertz, ``_ms`` milliseconds.
"""

#: The 10 scene classes of TAU Urban Audio-Visual Scenes 2021, alphabetical. This order is the one
#: label map: class index ``i`` is ``CLASSES[i]`` in model outputs and submission columns alike.
CLASSES: tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)

#: Meta-classes used for the indoor / outdoor / transportation accuracy.
META_CLASSES: dict[str, tuple[str, ...]] = {
    "indoor": ("airport", "metro_station", "shopping_mall"),
    "outdoor": ("park", "public_square", "street_pedestrian", "street_traffic"),
    "transportation": ("bus", "metro", "tram"),
}

#: The splits a clip can belong to ("" = in no fold file).
SPLITS: tuple[str, ...] = ("train", "evaluate", "test")

#: Default clip length of the dataset (seconds) and segment grid step (seconds, non-overlapping).
CLIP_DURATION_S = 10.0
SEGMENT_S = 1.0
#: The range a store's grid may take (seconds): segments of at least 10 ms (a spectrogram frame or
#: two), clips of at most a day; finer grids or longer clips allocate absurd per-clip arrays.
MIN_SEGMENT_S = 0.01
MAX_CLIP_DURATION_S = 86_400.0

#: Uncompressed MiB per shard of a new store's per-clip arrays (0: one object per clip); see
#: :mod:`featstore.shards`.
SHARD_MB = 128.0

