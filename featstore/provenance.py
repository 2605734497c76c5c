"""A typed view of an array's provenance: what made it, from what, with which parameters.

Every per-clip array carries ``attrs["featstore"]``: the stage, its parameters (fingerprinted), the
stage's config (its user-facing options, recorded whole so the array can be rebuilt), the modality,
shape, dtype, library versions and creation time. :class:`Provenance` reads that record once and
answers the questions the stages ask (is it audio or visual? how many frames per segment? which
array was it made from?) in one place, instead of string tests on array paths.

It is also a read-only mapping over the raw record, so ``prov["params"]`` keeps working.

>>> prov = Provenance("audio/mel", {"stage": "extract-audio", "params": {"frames_per_segment": 72}})
>>> prov.modality, prov.frames_per_segment, prov.group, prov.leaf
('audio', 72, 'audio', 'mel')
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: What a stage's arrays hold, for arrays written before the modality was recorded.
STAGE_MODALITY = {"extract-audio": "audio", "extract-frames": "visual"}


@dataclass(frozen=True, eq=False)  # equality is the mapping's: a Provenance equals its raw dict
class Provenance(Mapping[str, Any]):
    """The provenance record of the array at ``path`` (``raw`` is ``attrs["featstore"]``)."""

    path: str
    raw: dict[str, Any]

    # the mapping interface, over the raw record
    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def stage(self) -> str:
        return str(self.raw.get("stage", ""))

    @property
    def params(self) -> dict[str, Any]:
        """The fingerprinted parameters (the stage's config resolved against the store)."""
        return dict(self.raw.get("params", {}))

    @property
    def config(self) -> dict[str, Any] | None:
        """The stage config that made this array (``None`` for arrays written before featstore 0.2)."""
        config = self.raw.get("config")
        return dict(config) if config is not None else None

    @property
    def fingerprint(self) -> str:
        return str(self.raw.get("fingerprint", ""))

    @property
    def group(self) -> str:
        """The array's group: ``"audio"`` for ``audio/mel``, ``"embeddings/aud-mel"`` for its fc10."""
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    @property
    def leaf(self) -> str:
        """The array's own name: ``"mel"``, ``"rgb"``, ``"fc10"``."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def input_array(self) -> str | None:
        """The upstream array this one was computed from (``None`` for arrays made from media files)."""
        return self.params.get("input")

    @property
    def frames_per_segment(self) -> int:
        """Units (spectrogram frames, video frames, embedding rows) per segment of the grid; 1 when
        the array has one unit per segment."""
        return int(self.params.get("frames_per_segment", 1))

    @property
    def modality(self) -> str:
        """``"audio"`` or ``"visual"``: what the array's values come from ("" when unknown)."""
        if "modality" in self.raw:
            return str(self.raw["modality"])
        if self.stage in STAGE_MODALITY:
            return STAGE_MODALITY[self.stage]
        source = self.input_array or ""
        return "visual" if source.endswith("/rgb") else ("audio" if source else "")
