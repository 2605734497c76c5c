#!/usr/bin/env bash
# One-command set-up for featstore, idempotent and quick the second time.
#
#   bash bootstrap.sh demo [WORKDIR] [DEMO ARGS]  # set up what the demo needs, then run every stage on generated data
#   bash bootstrap.sh test [PYTEST ARGS]          # set up with the test extras, then run the test suite
#   bash bootstrap.sh lint                        # set up with the test extras, then `ruff check .` (rules in ruff.toml)
#
# Set-up: a virtual environment in .venv (Python 3.11+), then `pip install -e .` for the demo or
# `pip install -e .[test]` for the tests; each skipped when setup.cfg has not changed since its last
# successful install (one hash stamp per kind in .venv). The test set-up also installs Debian's
# chromium when it is missing (the report's browser test renders the page in it).
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
cmd=${1:-}
shift || true
case "$cmd" in
  demo) target=.; cmd_kind=demo ;;
  test|lint) target='.[test]'; cmd_kind=test ;;
  *) echo "usage: bash bootstrap.sh demo [WORKDIR] | test [PYTEST ARGS] | lint" >&2; exit 2 ;;
esac
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
stamp=.venv/.featstore-install-stamp-$cmd_kind
# the test install includes everything the demo needs
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && ! { [ "$cmd_kind" = demo ] && [ "$(cat .venv/.featstore-install-stamp-test 2>/dev/null)" = "$want" ]; }; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$target"
  echo "$want" > "$stamp"
fi
if [ "$cmd_kind" = test ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  # tests/test_report_browser.py renders the report in headless chromium (it fails, naming this, without it)
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
export PATH="$PWD/.venv/bin:$PATH"

case "$cmd" in
  demo) exec featstore demo "${1:-demo-out}" "${@:2}" ;;
  test)
    # one test process per core, at most 4 (each may hold TensorFlow, ~1-2 GB); a test file stays in one
    # process, so its module fixtures are made once. FEATSTORE_TEST_PROCESSES=0: everything in this one.
    procs=${FEATSTORE_TEST_PROCESSES:-$(n=$(nproc 2>/dev/null || echo 1); echo $(( n < 4 ? n : 4 )))}
    case "$procs" in ''|*[!0-9]*) echo "bootstrap: FEATSTORE_TEST_PROCESSES must be a whole number (0 or 1: one process), got '$procs'" >&2; exit 2 ;; esac
    if [ "$procs" -gt 1 ]; then set -- -n "$procs" --dist loadfile "$@"; fi
    exec python -m pytest -q -ra "$@" ;;
  lint) exec ruff check . ;;
  *) echo "usage: bash bootstrap.sh demo [WORKDIR] | test [PYTEST ARGS] | lint" >&2; exit 2 ;;
esac
