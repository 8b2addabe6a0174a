"""Our models equal PySlowFast GitHub master's (../shared/pyslowfast): X3D at each model's train and test
crop, the SSv2 / Charades / multigrid / Kinetics-600 SlowFast entries built from PySlowFast's own configs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models import build_model, get_spec
from tests.reference import STUB_DIR, pyslowfast_source

RTOL = 1e-4


def run_check(script: str, key: str) -> dict[str, dict]:
    """Run a stub script against PySlowFast master in a subprocess; its JSON lines by `key`."""
    source = pyslowfast_source()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, str(STUB_DIR / script), str(source)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {r[key]: r for r in results}


@pytest.fixture(scope="module")
def x3d_results() -> dict[str, dict]:
    """Every X3D model at its test crop (and X3D-XS at its train crop)."""
    return run_check("pyslowfast_x3d_check.py", "run")


@pytest.fixture(scope="module")
def slowfast_results() -> dict[str, dict]:
    """The new SlowFast entries, each against PySlowFast's SlowFast built from the entry's config."""
    return run_check("pyslowfast_slowfast_check.py", "name")


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


@pytest.mark.parametrize(
    "name",
    [
        "slowfast_r50_16x8_ssv2",
        "slowfast_r50_16x8_ssv2_multigrid",
        "slowfast_r50_16x8_charades",
        "slowfast_r50_8x8_stepwise_multigrid",
        "slowfast_r101_nl_8x8_k600",
    ],
)
def test_slowfast_entry_equals_pyslowfast_master_from_its_config(
    slowfast_results: dict[str, dict], name: str
) -> None:
    result = slowfast_results[name]
    assert result["num_classes"] == get_spec(name).num_classes
    assert result["keys"] == len(build_model(name, width_per_group=4).state_dict())
    assert result["between_clips"] > 5e-3  # features vary between clips: the comparison is not vacuous
    assert result["features"] < RTOL and result["logits"] < RTOL, result
