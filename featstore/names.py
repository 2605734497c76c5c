"""What a user may call an array, a model, a run or a clip: one validator for each kind of name.

Names become paths inside the store (``audio/mel/zarr.json``, ``_featstore/ledger/audio--mel.json``,
``_featstore/models/aud-mel.keras``, ``_featstore/runs/f1.json``), and clip ids become lines of a
``--clips`` file and keys of ledgers, so a name that is empty, absolute, climbs with ``..``, enters
``_featstore`` or holds a newline would write somewhere else than asked, or not match itself on a
re-run. Each is refused here, once, with a :class:`~featstore.errors.ConfigError` that says why.

* An **array path** is one or more components joined by ``/`` (``audio/mel``,
  ``embeddings/aud-mel/fc1024``); a **model** or **run name** is a single component. A component
  starts with a letter or digit and holds only letters, digits and ``. _ + = -``; it never holds
  ``--`` (ledger and lock files spell ``/`` as ``--``), and no component is ``zarr.json``.
* A **clip id** may hold any printable character, spaces and non-ASCII letters included, but no
  ``/`` or ``\\``, no control character (newline, tab), no leading or trailing space, and is not
  ``.`` or ``..``.

>>> array_path("embeddings/aud-mel/fc1024")
'embeddings/aud-mel/fc1024'
>>> unknown("model", "aud-mle", ["aud-mel", "vis-inc"])
"no model 'aud-mle' (there are: aud-mel, vis-inc; did you mean 'aud-mel'?)"
>>> single_name("_featstore", "--name")
Traceback (most recent call last):
...
featstore.errors.ConfigError: --name '_featstore': must start with a letter or digit
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable

from featstore.errors import ConfigError

#: Longest name accepted, in characters (file names are limited to 255 bytes on most disks).
MAX_NAME_CHARS = 200
_COMPONENT = re.compile(r"[A-Za-z0-9.+=_-]*")


def _check_component(component: str, what: str, name: str) -> None:
    part = "" if component == name else f"part {component!r} "
    if not component:
        raise ConfigError(f"{what} {name!r}: empty (a name, not a path with // or a trailing /)")
    if not component[0].isascii() or not component[0].isalnum():
        raise ConfigError(f"{what} {name!r}: {part}must start with a letter or digit")
    if not _COMPONENT.fullmatch(component):
        bad = sorted({c for c in component if not _COMPONENT.fullmatch(c)})
        raise ConfigError(f"{what} {name!r}: character(s) {''.join(bad)!r} not allowed (letters, digits and . _ + = - only)")
    if "--" in component:
        raise ConfigError(f"{what} {name!r}: '--' is not allowed (it spells '/' in ledger file names)")
    if component == "zarr.json":
        raise ConfigError(f"{what} {name!r}: zarr.json is Zarr's metadata file")


def _check_length(name: str, what: str) -> None:
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"{what} {name[:40]!r}...: longer than {MAX_NAME_CHARS} characters")


def array_path(path: str, what: str = "array") -> str:
    """``path`` if it is a valid array path (components joined by ``/``), else :class:`ConfigError`.

    ``what`` says where the name came from in the error (e.g. ``"--name"``).
    """
    path = str(path)
    _check_length(path, what)
    if path.startswith("/"):
        raise ConfigError(f"{what} {path!r}: must be relative to the store (no leading /)")
    for component in path.split("/"):
        _check_component(component, what, path)
    return path


def single_name(name: str, what: str = "name") -> str:
    """``name`` if it is a valid model or run name (one component, no ``/``), else :class:`ConfigError`."""
    name = str(name)
    _check_length(name, what)
    if "/" in name:
        raise ConfigError(f"{what} {name!r}: '/' is not allowed in a model or run name")
    _check_component(name, what, name)
    return name


def clip_id(value: str, where: str = "clip_id") -> str:
    """``value`` if it is a valid clip id, else :class:`ConfigError`; ``where`` names file and line."""
    value = str(value)
    if not value:
        raise ConfigError(f"{where}: empty clip_id")
    _check_length(value, where)
    if value in (".", ".."):
        raise ConfigError(f"{where}: clip_id {value!r} is not allowed")
    if "/" in value or "\\" in value:
        raise ConfigError(f"{where}: clip_id {value!r} holds a path separator")
    if any(unicodedata.category(c)[0] == "C" for c in value):
        raise ConfigError(f"{where}: clip_id {value!r} holds a control character (newline, tab...)")
    if value != value.strip():
        raise ConfigError(f"{where}: clip_id {value!r} starts or ends with a space")
    return value


def closest(name: str, existing: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` for the name in ``existing`` closest to ``name`` (difflib), or ``""``."""
    match = difflib.get_close_matches(str(name), [str(e) for e in existing], n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def unknown(what: str, name: str, existing: Iterable[str], fix: str = "") -> str:
    """The one-line message for an unknown ``name`` of kind ``what``: what exists, the closest match,
    and ``fix`` (how to make one) when nothing does."""
    existing = sorted(str(e) for e in existing)
    if not existing:
        return f"no {what} {name!r}" + (f" ({fix})" if fix else "")
    shown = ", ".join(existing[:20]) + (", ..." if len(existing) > 20 else "")
    return f"no {what} {name!r} (there are: {shown}{closest(name, existing)})"


def embedding_path(model: str, layer: str) -> str:
    """The array of ``model``'s ``layer`` embeddings; a model given as ``NAME/LAYER`` names its own layer
    (``concat`` of ``aud-mel`` fc1024 and ``ResNet50/avg_pool``)."""
    return f"embeddings/{model}" if "/" in model else f"embeddings/{model}/{layer}"
