#!/usr/bin/env bash
# System tools the project needs beyond Python packages. Installs what is missing (root, Debian),
# otherwise says what to do.
#   libpython3.11 - the local Triton's python-backend stub links the Debian shared library.
#   promtool, prometheus - check monitoring/ (config, rules, rule unit tests, dashboard PromQL; a
#                   real server evaluates the dashboard on live scrapes). Only the two binaries
#                   are taken from Debian's prometheus package (no service, no web assets).
#   docker-compose - v1 from Debian, only to check docker-compose.yml per profile (`config -q`).
#   chromium, chromium-driver - the demo page's browser test (headless; never a downloaded browser).
set -euo pipefail
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"
COMPOSE_DEB_VERSION="1.29.2-3"

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
updated=""
apt_update() { [ -n "$updated" ] || { apt-get update -qq; updated=1; }; }

if ! ldconfig -p 2>/dev/null | grep -q 'libpython3.11.so.1.0'; then
  if can_apt; then
    echo "installing libpython3.11 (needed by Triton's python backend stub)"
    apt_update && apt-get install -y -qq --no-install-recommends libpython3.11 >/dev/null
  else
    echo "error: libpython3.11.so.1.0 not found; install it (Debian/Ubuntu: apt-get install libpython3.11)" >&2
    exit 1
  fi
fi

if ! promtool --version 2>/dev/null | grep -q "version ${PROMETHEUS_DEB_VERSION%%+*}" \
  || ! prometheus --version 2>/dev/null | grep -q "version ${PROMETHEUS_DEB_VERSION%%+*}"; then
  if can_apt; then
    echo "installing promtool and prometheus ${PROMETHEUS_DEB_VERSION} (from Debian's package)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    apt_update
    (cd "$work" && apt-get download -qq "prometheus=${PROMETHEUS_DEB_VERSION}" 2>/dev/null \
      && dpkg-deb -x prometheus_*.deb extracted)
    install -m 0755 "$work/extracted/usr/bin/promtool" "$work/extracted/usr/bin/prometheus" \
      /usr/local/bin/
  else
    echo "error: promtool/prometheus ${PROMETHEUS_DEB_VERSION%%+*} not found; install Debian's prometheus package" >&2
    exit 1
  fi
fi

if ! dpkg-query -W -f='${Version}' docker-compose 2>/dev/null | grep -qx "$COMPOSE_DEB_VERSION"; then
  if can_apt; then
    echo "installing docker-compose ${COMPOSE_DEB_VERSION} (checks docker-compose.yml offline)"
    apt_update && apt-get install -y -qq --no-install-recommends \
      "docker-compose=${COMPOSE_DEB_VERSION}" >/dev/null
  else
    echo "error: docker-compose ${COMPOSE_DEB_VERSION} not found; apt-get install docker-compose" >&2
    exit 1
  fi
fi

browser=()
[ -x /usr/bin/chromium ] || browser+=(chromium)
[ -x /usr/bin/chromedriver ] || browser+=(chromium-driver)
if [ "${#browser[@]}" -gt 0 ]; then
  if can_apt; then
    echo "installing ${browser[*]} (the demo page's browser test)"
    apt_update && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${browser[@]}" >/dev/null
  else
    echo "error: missing ${browser[*]}; install them (Debian/Ubuntu: apt-get install ${browser[*]})" >&2
    exit 1
  fi
fi
