#!/usr/bin/env bash
# One-command set-up for featstore, idempotent and quick the second time.
#
#   bash bootstrap.sh demo [WORKDIR]   # set up, then run every stage end to end on generated demo data
#   bash bootstrap.sh test [PYTEST ARGS]  # set up, then run the test suite (-m "not slow": the fast tier)
#   bash bootstrap.sh lint             # set up, then `ruff check .` (rules in ruff.toml)
#
# Set-up: a virtual environment in .venv (Python 3.11+), `pip install -e .[test]`; skipped when
# setup.cfg has not changed since the last successful install (hash stamp in .venv).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "bootstrap: no python3 found" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.featstore-install-stamp
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

cmd=${1:-}
shift || true
case "$cmd" in
  demo) exec featstore demo "${1:-demo-out}" ;;
  test) exec python -m pytest -q -ra "$@" ;;
  lint) exec ruff check . ;;
  *) echo "usage: bash bootstrap.sh demo [WORKDIR] | test [PYTEST ARGS] | lint" >&2; exit 2 ;;
esac
