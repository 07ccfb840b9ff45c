#!/usr/bin/env bash
# Set up a virtualenv with the project and run the whole test suite.
# This is THE test command: README.md names it and .ci/run runs it after installing services.
# It works on a fresh Debian machine: it installs the missing system packages first (as root).
# Arguments go to pytest (default: -q).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-deps.sh

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'

status=0
.venv/bin/pytest -ra "${@:--q}" || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests: check the test paths" >&2
fi
exit "$status"
