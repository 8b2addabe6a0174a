#!/usr/bin/env bash
# Newcomer command 1: set up the environment if needed, then extract features from the built-in demo
# videos (generated on first use; random weights unless a zoo checkpoint is cached). Extra arguments
# are Hydra overrides, e.g. ./scripts/demo.sh model=slowfast_tiny
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${VENV:-.venv}/bin/python" -m pipeline.extract data=demo "$@"
