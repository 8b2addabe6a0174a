"""pytorchvideo==0.1.5 (test-only, installed with --no-deps) as a reference for its hub models.

Its model code imports `torchvision.ops.RoIAlign`; torchvision does not import beside our torch build, so
a stand-in package (tests/reference_stub/torchvision_stub) is put on sys.path when the real one is absent.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from tests.reference import skip_or_fail

TORCHVISION_STUB = Path(__file__).parent / "reference_stub" / "torchvision_stub"


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision.ops")
    except Exception:  # absent, or a wheel built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def pytorchvideo_hub() -> dict[str, ModuleType]:
    """pytorchvideo.models.hub's slowfast, resnet and x3d modules; skipped (failed under CI=true) when not
    importable, as every reference test (tests/reference.py's rule)."""
    if not _torchvision_importable() and str(TORCHVISION_STUB) not in sys.path:
        sys.path.append(str(TORCHVISION_STUB))
    try:
        from pytorchvideo.models.hub import resnet, slowfast, x3d
    except Exception as exc:  # any import-time failure means "no reference here"
        skip_or_fail(f"pytorchvideo==0.1.5 reference not importable: {type(exc).__name__}: {exc}")
    return {"slowfast": slowfast, "resnet": resnet, "x3d": x3d}
