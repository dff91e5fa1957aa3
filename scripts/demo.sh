#!/usr/bin/env bash
# README command 1: set everything up on a fresh machine, start the local Neo4j, and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/circuitshift demo "$@"
