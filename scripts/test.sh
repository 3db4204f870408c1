#!/usr/bin/env bash
# Installs everything the test suite needs into .venv and runs the whole suite.
# Used verbatim by CI (.ci/run) and by the README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real redis-server for the metrics-cache tests (the suite starts its own on a free loopback port).
if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
export OBS_REQUIRE_REDIS=1  # here a missing redis-server fails the suite instead of skipping tests

# Postgres server binaries (initdb, pg_ctl, postgres) for the store tests: the suite runs its own
# throwaway cluster on a free loopback port. No default "main" cluster is created or started.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >/dev/null
fi
export OBS_REQUIRE_POSTGRES=1  # here missing Postgres binaries fail the suite instead of skipping tests
export OBS_REQUIRE_PHOENIX=1  # `phoenix serve` (arize-phoenix, in the test extra) must run: the OTLP export test needs it

# Debian's Chromium for the HTML report's browser test (driven by Playwright as the system browser;
# Playwright downloads no browser of its own).
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
export OBS_REQUIRE_CHROMIUM=1  # here a missing Chromium fails the report's browser test instead of skipping it

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy src
# Layers import only downward and no module cycles ([tool.importlinter] in pyproject.toml).
.venv/bin/lint-imports
# pytest exits 5 when it collects nothing; that must fail CI, never pass silently.
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
