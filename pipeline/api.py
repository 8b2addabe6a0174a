"""The plain Python API for notebooks: `FeatureExtractor`, and `compose_config` for a config like the CLI's.

from pipeline.api import FeatureExtractor
fx = FeatureExtractor("slowfast_r50", checkpoint="SLOWFAST_8x8_R50.pkl", fps=30, stride=16)
features, timestamps = fx.extract("video.mp4")

A run over a video list (manifests, resume, shards) is `pipeline.run`, driven by `pipeline.extract`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.assemble import as_object, build_engine, extraction_settings, setup_torch
from pipeline.config import (
    DataConfig,
    ExtractConfig,
    HardwareConfig,
    OutputConfig,
    register_configs,
    validate,
)
from pipeline.engine import VideoJob, VideoResult
from pipeline.inference import check_model_config
from pipeline.weights import WeightsInfo, weights_info

CONF_PACKAGE = "pipeline.conf"  # the top-level conf/, installed as this package (pyproject: package-dir)


def compose_config(model: str, overrides: Iterable[str] = (), data: str = "custom") -> DictConfig:
    """Compose conf/ with Hydra's compose API (for notebooks and tests), like the command line would."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return compose(config_name="config", overrides=[f"model={model}", f"data={data}", *overrides])


class FeatureExtractor:
    """Extract clip features from videos without Hydra: `extract(path)` or `extract_many(paths)`."""

    def __init__(self, model: str = "slowfast_r50", checkpoint: str = "zoo", **settings: Any) -> None:
        overrides = [f"model.checkpoint={checkpoint}", "data.root=."]
        cfg = compose_config(model, overrides)
        for key, value in settings.items():
            OmegaConf.update(cfg, _settings_key(key), value, merge=False)
        self._setup(cfg)

    @classmethod
    def from_config(
        cls, cfg: DictConfig | ExtractConfig, weights: WeightsInfo | None = None
    ) -> FeatureExtractor:
        """An extractor for a whole config (e.g. a run's recorded one, `pipeline.compare`'s probe);
        `weights`: the checkpoint already resolved (its sha256 read once for several extractors)."""
        extractor = cls.__new__(cls)
        extractor._setup(cfg, weights)
        return extractor

    def _setup(self, cfg: DictConfig | ExtractConfig, weights: WeightsInfo | None = None) -> None:
        self.config: ExtractConfig = as_object(cfg)
        validate(self.config)
        setup_torch(self.config.hardware)
        check_model_config(self.config.model, self.config.data)
        self.weights = weights if weights is not None else weights_info(self.config.model)
        self.engine = build_engine(self.config, self.weights)
        self.settings = extraction_settings(self.config, self.weights)

    def extract_many(self, paths: Iterable[str | Path]) -> Iterator[VideoResult]:
        """Results per video as they complete (check `result.error`)."""
        jobs = [VideoJob(key=str(p), path=Path(p).expanduser().resolve(), rel=str(p)) for p in paths]
        yield from self.engine.run(jobs)

    def extract(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """Features (rows, dim) and timestamps (rows, 3: start, end, centre seconds) of one video."""
        (result,) = list(self.extract_many([path]))
        if result.error or result.features is None or result.timestamps is None:
            raise RuntimeError(result.error or f"{path}: no features")
        return result.features, result.timestamps


def _settings_key(key: str) -> str:
    """Map a short keyword (`stride`, `batch_size`, `dtype`) to its config key; dotted keys pass through."""
    if "." in key:
        return key
    for prefix, schema in (("data", DataConfig), ("hardware", HardwareConfig), ("output", OutputConfig)):
        if key in {f.name for f in fields(schema)}:
            return f"{prefix}.{key}"
    if key in {f.name for f in fields(ExtractConfig)}:
        return key
    raise TypeError(f"unknown setting {key!r} (use a config key such as data.stride or hardware.batch_size)")
