"""extract-audio features equal independent recomputations from the parameters recorded in the store."""

from __future__ import annotations

import os

import librosa
import numpy as np
import pytest
import soundfile
from gammatone.fftweight import fft_weights

import featstore
from featstore.gammatone_fb import gammatone_weights
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.ingest import ingest
from tests.conftest import CLIP_S

F16_ATOL_DB = 0.1  # float16 spacing is 0.0625 for |values| in [64, 128) dB


def test_gammatone_weights_match_the_gammatone_package():
    ours = gammatone_weights(32000, 2560, 128, 50.0, 16000.0)
    ref, _ = fft_weights(2560, 32000, 128, 1, 50.0, 16000.0, 2560 / 2 + 1)
    assert ours.shape == ref.shape == (128, 1281)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7 * ref.max())


@pytest.fixture
def extracted(demo_store):
    report = extract_audio(demo_store, workers=0)
    assert report.done == 20 and report.failed == 0
    return demo_store


def _reference_windows(store, clip_index: int, params: dict) -> np.ndarray:
    """Independent decode: librosa.load (soxr_hq), cut into the grid -> (channel, segment, sample)."""
    a = params["audio"]
    path = store.source_path(store.clips.audio_path[clip_index])
    y, _ = librosa.load(path, sr=a["sr"], mono=False, res_type="soxr_hq")
    seg = int(round(a["segment_s"] * a["sr"]))
    y = y[:, : a["n_segments"] * seg]
    return y.reshape(2, a["n_segments"], seg)


def _to_frames(x: np.ndarray) -> np.ndarray:
    c, s, b, t = x.shape
    return x.transpose(0, 2, 1, 3).reshape(c, b, s * t)


@pytest.mark.parametrize("feature", ["mel", "gam", "cqt"])
def test_feature_equals_independent_recomputation(extracted, feature):
    store = extracted
    params = store.provenance(f"audio/{feature}")["params"]
    a = params["audio"]
    n_fft, hop = int(round(a["win_ms"] * a["sr"] / 1000)), int(round(a["hop_ms"] * a["sr"] / 1000))
    for clip_index in (0, 7):
        y = _reference_windows(store, clip_index, params)
        if feature == "mel":
            ref = librosa.power_to_db(
                librosa.feature.melspectrogram(y=y, sr=a["sr"], n_fft=n_fft, hop_length=hop, n_mels=a["n_bins"], fmin=a["mel_fmin_hz"], fmax=a["sr"] / 2, power=2.0, pad_mode="constant"),
                ref=1.0, amin=1e-10, top_db=None,
            )
        elif feature == "gam":
            weights, _ = fft_weights(n_fft, a["sr"], a["n_bins"], 1, a["gam_fmin_hz"], a["sr"] / 2, n_fft / 2 + 1)
            mag = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, pad_mode="constant"))
            ref = librosa.amplitude_to_db(np.einsum("bf,csft->csbt", weights, mag) / n_fft, ref=1.0, amin=1e-5, top_db=None)
        else:
            ref = librosa.amplitude_to_db(
                np.abs(librosa.cqt(y, sr=a["sr"], hop_length=hop, fmin=a["cqt_fmin_hz"], n_bins=a["n_bins"], bins_per_octave=a["cqt_bins_per_octave"])),
                ref=1.0, amin=1e-5, top_db=None,
            )
        ref = _to_frames(ref)
        got = store.audio(feature, store.clips.clip_id[clip_index])
        assert got.shape == ref.shape == (2, 128, 3 * 72)
        assert np.abs(got - ref).max() < F16_ATOL_DB + 1e-3 * np.abs(ref).max()
        assert np.isfinite(got).all()


def test_mfcc_equals_librosa_mfcc_of_the_same_segments(demo_store):
    """MFCC (an audio feature of its own module) == ``librosa.feature.mfcc`` of librosa's log mel
    spectrogram of the same segments."""
    assert extract_audio(demo_store, features=("mfcc",), dtype="float32", workers=0).done == 20
    params = demo_store.provenance("audio/mfcc")["params"]
    sr, m = params["audio"]["sr"], params["mfcc"]
    n_fft, hop = int(round(m["win_ms"] * sr / 1000)), int(round(m["hop_ms"] * sr / 1000))
    for clip_index in (0, 7):
        y = _reference_windows(demo_store, clip_index, params)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=m["n_mels"], fmin=m["fmin_hz"], fmax=sr / 2, pad_mode="constant")
        ref = _to_frames(librosa.feature.mfcc(S=librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), n_mfcc=m["n_mfcc"], axis=-2))
        got = demo_store.audio("mfcc", demo_store.clips.clip_id[clip_index])
        assert got.shape == ref.shape == (2, 40, 3 * 72)
        assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()


def test_segment_window_equals_standalone_one_second_file(tmp_path):
    """The segment rule (docs/explanation/segment-rule.md): a segment read from a clip == the same second given as its own file."""
    rng = np.random.default_rng(0)
    sr = 32000
    audio = (0.1 * rng.standard_normal((3 * sr, 2))).astype(np.float32)
    root = tmp_path / "data"
    root.mkdir()
    soundfile.write(root / "clip.wav", audio, sr, subtype="FLOAT")
    lines = ["audio,video,label,split,clip_id", "clip.wav,,bus,train,clip"]
    for k in range(3):
        soundfile.write(root / f"seg{k}.wav", audio[k * sr : (k + 1) * sr], sr, subtype="FLOAT")
    (root / "clip.csv").write_text("\n".join(lines) + "\n")
    (root / "segs.csv").write_text("audio,video,label,split\n" + "".join(f"seg{k}.wav,,bus,train\n" for k in range(3)))
    whole = featstore.init_store(str(tmp_path / "whole.zarr"), clip_duration_s=3.0)
    ingest(whole, str(root / "clip.csv"), fmt="csv")
    ones = featstore.init_store(str(tmp_path / "ones.zarr"), clip_duration_s=1.0)
    ingest(ones, str(root / "segs.csv"), fmt="csv")
    for store in (whole, ones):
        assert extract_audio(store, workers=0, dtype="float32").done == len(store.clips)
    for feature in ("mel", "gam", "cqt"):
        (batch,) = list(whole.audio_segments(feature, deltas=True))
        assert batch.x.shape == (3, 6, 128, 72)
        for k in range(3):
            standalone = ones.audio(feature, f"seg{k}", deltas=True)
            np.testing.assert_array_equal(batch.x[k], standalone)


def test_deltas_and_segment_reader(extracted):
    store = extracted
    clip_id = store.clips.clip_id[3]
    static = store.audio("mel", clip_id)
    six = store.audio("mel", clip_id, deltas=True)
    assert six.shape == (6, 128, 216)
    np.testing.assert_array_equal(six[:2], static)
    seg1 = static[..., 72:144]
    np.testing.assert_allclose(six[2:4, :, 72:144], librosa.feature.delta(seg1, width=9, order=1, axis=-1), atol=1e-5)
    np.testing.assert_allclose(six[4:6, :, 72:144], librosa.feature.delta(seg1, width=9, order=2, axis=-1), atol=1e-5)

    batches = list(store.audio_segments("mel", split="train", batch_size=8))
    total = sum(len(b.labels) for b in batches)
    assert total == 10 * 3 and all(len(b.labels) <= 8 for b in batches)
    first = batches[0]
    assert first.x.shape[1:] == (6, 128, 72)
    i = first.clip_index[1]
    assert first.labels[1] == store.classes.index(store.clips.label[i])
    np.testing.assert_array_equal(first.x[1], store.audio("mel", store.clips.clip_id[i], deltas=True)[..., 72 * first.segment[1] : 72 * (first.segment[1] + 1)])
    (two_s,) = list(store.audio_segments("cqt", window_s=2.0, deltas=False))
    assert two_s.x.shape == (20, 2, 128, 144) and set(two_s.segment) == {0}
    with pytest.raises(ValueError, match="whole number"):
        list(store.audio_segments("mel", window_s=1.5))


def _write_case(root, name: str, kind: str) -> None:
    path = os.path.join(root, name)
    sr = 48000
    rng = np.random.default_rng(len(name))
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "random-bytes":
        open(path, "wb").write(rng.bytes(5000))
    elif kind == "nan":
        x = rng.standard_normal((sr, 2)).astype(np.float32) * 0.1
        x[100] = np.nan
        soundfile.write(path, x, sr, subtype="FLOAT")
    elif kind == "mono-44k":
        soundfile.write(path, 0.1 * rng.standard_normal(int(44100 * CLIP_S)), 44100)
    elif kind == "silence-short":
        soundfile.write(path, np.zeros((sr, 2)), sr)
    elif kind == "long-6ch":
        soundfile.write(path, 0.1 * rng.standard_normal((sr * 10, 6)), sr)


def test_bad_audio_is_recorded_and_run_goes_on(tmp_path):
    root = str(tmp_path / "data")
    os.makedirs(root)
    kinds = ["empty", "random-bytes", "nan", "mono-44k", "silence-short", "long-6ch"]
    rows = ["audio,video,label,split"]
    for kind in kinds:
        _write_case(root, f"{kind}.wav", kind)
        rows.append(f"{kind}.wav,,bus,train")
    open(os.path.join(root, "m.csv"), "w").write("\n".join(rows) + "\n")
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(store, os.path.join(root, "m.csv"), fmt="csv")
    report = extract_audio(store, workers=0, features=("mel",))
    assert report.done == 3 and report.failed == 3
    failed = {f["clip_id"]: f["error"] for f in report.failures}
    assert set(failed) == {"empty", "random-bytes", "nan"}
    assert "NaN or Inf" in failed["nan"]
    table = store.failures.set_index("clip_id")
    assert set(table.index) == {"empty", "random-bytes", "nan"} and set(table.stage) == {"extract-audio"}
    notes = store.ledger("audio/mel").info_table()
    assert notes.loc["mono-44k", "mono_duplicated"] == True  # noqa: E712
    assert notes.loc["mono-44k", "source_sr"] == 44100
    assert notes.loc["silence-short", "silent"] == True  # noqa: E712
    assert notes.loc["silence-short", "padded_s"] == pytest.approx(CLIP_S - 1.0)
    assert notes.loc["long-6ch", "source_channels"] == 6 and notes.loc["long-6ch", "cut_s"] > 0
    for clip_id in ("mono-44k", "silence-short", "long-6ch"):
        assert np.isfinite(store.audio("mel", clip_id)).all(), "never NaN in the store"
    # the bad clip is fixed: a plain re-run retries only the failed clips and clears its failure
    _write_case(root, "nan.wav", "mono-44k")
    again = extract_audio(featstore.open_store(store.url), workers=0, features=("mel",))
    assert again.done == 1 and again.skipped == 3 and again.failed == 2
    assert "nan" not in set(featstore.open_store(store.url).failures.clip_id)


def test_stft_power_equals_librosa_squared_magnitude():
    """The power taken straight from the complex spectrum, block by block, is librosa's |STFT|^2."""
    from featstore.audio import SEGMENTS_PER_BLOCK, stft_power

    rng = np.random.default_rng(1)
    windows = (0.1 * rng.standard_normal((SEGMENTS_PER_BLOCK + 1, 32000))).astype(np.float32)
    ref = np.abs(librosa.stft(windows, n_fft=2560, hop_length=448, pad_mode="constant")) ** 2
    got = stft_power(windows, 2560, 448)
    assert got.dtype == np.float32 and got.shape == (SEGMENTS_PER_BLOCK + 1, 72, 1281)
    np.testing.assert_allclose(got, ref.transpose(0, 2, 1), rtol=1e-3, atol=1e-6 * ref.max())


def test_reused_stft_buffers_never_leak_between_calls_or_threads():
    """The STFT's work buffers are reused per thread: a returned power is the caller's own (a second
    call does not overwrite it), a call with fewer windows after a larger one is right, and
    spectrograms made on several threads at once equal the same made one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from featstore.audio import AudioParams, spectrograms, stft_power

    rng = np.random.default_rng(2)
    big, small = ((0.1 * rng.standard_normal((n, 32000))).astype(np.float32) for n in (5, 2))
    first = stft_power(big, 2560, 448)
    kept = first.copy()
    second = stft_power(small, 2560, 448)
    np.testing.assert_array_equal(first, kept)
    ref = np.abs(librosa.stft(small, n_fft=2560, hop_length=448, pad_mode="constant")) ** 2
    np.testing.assert_allclose(second, ref.transpose(0, 2, 1), rtol=1e-3, atol=1e-6 * ref.max())

    p = AudioParams(sr=32000, n_bins=128, win_ms=80.0, hop_ms=14.0, segment_s=1.0, n_segments=3)
    clips = [(0.1 * rng.standard_normal((2, 3, 32000))).astype(np.float32) for _ in range(6)]
    serial = [spectrograms(c, p, ("mel", "gam")) for c in clips]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(lambda c: spectrograms(c, p, ("mel", "gam")), clips))
    for a, b in zip(serial, threaded):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("sr,hop_length,fmin_hz,n_bins,bins_per_octave", [
    (32000, 448, 50.0, 128, 16),  # featstore's defaults: 8 octaves, the hop halved 6 times
    (32000, 512, 50.0, 24, 12),  # librosa down-samples early (by 32): filters far below Nyquist
    (16000, 160, 40.0, 60, 12),  # 5 octaves, early down-sampling by 2, n_bins a whole number of octaves
    (22050, 512, 32.7, 84, 12),  # librosa's own defaults but fmin
])
def test_cqt_is_librosas_bit_for_bit(sr, hop_length, fmin_hz, n_bins, bins_per_octave):
    """featstore's batched CQT of several windows at once == ``np.abs(librosa.cqt)`` of the same
    windows, every bit (a tone and noise, so every octave carries signal)."""
    from featstore.cqt import cqt_magnitude, cqt_plan

    rng = np.random.default_rng(3)
    t = np.arange(sr) / sr
    windows = (0.1 * rng.standard_normal((2, 3, sr)) + 0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    ref = np.abs(librosa.cqt(windows, sr=sr, hop_length=hop_length, fmin=fmin_hz, n_bins=n_bins, bins_per_octave=bins_per_octave))
    got = cqt_magnitude(windows, cqt_plan(sr, hop_length, fmin_hz, n_bins, bins_per_octave))
    assert got.dtype == ref.dtype == np.float32 and got.shape == ref.shape == (2, 3, n_bins, 1 + sr // hop_length)
    np.testing.assert_array_equal(got, ref)


def test_cqt_past_nyquist_is_refused_before_any_clip_naming_the_options(demo_store):
    """160 bins at 16 per octave from 50 Hz reach 51 kHz, past 16 kHz: one ConfigError up front
    naming the options to change, no clip run, nothing written."""
    from featstore.errors import ConfigError

    with pytest.raises(ConfigError, match="--cqt-n-bins") as refused:
        extract_audio(demo_store, features=("cqt",), cqt_n_bins=160, workers=0)
    assert "Nyquist" in str(refused.value) and "--cqt-fmin-hz" in str(refused.value)
    assert not demo_store.has_array("audio/cqt")


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin_hz", [(32000, 2560, 128, 0.0), (16000, 512, 40, 20.0), (44100, 2048, 250, 0.0)])
def test_a_banded_mel_product_is_the_dense_product_to_float32_rounding(sr, n_fft, n_mels, fmin_hz):
    """The mel filterbank applied band by band, each band over its filters' nonzero frequencies
    only, covers every nonzero weight and gives the dense product's values to float32 rounding."""
    from featstore.audio import _apply_filterbank, _filter_bands
    from featstore.mel_fb import mel_weights

    weights = mel_weights(sr, n_fft, n_mels, fmin_hz, sr / 2)
    bands = _filter_bands(weights)
    assert bands is not None and sum(np.count_nonzero(w) for *_, w in bands) == np.count_nonzero(weights)
    power = np.random.default_rng(2).exponential(size=(3, 50, n_fft // 2 + 1)).astype(np.float32)
    dense, banded = power @ weights.T, np.full((3, 50, n_mels), np.nan, np.float32)
    _apply_filterbank(power, weights.T, bands, banded)
    np.testing.assert_allclose(banded, dense, rtol=2e-6, atol=1e-7 * float(dense.max()))


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin_hz", [(32000, 2560, 128, 0.0), (32000, 2560, 64, 50.0), (16000, 512, 40, 20.0), (44100, 2048, 256, 0.0)])
def test_mel_weights_are_librosas_bit_for_bit(sr, n_fft, n_mels, fmin_hz):
    from featstore.mel_fb import mel_weights

    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin_hz, fmax=sr / 2)
    ours = mel_weights(sr, n_fft, n_mels, fmin_hz, sr / 2)
    assert ours.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_empty_mel_filters_warn_naming_the_options():
    from featstore.errors import FeatstoreWarning
    from featstore.mel_fb import mel_weights

    with pytest.warns(FeatstoreWarning, match="--mel-n-bins"):
        mel_weights(32000, 256, 128, 0.0, 16000.0)


def test_db_scales_are_librosas_bit_for_bit():
    """featstore's dB conversions (no librosa import on the MEL / GAM path) equal librosa's, silence included."""
    from featstore.audio import amplitude_to_db, power_to_db

    x = np.abs(np.random.default_rng(2).standard_normal((2, 64, 50))).astype(np.float32) ** 3
    x[0, :3] = 0.0
    np.testing.assert_array_equal(power_to_db(x.copy()), librosa.power_to_db(x, ref=1.0, amin=1e-10, top_db=None))
    np.testing.assert_array_equal(amplitude_to_db(x.copy()), librosa.amplitude_to_db(x, ref=1.0, amin=1e-5, top_db=None))
