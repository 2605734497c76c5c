"""TensorFlow's start-up notices, silenced before TensorFlow is imported (the CLI installs this).

TensorFlow 2.16+ writes, from C++ and before its logging is initialised, two notices on every
import (``WARNING: All log messages before absl::InitializeLog() ...`` and ``oneDNN custom
operations are on ...``); ``TF_CPP_MIN_LOG_LEVEL`` does not reach them. :func:`install` puts an
import hook in front of ``import tensorflow``, wherever it happens later (a training command, a
stage, Keras): the import runs with file descriptor 2 captured, and what it wrote goes back to
stderr without those notices. TensorFlow is not imported by :func:`install` itself, so commands
that never need it stay fast. The hook also sets ``TF_CPP_MIN_LOG_LEVEL=2`` (a user's own setting
wins) and quiets the ``absl`` Python logger to errors.

One more notice comes later, at a process's first float16 tensor, on a CPU without AVX-512 FP16
(``oneDNN supports DT_HALF only on platforms with AVX-512. Falling back to the default Eigen-based
implementation``, written at error level, once): TensorFlow then uses its own kernels, nothing is
wrong. :func:`quiet_first_float16` makes that first tensor with the notice filtered;
:func:`featstore.tfdata.tf_dataset` calls it before it serves float16 batches (windows in the
stored dtype), so training does not print it between its epoch lines.

``verbose=True`` (the commands' ``--verbose``) leaves everything as TensorFlow prints it.
Dask worker processes started by a stage do not inherit the hook (their start-up lines stay).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

#: Substrings of the lines that are dropped: the start-up notices and the float16 one.
NOTICES = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
           "oneDNN supports DT_HALF only on platforms with AVX-512")

_state = {"verbose": False, "float16_made": False}


def set_verbose(verbose: bool) -> None:
    """Show TensorFlow's notices (``True``) or filter them (the default); takes effect if TensorFlow
    has not been imported yet."""
    _state["verbose"] = bool(verbose)


def _filtered(captured: bytes) -> bytes:
    lines = captured.splitlines(keepends=True)
    return b"".join(line for line in lines if not any(n.encode() in line for n in NOTICES))


@contextmanager
def _stderr_filtered() -> Iterator[None]:
    """File descriptor 2 captured for the block; what was written to it goes back to stderr
    afterwards without the :data:`NOTICES`."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a detached process): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            rest = _filtered(capture.read())
            if rest:
                os.write(2, rest)


def quiet_first_float16() -> None:
    """Make this process's first float16 tensor with the float16 notice filtered (see the module
    docstring); a no-op once done, and with ``verbose``. Imports TensorFlow."""
    if _state["verbose"] or _state["float16_made"]:
        return
    import numpy as np
    import tensorflow as tf

    with _stderr_filtered():
        tf.constant(np.zeros(1, np.float16))  # oneDNN checks the CPU for float16 here, once
    _state["float16_made"] = True


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` with fd 2 captured and filtered."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        if _state["verbose"]:
            self.loader.exec_module(module)
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with _stderr_filtered():
            self.loader.exec_module(module)
        logging.getLogger("absl").setLevel(logging.ERROR)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the other finders do and wraps its loader (once)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import; a reload goes the ordinary way
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install(verbose: bool = False) -> None:
    """Filter TensorFlow's start-up notices at its first import (see the module docstring); a
    no-op when TensorFlow is already imported or the hook is in place."""
    set_verbose(verbose)
    if "tensorflow" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
