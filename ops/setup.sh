#!/usr/bin/env bash
# Set-up, idempotent: a virtual environment in .venv with the project installed. Reinstalls only when
# pyproject.toml changed since the last run. VBS_SETUP=service (the main command, ops/demo.sh, and
# ops/Dockerfile): only what the service runs with (ffmpeg, redis-server, openssl; the project without its
# test extra). The default (the test command, ops/test.sh) adds the test tools: the test extra, prometheus
# with promtool, chromium and chromedriver.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# System tools: ffmpeg serves the live test and demo streams (HLS, UDP); redis-server lets `vbs up` start its
# own Redis; espeak-ng speaks the demo corpus's narration; prometheus (with promtool) and chromium + chromedriver are what the metrics and page tests use.
SETUP=${VBS_SETUP:-full}
missing=""
command -v ffmpeg >/dev/null || missing="$missing ffmpeg"
command -v redis-server >/dev/null || missing="$missing redis-server"
command -v openssl >/dev/null || missing="$missing openssl"  # the TLS tests make a self-signed certificate
command -v espeak-ng >/dev/null || missing="$missing espeak-ng"  # speaks the corpus's narration (vbs corpus make --speech)
if [ "$SETUP" != service ]; then
  command -v promtool >/dev/null || missing="$missing prometheus"
  command -v chromium >/dev/null || missing="$missing chromium"
  command -v chromedriver >/dev/null || missing="$missing chromium-driver"
fi
if [ -n "$missing" ]; then
  echo "setup: installing$missing with apt-get" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extra=".[test]"; [ "$SETUP" = service ] && extra="."
hash=$(sha256sum pyproject.toml | cut -c1-16)
stamp=".venv/.installed-$SETUP-$hash"
# the full set-up holds the service's: after the test command, the main command installs nothing more
if [ ! -f "$stamp" ] && ! { [ "$SETUP" = service ] && [ -f ".venv/.installed-full-$hash" ]; }; then
  echo "setup: installing the project into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$extra"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
