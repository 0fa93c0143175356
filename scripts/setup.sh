#!/usr/bin/env bash
# Creates .venv and installs sttgate with its test dependencies. Idempotent.
# Where apt-get is available and we are root, also installs the browser the page test drives (Debian's chromium)
# and a Compose that resolves deploy/compose.yaml offline (Debian's docker-compose, when no `docker compose` plugin
# is there); without them those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
if [ "${STTGATE_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: chromium could not be installed; the browser page test will skip" >&2
fi
if [ "${STTGATE_SKIP_COMPOSE:-0}" != 1 ] && ! docker compose version >/dev/null 2>&1 \
   && ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
    || echo "setup: docker-compose could not be installed; the compose config test will skip" >&2
fi
