"""The wheel ships every module of pipeline/ and every config of conf/ (as pipeline/conf), and runs installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "pipeline", "conf")  # what the build reads


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a clean copy of the sources (no stale build/ of the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist)]
    done = subprocess.run([*build, str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (built,) = dist.glob("*.whl")
    return built


def _relative_files(root: Path, pattern: str) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob(pattern) if "__pycache__" not in p.parts}


def test_wheel_ships_every_config_and_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = _relative_files(REPO / "conf", "*.yaml")
    assert {"config.yaml", "data/demo.yaml", "hardware/slurm.yaml", "model/slowfast_tiny.yaml"} <= configs
    missing = {f"pipeline/conf/{c}" for c in configs} - names
    assert not missing, f"configs missing from the wheel: {sorted(missing)}"
    assert "pipeline/conf/__init__.py" in names  # Hydra's pkg:// source needs it
    modules = {f"pipeline/{m}" for m in _relative_files(REPO / "pipeline", "*.py")}
    missing = modules - names
    assert not missing, f"modules missing from the wheel (add their package to pyproject): {sorted(missing)}"
    assert "pipeline/assets/kinetics400_labels.txt" in names
    stray = sorted(n for n in names if not n.startswith(("pipeline/", "slowfast_feature_extractor-")))
    assert not stray, f"files outside the package: {stray}"


def test_wheel_requires_opencv_with_the_contrib_modules_only(wheel: Path) -> None:
    """TV-L1 flow is a contrib module; the plain wheel installs the same cv2 package, so it must not be
    required beside it."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        ]
    names = {r.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip().lower() for r in requires}
    assert "opencv-contrib-python-headless" in names
    assert not names & {"opencv-python-headless", "opencv-python", "opencv-contrib-python"}


def test_installed_wheel_composes_the_slurm_config_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    where = "import pipeline, pipeline.conf; print(pipeline.__file__); print(pipeline.conf.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", where], cwd=run_dir, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(site / "pipeline" / "__init__.py"),
        str(site / "pipeline" / "conf" / "__init__.py"),
    ]

    show = ["-m", "pipeline.extract", "data=demo", "model=slowfast_tiny", "hardware=slurm", "--cfg", "job"]
    done = subprocess.run(
        [sys.executable, *show], cwd=run_dir, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "launcher: slurm" in done.stdout and "name: slowfast_tiny" in done.stdout
    assert sorted(p.name for p in run_dir.iterdir()) == []  # --cfg writes nothing


def test_checkout_finds_its_configs_without_any_install() -> None:
    # -S: no site-packages, so no editable-install finder; the checkout's pipeline/ alone must find conf/.
    where = "import pipeline.conf; print(pipeline.conf.__file__)"
    done = subprocess.run(
        [sys.executable, "-S", "-c", where], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(REPO / "conf" / "__init__.py")
