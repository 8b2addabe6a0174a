"""Video models and the registry that names them.

Importing this package imports every family file, and each registers its architectures and zoo entries
(`pipeline.models.registry`). A new family is one file here plus its line below.
"""

from pipeline.models import (  # noqa: F401 - each registers its models
    i3d_inception,
    mvit,
    r2plus1d,
    resnet3d,
    videomae,
    x3d,
)
from pipeline.models.base import ClipShapeError, VideoModel
from pipeline.models.labels import load_labels
from pipeline.models.registry import ModelSpec, build_model, get_spec, list_models, register_model

__all__ = [
    "ClipShapeError",
    "ModelSpec",
    "VideoModel",
    "build_model",
    "get_spec",
    "list_models",
    "load_labels",
    "register_model",
]
