"""Model weights: where they come from (`source`, `zoo`), how their files are read safely (`files`), the key
maps of foreign namings (`caffe2`, `pytorchvideo`, ... registered in `formats`) and strict loading
(`loading`). `python -m pipeline.weights` downloads zoo files (`cli`).

Importing this package imports every key-map module, and each registers its naming.
"""

from pipeline.weights import (  # noqa: F401 - each registers its key format
    i3d_inception,
    pytorchvideo,
    transformers_videomae,
    tsp,
    videomae,
)
from pipeline.weights.cli import main
from pipeline.weights.files import sniff_format
from pipeline.weights.loading import LoadReport, is_head_key, load_checkpoint, read_state_dict
from pipeline.weights.source import WeightsInfo, resolve_checkpoint, weights_info
from pipeline.weights.state import CheckpointError, CheckpointState
from pipeline.weights.zoo import (
    ENV_VAR,
    ChecksumError,
    DownloadError,
    WeightsError,
    WeightsNotFoundError,
    ZooSpec,
    cache_dir,
    cached_path,
    download,
    download_command,
    fetch_zoo,
    manual_download_hint,
    resolve_zoo,
)

__all__ = [
    "ENV_VAR",
    "CheckpointError",
    "CheckpointState",
    "ChecksumError",
    "DownloadError",
    "LoadReport",
    "WeightsError",
    "WeightsInfo",
    "WeightsNotFoundError",
    "ZooSpec",
    "cache_dir",
    "cached_path",
    "download",
    "download_command",
    "fetch_zoo",
    "is_head_key",
    "load_checkpoint",
    "main",
    "manual_download_hint",
    "read_state_dict",
    "resolve_checkpoint",
    "resolve_zoo",
    "sniff_format",
    "weights_info",
]
