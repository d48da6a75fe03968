#!/usr/bin/env bash
# The two commands of the README, for a fresh machine with Python 3.11+, git and apt:
#   ./dev.sh run    install, migrate, seed the demo, serve on http://127.0.0.1:8000
#   ./dev.sh test   install what the tests need (Debian's chromium included) and run the whole pytest suite
# Extra arguments after `test` go to pytest, e.g. ./dev.sh test -k sync -x
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=${PYTHON:-}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_install() {
  command -v apt-get >/dev/null || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
    as_root apt-get update -qq >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  }
}

find_python() {
  for cand in "$PY" python3.13 python3.12 python3.11 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "Firegrid needs Python 3.11 or newer" >&2; return 1
}

ensure_venv() {
  local extras=$1 py stamp want
  py=$(find_python)
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      # Debian ships venv/ensurepip separately
      rm -rf "$VENV"
      apt_install python3-venv || apt_install "$(basename "$py")-venv" || { echo "install python3-venv first" >&2; exit 1; }
      "$py" -m venv "$VENV"
    fi
  fi
  stamp="$VENV/.installed"
  want="$extras $(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ] || ! grep -qx -- "$want" "$stamp"; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".$extras"
    echo "$want" > "$stamp"
  fi
}

ensure_chromium() {
  command -v chromium >/dev/null && return 0
  echo "installing Debian's chromium for the PWA tests…" >&2
  apt_install chromium || echo "warning: chromium could not be installed; browser tests will be skipped (or fail under CI)" >&2
}

case "${1:-}" in
  run)
    ensure_venv ""
    "$VENV/bin/firegrid" migrate
    "$VENV/bin/firegrid" seed-demo
    exec "$VENV/bin/firegrid" serve --host "${FIREGRID_HOST:-127.0.0.1}" --port "${FIREGRID_PORT:-8000}"
    ;;
  test)
    shift
    ensure_venv "[test]"
    ensure_chromium
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh run | ./dev.sh test [pytest args]" >&2; exit 2
    ;;
esac
