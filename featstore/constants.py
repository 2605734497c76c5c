"""Constants from the papers (DESIGN.md section 5) and featstore's defaults.

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

#: Audio front end of the papers: 32 kHz, 2 channels, 128 bins, 80 ms window, 14 ms hop.
AUDIO_SR_HZ = 32_000
AUDIO_CHANNELS = 2
AUDIO_N_BINS = 128
AUDIO_WIN_MS = 80.0
AUDIO_HOP_MS = 14.0

#: Video front end: 2 frames per second, 224 x 224 RGB.
FRAMES_FPS = 2.0
FRAMES_SIZE = 224
