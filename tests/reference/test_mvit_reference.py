"""Our MViTv1 / MViTv2 / Rev-MViT equal PySlowFast master's MViT: same keys, features and logits.

The reference is PySlowFast's GitHub master checkout at $PYSLOWFAST_SRC, by default ../shared/pyslowfast
beside the repository. It runs in a subprocess (tests/reference_stub/pyslowfast_mvit_check.py) with
stand-ins for its optional dependencies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.models import build_model
from tests.reference import pyslowfast_source

RTOL = 1e-4
SCRIPT = Path(__file__).resolve().parents[1] / "reference_stub" / "pyslowfast_mvit_check.py"


def run_reference(cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run the comparison script on the cases; their results by key."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(pyslowfast_source()), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def case(name: str, config: str, frames: int = 4, crop: int = 64, classes: int = 400, **extra: Any) -> dict:
    return {
        "name": name,
        "config": config,
        "num_frames": frames,
        "crop": crop,
        "batch": 2,
        "num_classes": classes,
        **extra,
    }


QUICK = [
    case("mvit_b_16x4", "Kinetics/MVIT_B_16x4_CONV"),
    case("mvit_b_32x3", "Kinetics/MVIT_B_32x3_CONV"),
    case("mvit_b_32x3_k600", "Kinetics/MVIT_B_32x3_CONV", classes=600),
    # 56 = 14 patches: odd grids after q pooling make PySlowFast resample its relative-position tables
    case("mvitv2_s_16x4", "Kinetics/MVITv2_S_16x4", crop=56),
    case("mvitv2_b_32x3", "Kinetics/MVITv2_B_32x3"),
    case("mvitv2_s_16x4_ssv2", "SSv2/MVITv2_S_16x4", classes=174),
    case("mvitv2_b_32x3_ssv2", "SSv2/MVITv2_B_32x3", classes=174),
    case("rev_mvit_b_16x4", "Kinetics/REV_MVIT_B_16x4_CONV"),
    # Flags no zoo model uses, each against the same flag in PySlowFast.
    case(
        "mvit_b_16x4",
        "Kinetics/MVIT_B_16x4_CONV",
        key="v1 pool_first conv_unshared, one pos_embed, norm_stem",
        cfg={
            "MVIT.POOL_FIRST": True,
            "MVIT.MODE": "conv_unshared",
            "MVIT.SEP_POS_EMBED": False,
            "MVIT.NORM_STEM": True,
        },
        ours={"pool_first": True, "mode": "conv_unshared", "sep_pos_embed": False, "norm_stem": True},
    ),
    case(
        "mvit_b_16x4",
        "Kinetics/MVIT_B_16x4_CONV",
        key="v1 max pooling, separate qkv, mean pooling",
        cfg={"MVIT.MODE": "max", "MVIT.SEPARATE_QKV": True, "MVIT.USE_MEAN_POOLING": True},
        ours={"mode": "max", "separate_qkv": True, "use_mean_pooling": True},
    ),
    case(
        "mvitv2_s_16x4",
        "Kinetics/MVITv2_S_16x4",
        frames=8,
        crop=128,  # average pooling needs a 3x3x3 grid at every stage
        key="v2 avg pooling, no cls token",
        cfg={"MVIT.MODE": "avg", "MVIT.CLS_EMBED_ON": False},
        ours={"mode": "avg", "cls_embed_on": False},
    ),
    case(
        "rev_mvit_b_16x4",
        "Kinetics/REV_MVIT_B_16x4_CONV",
        key="rev add fusion, mean pooling",
        cfg={"MVIT.REV.RESPATH_FUSE": "add", "MVIT.USE_MEAN_POOLING": True},
        ours={"rev_respath_fuse": "add", "use_mean_pooling": True},
    ),
]


def check(results: dict[str, dict[str, Any]], cases: list[dict[str, Any]]) -> None:
    """Every case: strict load, equal features and logits, .pyth loads every key, clips differ."""
    assert len(results) == len(cases)
    for key, result in results.items():
        assert result["features"] < RTOL and result["logits"] < RTOL, (key, result)
        assert result["pyth_loaded"] == result["keys"] and result["pyth_head"], (key, result)
        assert result["pyth_equal"], key
        assert result["feature_dim"] == result["their_feature_dim"], key
        assert result["spread"] > 1e-2, (key, result)  # the comparison is not vacuous


@pytest.fixture(scope="module")
def quick_results() -> dict[str, dict[str, Any]]:
    return run_reference(QUICK)


def test_every_mvit_model_equals_pyslowfast_at_a_reduced_size(quick_results) -> None:
    check(quick_results, QUICK)


def test_registered_feature_dims_are_what_their_head_receives(quick_results) -> None:
    for item in QUICK:
        if "key" not in item:
            result = quick_results[f"{item['name']}@{item['num_frames']}x{item['crop']}"]
            with torch.device("meta"):
                ours = build_model(item["name"], num_frames=item["num_frames"], crop_size=item["crop"])
            assert ours.spec.feature_dim == ours.feature_dim == result["their_feature_dim"]
            assert len(ours.state_dict()) == result["keys"]


def test_mvitv2_l_equals_pyslowfast_at_a_reduced_size() -> None:
    """L (213 M parameters) once, in its own process: its SSv2 twin differs only in the classes (test_mvit.py)."""
    large = [case("mvitv2_l_40x3", "Kinetics/MVITv2_L_40x3_test", frames=2, crop=48)]
    results = run_reference(large)
    check(results, large)
    assert results["mvitv2_l_40x3@2x48"]["feature_dim"] == 1152


def test_mvitv2_s_and_rev_mvit_equal_pyslowfast_at_full_size() -> None:
    """The native input: 16 x 224 x 224 (about 1.2 s per clip and model on one core)."""
    full = [
        {**case("mvitv2_s_16x4", "Kinetics/MVITv2_S_16x4", frames=16, crop=224), "batch": 2},
        {**case("rev_mvit_b_16x4", "Kinetics/REV_MVIT_B_16x4_CONV", frames=16, crop=224), "batch": 2},
    ]
    check(run_reference(full), full)
