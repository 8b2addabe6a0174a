"""The OpenMP spin count the package sets before torch loads (threads spin briefly, then sleep)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SHOW = (
    "import pipeline, os, torch; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
)


def _run(code: str, **given: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(given)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "10000 None"),
        ({"GOMP_SPINCOUNT": "300000"}, "300000 None"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "None ACTIVE"),  # the user's policy is not overridden by a count
    ],
)
def test_spin_count_is_short_unless_the_user_chose(given, expected):
    assert _run(SHOW, **given) == expected


def test_a_torch_loaded_first_is_left_alone():
    code = "import torch, pipeline, os; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _run(code) == "None"  # too late to matter: no setting that would mislead
