"""Where a run's weights come from (a file, the zoo cache, or seeded random weights) and their identity,
decided once when the run is planned and recorded in every output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ModelConfig
from pipeline.outputs import file_sha256
from pipeline.weights.zoo import resolve_zoo


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from; recorded in every output."""

    path: str | None
    sha256: str | None
    random: bool
    format: str | None = None

    @property
    def identity(self) -> str:
        """What makes two runs' weights the same: the file hash, or the seed for random weights."""
        return self.sha256 or "random"


def resolve_checkpoint(model: ModelConfig) -> Path | None:
    """The checkpoint file for `model.checkpoint` (a path or `zoo`), or None for `random`."""
    if model.checkpoint == "random":
        return None
    if model.checkpoint == "zoo":
        return resolve_zoo(model.name)
    return Path(model.checkpoint).expanduser().resolve()


def weights_info(model: ModelConfig) -> WeightsInfo:
    """The run's weights: file path and sha256 (read once), or random."""
    path = resolve_checkpoint(model)
    if path is None:
        return WeightsInfo(None, None, True)
    return WeightsInfo(str(path), file_sha256(path), False)
