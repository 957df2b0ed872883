#!/usr/bin/env bash
# Debian's chromium drives the real-browser tests (Playwright's own browser download cannot work
# on closed networks). Installs it when absent and we are root; with CI=true, failure is fatal.
set -u
CHROMIUM=${ECRF_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium for the browser tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/tmp/ecrf-apt.log 2>&1 \
    || { echo "apt-get install chromium failed: see /tmp/ecrf-apt.log"; tail -5 /tmp/ecrf-apt.log; }
fi
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "${CI:-}" = "true" ]; then
  echo "CI: chromium is required for the browser tests and could not be installed." >&2
  exit 1
fi
echo "chromium is not installed: the browser tests will be skipped (install it: apt-get install chromium)."
exit 0
