#!/usr/bin/env bash
# System libraries the local Triton needs: its python-backend stub links the Debian
# libpython3.11 shared library. Installs it when missing (root, Debian), otherwise says what to do.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libpython3.11.so.1.0'; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing libpython3.11 (needed by Triton's python backend stub)"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends libpython3.11 >/dev/null
else
  echo "error: libpython3.11.so.1.0 not found; install it (Debian/Ubuntu: apt-get install libpython3.11)" >&2
  exit 1
fi
