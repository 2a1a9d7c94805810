#!/usr/bin/env bash
# Installs the system packages the test suite starts for real (PostgreSQL, Redis;
# qemu's user-mode emulator for the reaper's other architecture),
# when they are missing and we may install them (root with apt-get).
set -euo pipefail
need=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if ! command -v redis-server >/dev/null 2>&1; then
  need+=(redis-server)
fi
if [ "$(uname -m)" = x86_64 ] && ! command -v qemu-aarch64-static >/dev/null 2>&1; then
  need+=(qemu-user-static)  # runs the sandbox reaper's aarch64 build (tests/unit/sandbox/test_sandbox_reaper_run.py)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test dependencies: ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "warning: missing ${need[*]}; tests that need them will be skipped" >&2
  fi
fi

# Real wheels the image tests build from, fetched once into a local wheelhouse
# (the tests themselves never contact a package index: they pass --no-index).
PY="${PYTHON:-.venv/bin/python}"
WHEELHOUSE=.cache/wheelhouse
numpy_version="$("$PY" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)"
if [ -n "$numpy_version" ] && ! ls "$WHEELHOUSE"/numpy-"$numpy_version"-*.whl >/dev/null 2>&1; then
  echo "fetching numpy $numpy_version into $WHEELHOUSE (once)"
  mkdir -p "$WHEELHOUSE"
  "$PY" -m pip download -q "numpy==$numpy_version" --only-binary=:all: --no-deps -d "$WHEELHOUSE" \
    || echo "warning: could not fetch numpy into $WHEELHOUSE; the numpy image tests will be skipped" >&2
fi
