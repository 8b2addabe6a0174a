#!/usr/bin/env bash
# Newcomer command 2 (and what CI runs): set up the environment if needed, start a local Slurm cluster
# for the Slurm tests when we can (root + apt), then run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ -f scripts/slurm_local.sh ]; then
  bash scripts/slurm_local.sh install
fi
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
