#!/usr/bin/env python3
"""Throughput benchmark (same as `python -m pipeline.benchmark`; see --help).

python scripts/benchmark.py                       # SlowFast R50, EPIC setting, generated 1080p video
python scripts/benchmark.py --all-models --json   # clips/s and GFLOPs of every registered model
"""

from __future__ import annotations

import sys

from pipeline.bench.cli import main
from pipeline.errors import exit_status

if __name__ == "__main__":
    sys.exit(exit_status(main, "scripts/benchmark.py"))
