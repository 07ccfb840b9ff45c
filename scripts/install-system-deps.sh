#!/usr/bin/env bash
# Install the system packages the tests need and a fresh Debian machine lacks: redis-server,
# docker.io (dockerd), debootstrap (the offline base image), docker-compose, python3-venv,
# chromium and chromium-driver (the dashboard's browser tests). Needs root; does nothing when
# everything is already there.
set -euo pipefail
missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
# The dashboard's browser tests: Debian's Chromium and its matching chromedriver.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
((${#missing[@]})) || exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing ${missing[*]}: run as root, or install them with apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
