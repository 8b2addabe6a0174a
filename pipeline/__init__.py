"""SlowFast Feature Extractor: clip-level features from PySlowFast models."""

import os as _os
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"

# Threads of torch's OpenMP pool that wait at a barrier sleep instead of spinning (libgomp reads this once,
# when torch loads; a value the user set wins). The model's threads share the cores with decode workers:
# spinning threads burn the CPU the decoder or a preempted partner thread needs. Measured on 2 busy cores
# (SlowFast R50 bf16): model-only 1.87 -> 0.85 CPU-s per clip, end to end 2.18 -> 1.22.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The configs (the top-level conf/) are installed as the subpackage pipeline.conf (pyproject: package-dir).
# Imported straight from a checkout (not installed, or shadowing a non-editable install), conf/ sits
# beside this package instead: look for pipeline.conf there too.
_checkout = _Path(__file__).resolve().parent.parent
if not _Path(__file__).with_name("conf").is_dir() and (_checkout / "conf" / "__init__.py").is_file():
    __path__.append(str(_checkout))
