"""A real single-node Slurm cluster for the tests in this folder (scripts/slurm_local.sh), no mocks.

The session fixture `slurm_cluster` installs Slurm when it is missing (root + apt-get), starts the
daemons, and always stops them at the end. Where Slurm cannot be had, the tests skip with the reason;
with CI=true or REQUIRE_SLURM=1 they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_local.sh"


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster."""

    partition: str = "debug"
    fake_gpus: int = 2


def slurm_required() -> bool:
    """Whether a missing Slurm is a failure (CI, REQUIRE_SLURM=1) rather than a skip."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("REQUIRE_SLURM", "").strip() == "1"


def _unavailable(reason: str) -> None:
    if slurm_required():
        pytest.fail(
            f"Slurm test cluster required (CI/REQUIRE_SLURM) but unavailable: {reason}", pytrace=False
        )
    pytest.skip(f"no Slurm test cluster: {reason}")


def _script(action: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Install (if needed) and start the local cluster; stop its daemons at the end, whatever happened."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        _unavailable("needs Linux")
    if os.geteuid() != 0:
        _unavailable(f"scripts/slurm_local.sh starts the daemons as root; running as uid {os.geteuid()}")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        _unavailable("sbatch is not installed and apt-get is not available to install it")
    done = _script("install", timeout_s=900)  # a quick no-op when every package is there
    if done.returncode != 0:
        _unavailable(f"installing Slurm failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    try:
        done = _script("start", timeout_s=300)
        if done.returncode != 0:
            _unavailable(f"starting Slurm failed: {(done.stderr or done.stdout).strip()[-2000:]}")
        yield SlurmCluster()
    finally:
        _script("stop", timeout_s=180)
