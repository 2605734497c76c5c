"""Every error featstore raises on purpose derives from FeatstoreError: an AST scan of every raise
site of the library, the pipelines and the CLI finds none of Python's own exception classes."""

from __future__ import annotations

import ast
import builtins
import pathlib

import featstore.errors as errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(p for part in ("featstore", "pipelines", "cli") for p in (ROOT / part).rglob("*.py"))
#: Builtins that are not errors of the user's making: protocol signals and "subclass must provide".
ALLOWED = {"NotImplementedError", "StopIteration", "SystemExit", "KeyboardInterrupt", "GeneratorExit"}
BUILTIN_ERRORS = {name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)} - ALLOWED


def builtin_raises(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, class name) of every ``raise X(...)`` / ``raise X`` whose X is a builtin exception,
    except the ``AttributeError`` of a module's ``__getattr__`` (the protocol of PEP 562)."""
    tree = ast.parse(source, filename)
    module_getattr = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in BUILTIN_ERRORS and not (target.id == "AttributeError" and id(node) in module_getattr):
                found.append((node.lineno, target.id))
    return sorted(found)


def test_the_scan_finds_builtin_raises():
    sample = "def f(x):\n    if x:\n        raise ValueError('bad')\n    raise KeyError\n\nraise NotImplementedError\n"
    assert builtin_raises(sample) == [(3, "ValueError"), (4, "KeyError")]
    module_getattr = "def __getattr__(name):\n    raise AttributeError(name)\n\ndef g():\n    raise AttributeError('x')\n"
    assert builtin_raises(module_getattr) == [(5, "AttributeError")]


def test_no_raise_site_uses_a_builtin_exception():
    assert len(SOURCES) > 40
    offending = {str(p.relative_to(ROOT)): hits for p in SOURCES if (hits := builtin_raises(p.read_text(), str(p)))}
    assert offending == {}, "raise a featstore.errors class instead (keep a builtin base beside FeatstoreError if callers need it)"


def test_every_error_class_derives_from_the_root():
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == errors.__name__]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, errors.FeatstoreError) or issubclass(cls, Warning), cls
