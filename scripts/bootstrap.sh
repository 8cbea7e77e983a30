#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine, idempotently:
#   - system packages: PostgreSQL server binaries, Java 17+ and Maven (only when missing)
#   - a virtualenv in .venv with the project and its test dependencies
#   - with --with-prometheus (or --for-tests): Prometheus, promtool and Alertmanager (Debian packages),
#     for `stack up prometheus alertmanager` and the alert rules' tests
#   - with --for-tests: Chromium and chromedriver, for the dashboard's browser tests
# The Kafka broker's jars are fetched by `assessment-store stack up` on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

with_prometheus=false
with_browser=false
for arg in "$@"; do
  case "$arg" in
    --with-prometheus) with_prometheus=true ;;
    --for-tests) with_prometheus=true; with_browser=true ;;
    *) echo "bootstrap.sh: unknown option $arg (known: --with-prometheus, --for-tests)" >&2; exit 64 ;;
  esac
done

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: $*" >&2; exit 1; }
    sudo="sudo"
  fi
  say "installing system packages: $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v runuser >/dev/null || missing+=(util-linux)
command -v npm >/dev/null || missing+=(nodejs npm)
if $with_prometheus; then
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
fi
if $with_browser; then
  # The dashboard's browser tests (tests/test_dashboard.py) and bench/dashboard.py drive a headless
  # Chromium through the system chromedriver.
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
fi
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "Python >= 3.11 required (found $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }

stamp=.venv/.installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating .venv and installing the project"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
# The compiled twins of the hot codec modules (mypyc; core/_native.py): a no-op when current. Without
# a C compiler the Python modules serve, slower, unless ASSESSMENT_STORE_NATIVE=require (CI) says not.
if ! .venv/bin/python scripts/build_native.py; then
  if [ "${ASSESSMENT_STORE_NATIVE:-auto}" = "require" ]; then
    echo "bootstrap.sh: the compiled twins could not be built and ASSESSMENT_STORE_NATIVE=require" >&2
    exit 1
  fi
  say "the compiled codecs could not be built (above): the Python ones serve"
fi
node_stamp=bridge/node/node_modules/.installed
node_want=$(sha256sum bridge/node/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_want" ]; then
  say "installing the Node legacy tap's dependencies (npm ci)"
  (cd bridge/node && npm ci --no-audit --no-fund --loglevel=error)
  echo "$node_want" > "$node_stamp"
fi
# The dashboard's charting library: npm installs it into monitoring/dashboard/node_modules, and its
# dist file is copied beside the page (monitoring/dashboard/static/vendor/, package data of the wheel),
# so the page loads nothing from outside the product.
dash_stamp=monitoring/dashboard/node_modules/.installed
dash_want=$(sha256sum monitoring/dashboard/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$dash_stamp" 2>/dev/null)" != "$dash_want" ] || [ ! -f monitoring/dashboard/static/vendor/uPlot.iife.min.js ]; then
  say "installing the dashboard's charting library (npm ci)"
  (cd monitoring/dashboard && npm ci --no-audit --no-fund --loglevel=error && npm run --silent vendor)
  echo "$dash_want" > "$dash_stamp"
fi
say "ready: .venv/bin/assessment-store"
