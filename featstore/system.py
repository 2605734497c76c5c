"""A system: everything needed to classify new clips, frozen, and its export as a checksummed directory.

A :class:`System` holds

* the extraction config of every input array (``audio/mel``, ``frames/rgb``...), rebuilt from the
  arrays' provenance by the resolver the caller passes (the pipelines' ``config_for_array``: this
  library module never imports the pipelines);
* the segment grid step and the label map;
* each backbone: its ``.keras`` file, fingerprint and input array; or, for a HEAR or torch model
  (:mod:`featstore.models.hear`), its kind, module or factory, package version, fingerprint,
  sample rate, layers and weights file (the package itself must be installed where it is loaded);
* the decision part: a fusion run (its head ``.keras``, method, layer and model order) or an
  ensemble (its rule and inputs, each a backbone or a fusion run).

Exported (``featstore export-system``), it is a directory::

    manifest.json           the above, as JSON (format "featstore-system/1")
    backbones/NAME.keras    one per Keras backbone
    backbones/NAME.pt       the weights file of a HEAR or torch backbone that has one (its own suffix)
    heads/RUN.keras         one per fusion run
    SHA256SUMS              the SHA-256 of every other file (``sha256sum -c`` reads it)

:meth:`System.load` checks every checksum first and refuses a file whose bytes differ, naming it,
then each backbone file against the fingerprint its manifest entry records (a swapped backbone
with regenerated checksums is refused too), and each HEAR or torch backbone's installed package and
weights against its fingerprint (another version of the package is refused, naming both);
Keras files load in safe mode only (no pickle, no arbitrary code). :attr:`System.digest` (the
SHA-256 of the manifest) names the system in the predictions it makes.

>>> from featstore.pipelines.stages import system_from_run   # doctest: +SKIP
>>> system = system_from_run(store, "fuse-f4-av")          # doctest: +SKIP
>>> system.export("systems/f4")                             # doctest: +SKIP
>>> System.load("systems/f4").decision["method"]            # doctest: +SKIP
'f4'
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from featstore.errors import ConfigError, NotFoundError, StoreError
from featstore.fingerprint import bytes_digest
from featstore.models.hear import KINDS as WAVEFORM_KINDS
from featstore.models.hear import SOURCE_AUDIO, check_installed, weights_suffix
from featstore.names import embedding_path
from featstore.registry import model_bytes, model_entry
from featstore.runs import load_run, run_head_bytes
from featstore.store import Store

FORMAT = "featstore-system/1"
MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _waveform_backbone(model: str, entry: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
    """The manifest entry of registered HEAR or torch ``model`` (its weights file added to
    ``files``), refused when the installed module or the weights file no longer give the model it
    was embedded with. ``used_layers`` is left empty for the caller to fill."""
    weights = None
    if entry["weights_file"]:
        if not os.path.isfile(entry["weights_file"]):
            raise NotFoundError(f"the weights file {entry['weights_file']} of model {model!r} is missing; restore it to export the system")
        with open(entry["weights_file"], "rb") as f:
            weights = f.read()
    version = check_installed(model, entry["kind"], entry["spec"], entry["fingerprint"], bytes_digest(weights) if weights is not None else None, version=entry.get("version"),
                              fix=f"embed with --model {entry['kind']}:{entry['spec']} again and re-run the fusion, or install the version it was embedded with")
    spec = {"kind": entry["kind"], "spec": entry["spec"], "version": version, "fingerprint": entry["fingerprint"], "sample_rate": entry["sample_rate"],
            "layers": dict(entry["layers"]), "used_layers": [], "input": SOURCE_AUDIO}
    if weights is not None:
        spec["file"] = f"backbones/{model}{weights_suffix(entry['weights_file'])}"
        files[spec["file"]] = weights
    return spec


@dataclass(frozen=True)
class System:
    """A frozen system: ``manifest`` (JSON-ready) and ``files`` (relative path -> bytes)."""

    manifest: dict[str, Any]
    files: dict[str, bytes]
    #: Models loaded by :meth:`load_keras`, by relative path: each file is loaded once per system.
    _loaded: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ what it holds
    @property
    def name(self) -> str:
        """The run the system was made from (the default name of its predictions)."""
        return str(self.manifest["name"])

    @property
    def segment_s(self) -> float:
        return float(self.manifest["segment_s"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        """``{array path: {"stage": name, "config": StageConfig dict}}`` of every extracted input."""
        return dict(self.manifest["inputs"])

    @property
    def backbones(self) -> dict[str, dict[str, Any]]:
        """``{model: {"file", "fingerprint", "input", ...}}``; a HEAR or torch model's entry has
        ``"kind"``, ``"spec"``, ``"version"``, ``"sample_rate"``, ``"layers"`` (name -> width),
        ``"used_layers"`` and, when it has weights, ``"file"``."""
        return dict(self.manifest["backbones"])

    @property
    def decision(self) -> dict[str, Any]:
        """``{"kind": "fusion", "run", "method", "layer", "models", "head"}`` or
        ``{"kind": "ensemble", "run", "rule", "inputs": [decision or {"kind": "backbone", "model"}]}``.
        A fusion run's ``models`` are as ``fuse`` records them: ``NAME`` (at the run's layer) or
        ``NAME/LAYER``."""
        return dict(self.manifest["decision"])

    @property
    def digest(self) -> str:
        """SHA-256 of the manifest's canonical JSON: the system's identity."""
        return _sha256(json.dumps(self.manifest, sort_keys=True).encode())

    def load_keras(self, relative: str):
        """The Keras model stored at ``relative`` (e.g. ``heads/RUN.keras``), loaded in safe mode
        on the first call and kept: later calls (each window of ``predict --file``) return the
        same model."""
        if relative not in self._loaded:
            import featstore.models.fusion  # noqa: F401 - registers FusionLayer for safe-mode loading
            from featstore.registry import load_keras

            with tempfile.TemporaryDirectory() as work:
                path = os.path.join(work, os.path.basename(relative))
                with open(path, "wb") as f:
                    f.write(self.files[relative])
                self._loaded[relative] = load_keras(path)
        return self._loaded[relative]

    # ------------------------------------------------------------------ making one
    @classmethod
    def from_run(cls, store: Store, run: str, config_for_array: Callable[[Store, str], Any]) -> System:
        """The system that run ``run`` of ``store`` (a fusion run, or an ensemble of backbones and
        fusion runs) applies; refused when a run was trained on embeddings of another version of a
        registered model (re-embed and re-fuse first).

        ``config_for_array(store, path)`` gives the stage config that made an input array (an
        object with ``stage`` and ``to_dict()``): :func:`featstore.pipelines.stages.system_from_run`
        passes the stage registry's.
        """
        files: dict[str, bytes] = {}
        backbones: dict[str, dict[str, Any]] = {}

        def add_backbone(model: str, path: str, layer: str | None = None) -> None:
            entry = model_entry(store, model)
            made_with = store.provenance(path).params["model_fingerprint"]
            if made_with != entry["fingerprint"]:
                raise StoreError(f"run {run!r} used embeddings of another version of model {model!r} than the registered one; re-embed and re-run it")
            if entry.get("kind") in WAVEFORM_KINDS:
                spec = backbones.get(model) or _waveform_backbone(model, entry, files)
                backbones[model] = spec | {"used_layers": sorted({*spec["used_layers"], layer})}
                return
            files[f"backbones/{model}.keras"] = model_bytes(store, model)
            backbones[model] = {k: entry[k] for k in ("fingerprint", "input", "input_shape", "fc1024_units", "n_classes")} | {"file": f"backbones/{model}.keras"}

        def decision_of(name: str, *, nested: bool) -> dict[str, Any]:
            record = load_run(store, name)
            if record["kind"] == "fuse":
                for model in record["models"]:  # "NAME" (at the run's layer) or "NAME/LAYER"
                    backbone, _, layer = model.partition("/")
                    add_backbone(backbone, embedding_path(model, record["layer"]), layer or record["layer"])
                files[f"heads/{name}.keras"] = run_head_bytes(store, name)
                return {"kind": "fusion", "run": name, "method": record["method"], "layer": record["layer"], "models": list(record["models"]), "head": f"heads/{name}.keras",
                        "predictions_fingerprint": store.provenance(f"predictions/{name}").fingerprint}
            if record["kind"] == "ensemble" and not nested:
                inputs = []
                for item in record["inputs"]:
                    if store.side.exists(f"runs/{item}.json"):
                        inputs.append(decision_of(item, nested=True))
                    else:
                        add_backbone(item, f"predictions/{item}")
                        inputs.append({"kind": "backbone", "model": item})
                return {"kind": "ensemble", "run": name, "rule": record["rule"], "inputs": inputs,
                        "predictions_fingerprint": store.provenance(f"predictions/{name}").fingerprint}
            raise ConfigError(f"run {name!r} ({record['kind']}) cannot be exported: a system is a fusion run or an ensemble of backbones and fusion runs")

        decision = decision_of(run, nested=False)
        inputs = {}
        for spec in backbones.values():
            if spec.get("kind") in WAVEFORM_KINDS:  # embeds the clips' source audio: no input array
                continue
            config = config_for_array(store, spec["input"])
            inputs[spec["input"]] = {"stage": config.stage, "config": config.to_dict()}
        manifest = {
            "format": FORMAT,
            "name": run,
            "segment_s": store.segment_s,
            "classes": store.classes,
            "inputs": inputs,
            "backbones": backbones,
            "decision": decision,
            "source_store": store.url,
        }
        return cls(manifest, files)

    # ------------------------------------------------------------------ on disk
    def export(self, directory: str | os.PathLike) -> str:
        """Write the system to ``directory`` (created; an existing non-empty one is refused)."""
        directory = os.fspath(directory)
        if os.path.isdir(directory) and os.listdir(directory):
            raise ConfigError(f"{directory}: exists and is not empty; export a system to a new directory")
        payload = {MANIFEST: json.dumps(self.manifest, indent=1, sort_keys=True).encode(), **self.files}
        for relative, data in payload.items():
            path = os.path.join(directory, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        sums = "".join(f"{_sha256(data)}  {relative}\n" for relative, data in sorted(payload.items()))
        with open(os.path.join(directory, CHECKSUMS), "w") as f:
            f.write(sums)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> System:
        """Read an exported system, refusing any file whose SHA-256 differs from ``SHA256SUMS``."""
        directory = os.fspath(directory)
        sums_path = os.path.join(directory, CHECKSUMS)
        if not os.path.isfile(sums_path):
            raise ConfigError(f"{directory}: not a featstore system (no {CHECKSUMS}; make one with featstore export-system)")
        files = {}
        with open(sums_path) as f:
            for line in f:
                digest, _, relative = line.rstrip("\n").partition("  ")
                if not relative or os.path.isabs(relative) or ".." in relative.split("/"):
                    raise ConfigError(f"{sums_path}: malformed line {line.strip()!r}")
                path = os.path.join(directory, relative)
                if not os.path.isfile(path):
                    raise ConfigError(f"{path}: listed in {CHECKSUMS} but missing")
                with open(path, "rb") as g:
                    data = g.read()
                if _sha256(data) != digest:
                    raise ConfigError(f"{path}: checksum differs from {CHECKSUMS} (the file was changed or damaged); refusing to load the system")
                files[relative] = data
        if MANIFEST not in files:
            raise ConfigError(f"{directory}: {CHECKSUMS} does not list {MANIFEST}")
        manifest = json.loads(files.pop(MANIFEST))
        if manifest.get("format") != FORMAT:
            raise ConfigError(f"{directory}: system format {manifest.get('format')!r}, this featstore reads {FORMAT!r}")
        for model, spec in manifest.get("backbones", {}).items():  # SHA256SUMS can be regenerated; the manifest names the model
            if spec.get("kind") in WAVEFORM_KINDS:
                weights = files.get(spec["file"]) if "file" in spec else None
                check_installed(model, spec["kind"], spec["spec"], spec["fingerprint"], bytes_digest(weights) if weights is not None else None, version=spec["version"],
                                fix=f"use the system {directory} as exported with {spec['version']} installed, or export it again from a store embedded with the installed version")
                continue
            data = files.get(spec.get("file", ""))
            if data is None or bytes_digest(data) != spec.get("fingerprint"):
                raise ConfigError(f"{os.path.join(directory, spec.get('file', '?'))}: not the backbone {model!r} the manifest names "
                                  "(its fingerprint differs); refusing to load the system")
        return cls(manifest, files)
