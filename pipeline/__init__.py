"""SlowFast Feature Extractor: clip-level features from PySlowFast models."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# The configs (the top-level conf/) are installed as the subpackage pipeline.conf (pyproject: package-dir).
# Imported straight from a checkout (not installed, or shadowing a non-editable install), conf/ sits
# beside this package instead: look for pipeline.conf there too.
_checkout = _Path(__file__).resolve().parent.parent
if not _Path(__file__).with_name("conf").is_dir() and (_checkout / "conf" / "__init__.py").is_file():
    __path__.append(str(_checkout))
