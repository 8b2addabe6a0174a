"""What a checkpoint holds once read: its tensors under our models' parameter names, and the one error.

`CheckpointState` is the hand-over between the readers (`files`), the key maps of foreign namings
(`caffe2`, `pytorchvideo`, ... registered in `formats`) and the strict loader (`loading`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from pipeline.errors import PipelineError

LIST_LIMIT = 8  # names listed in one error or log line before "(+N more)"


class CheckpointError(PipelineError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"checkpoint {path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, tuple[Path, str]]:
        """Pickle by (path, reason) so the error survives a trip between processes."""
        return (type(self), (self.path, self.reason))


class CheckpointState(NamedTuple):
    """A checkpoint's tensors under our parameter names, before matching them to a model."""

    format: str
    state: dict[str, torch.Tensor]
    ignored: tuple[str, ...]
    # Model attributes the weights need that the keys cannot show, e.g. (("temporal_pool", 2),).
    requires: tuple[tuple[str, object], ...] = ()
    # The architectures (ModelSpec.arch) these weights can fill, when the keys tell (empty: not known).
    archs: tuple[str, ...] = ()
    # What the weights are, in words, for the error when they meet another architecture.
    family: str | None = None


def short_list(items: list[str]) -> str:
    """At most LIST_LIMIT items, comma-separated, with "(+N more)"."""
    shown = ", ".join(items[:LIST_LIMIT])
    return shown + (f" (+{len(items) - LIST_LIMIT} more)" if len(items) > LIST_LIMIT else "")
