"""The demo data is built so that each modality is learnable but imperfect, the two confuse different
class pairs, and fusing them beats both (featstore.demo). Checked with an independent classifier
(scikit-learn's logistic regression on clip-mean features from the store), on the location-disjoint
evaluate split of a small seeded dataset."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import featstore
from featstore.constants import CLASSES
from featstore.demo import AUDIO_KIND, VISUAL_KIND, make_demo_dataset
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest

CLIP_S = 3.0


@pytest.fixture(scope="module")
def demo_features(tmp_path_factory):
    """Clip-mean audio (mel) and visual (frame) features, labels and splits of 10 x 6 clips of 3 s."""
    work = tmp_path_factory.mktemp("demo-data")
    root = make_demo_dataset(str(work / "data"), clips_per_class=6, seed=3, duration_s=CLIP_S, video_size=(64, 48))
    store = featstore.init_store(str(work / "store.zarr"), clip_duration_s=CLIP_S)
    ingest(store, root)
    assert extract_audio(store, features=("mel",), workers=0).ok
    assert extract_frames(store, size=32, workers=0).ok
    mel = store.array("audio/mel")[:].astype(np.float32)  # (clip, channel, bin, frame)
    audio = np.concatenate([mel.mean(axis=(1, 3)), mel.std(axis=3).mean(axis=1)], axis=1)
    frames = store.array("frames/rgb")[:].astype(np.float32)  # (clip, frame, 32, 32, 3)
    visual = frames.mean(axis=1)[:, ::4, ::4].reshape(len(frames), -1)
    clips = store.clips
    return audio, visual, store.label_indices(clips["label"]), clips["split"].to_numpy(), clips["identifier"].to_numpy()


def _probabilities(x, labels, train, test):
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(x[train]), labels[train])
    return model.predict_proba(scaler.transform(x[test]))


def _kind_mates(kinds: dict[str, str]) -> set[tuple[int, int]]:
    return {(i, j) for i, a in enumerate(CLASSES) for j, b in enumerate(CLASSES) if kinds[a] == kinds[b]}


def test_evaluate_locations_are_unseen(demo_features):
    _, _, _, split, identifier = demo_features
    assert set(identifier[split == "evaluate"]).isdisjoint(identifier[split == "train"])
    assert (split == "evaluate").sum() == 20


def test_fusion_beats_both_modalities_and_each_confuses_its_kind_mates(demo_features):
    audio, visual, labels, split, _ = demo_features
    train, test = split == "train", split == "evaluate"
    p_audio, p_visual = _probabilities(audio, labels, train, test), _probabilities(visual, labels, train, test)
    p_fused = p_audio * p_visual  # product rule
    truth = labels[test]
    acc = {name: float((p.argmax(1) == truth).mean()) for name, p in (("audio", p_audio), ("visual", p_visual), ("fused", p_fused))}
    assert 0.3 < acc["audio"] < 1.0 and 0.3 < acc["visual"] < 1.0, acc
    assert acc["fused"] > max(acc["audio"], acc["visual"]), acc
    # by design, a modality's mistakes are between classes of one kind in that modality
    for p, kinds in ((p_audio, AUDIO_KIND), (p_visual, VISUAL_KIND)):
        wrong = p.argmax(1) != truth
        assert set(zip(truth[wrong], p.argmax(1)[wrong])) <= _kind_mates(kinds)
