#!/usr/bin/env bash
# The README's test command: set everything up, then run the whole test suite against a real Neo4j
# server that the tests start themselves (or NEO4J_URI, when set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
