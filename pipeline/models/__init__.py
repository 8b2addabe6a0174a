"""Video models with PySlowFast parameter names, and the registry that names them."""

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
