"""SlowFast Feature Extractor: clip-level features from PySlowFast models."""

import os as _os
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"

# Threads of torch's OpenMP pool (libgomp) that wait at a barrier spin only briefly, then sleep: the model's
# threads share the cores with decode workers, and long spinning burns the CPU that the decoder or a
# preempted partner thread needs. libgomp reads this once, when torch loads; a wait policy or spin count
# the user set wins. Measured with SlowFast R50 bf16 on 2 cores (end-to-end CPU-s per clip over model-only +
# decode-only): 1.18 with libgomp's default (300000 spins), 1.07 with 10000, 1.06 with no spinning at all
# (OMP_WAIT_POLICY=PASSIVE, which made model-only ~15% slower on an idle machine; 10000 ~7%).
if "torch" not in _sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(_os.environ):
    _os.environ["GOMP_SPINCOUNT"] = "10000"

# The configs (the top-level conf/) are installed as the subpackage pipeline.conf (pyproject: package-dir).
# Imported straight from a checkout (not installed, or shadowing a non-editable install), conf/ sits
# beside this package instead: look for pipeline.conf there too.
_checkout = _Path(__file__).resolve().parent.parent
if not _Path(__file__).with_name("conf").is_dir() and (_checkout / "conf" / "__init__.py").is_file():
    __path__.append(str(_checkout))
