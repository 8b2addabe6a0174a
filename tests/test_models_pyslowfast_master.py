"""Our X3D equals PySlowFast GitHub master's (../shared/pyslowfast) at each model's train and test crop."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference import STUB_DIR, pyslowfast_source

from pipeline.models import get_spec

RTOL = 1e-4


@pytest.fixture(scope="module")
def x3d_results() -> dict[str, dict]:
    """One run of the stub script over every X3D model at its test crop (and X3D-XS at its train crop)."""
    source = pyslowfast_source()
    script = STUB_DIR / "pyslowfast_x3d_check.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(
        [sys.executable, str(script), str(source)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {r["run"]: r for r in results}


@pytest.mark.parametrize("name", ["x3d_xs", "x3d_s", "x3d_m", "x3d_l"])
def test_x3d_equals_pyslowfast_master_at_its_test_crop(x3d_results: dict[str, dict], name: str) -> None:
    result = x3d_results[name]
    spec = get_spec(name)
    config = result["config"]
    # Our spec carries PySlowFast's own settings for this model.
    assert (spec.num_frames, spec.sampling_rate, spec.crop_size) == (
        config["num_frames"],
        config["sampling_rate"],
        config["test_crop"],
    )
    kernel = math.ceil(config["train_crop"] / 32)
    assert spec.builder_kwargs["head_pool"] == (spec.num_frames, kernel, kernel)
    # The test crop leaves several pooled positions: the comparison covers PySlowFast's per-position head.
    assert result["crop"] == spec.crop_size and result["positions"][1] * result["positions"][2] > 1
    for key in ("lin_5", "conv_5", "logits"):
        assert result[key] < RTOL, (name, key, result)


def test_x3d_equals_pyslowfast_master_at_its_train_crop(x3d_results: dict[str, dict]) -> None:
    result = x3d_results["x3d_xs@160"]
    assert result["crop"] == result["config"]["train_crop"] == 160 and result["positions"] == [1, 1, 1]
    for key in ("lin_5", "conv_5", "logits", "softmax_of_mean_logits"):
        assert result[key] < RTOL, (key, result)
