#!/usr/bin/env bash
# Makes the project's venv ($2) with Python ($1).  Debian's python3 makes a venv only with its
# python3-venv package (ensurepip): without it `python3 -m venv` fails half way and leaves a
# venv with no pip.  Then, as root with apt-get, install that package and make it again.
set -euo pipefail
py="$1"
venv="$2"
if "$py" -m venv "$venv" 2>/tmp/spanfaas-venv.err; then
  exit 0
fi
rm -rf "$venv"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  minor="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  echo "installing python${minor}-venv (${py} -m venv needs it)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${minor}-venv" >/dev/null 2>&1 || true
  "$py" -m venv "$venv"
else
  cat /tmp/spanfaas-venv.err >&2
  echo "error: ${py} -m venv failed; install your distribution's venv package (Debian/Ubuntu: python3-venv) and run make again" >&2
  exit 1
fi
