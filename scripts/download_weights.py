#!/usr/bin/env python3
"""Fetch model-zoo weights into the local cache: a wrapper of `python -m pipeline.weights` (same options).

python scripts/download_weights.py slowfast_r50 i3d_r50
python scripts/download_weights.py --all
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import pipeline  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.weights import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
