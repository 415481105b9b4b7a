#!/usr/bin/env bash
# Debian packages the project needs beyond Python:
#   libpython3.11            the local Triton's python-backend stub links this shared library
#   chromium, chromium-driver the demo page's browser test (headless; never a downloaded browser)
# Installs what is missing (root, Debian), otherwise says what to do.
set -euo pipefail
missing=()
libs="$(ldconfig -p 2>/dev/null || true)"
grep -q 'libpython3.11.so.1.0' <<<"$libs" || missing+=(libpython3.11)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (Debian packages the local Triton and the browser test need)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "error: missing ${missing[*]}; install them (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  exit 1
fi
