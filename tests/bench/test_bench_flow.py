"""The optical-flow benchmark (`python -m pipeline.benchmark --flow`): what it measures and the cost
arithmetic (no timed assertions: speeds depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.bench.cli import main
from pipeline.bench.flow import SETTINGS, bench_flow, dataset_cost
from pipeline.io import TVL1Params
from pipeline.synth import write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flow_bench") / "v.mp4"
    write_video(path, size=(64, 48), fps=30, seconds=0.2)  # 6 frames
    return path


def test_dataset_cost_is_seconds_per_frame_times_frames() -> None:
    cost = dataset_cost(1.5, 2_000_000, workers=(1, 100))
    assert cost["core_hours"] == pytest.approx(1.5 * 2_000_000 / 3600)
    assert cost["core_days"] == pytest.approx(cost["core_hours"] / 24)
    assert cost["wall_days_with_workers"] == {
        1: pytest.approx(cost["core_days"]),
        100: pytest.approx(cost["core_days"] / 100),
    }


def test_bench_flow_measures_both_settings_and_the_source(video: Path) -> None:
    assert SETTINGS["dense_flow"] == TVL1Params()
    assert (
        SETTINGS["opencv_cpu_defaults"].inner_iterations,
        SETTINGS["opencv_cpu_defaults"].median_filtering,
    ) == (30, 5)
    report = bench_flow(video, pairs=2, repeats=1, dataset_frames=1000, size=(48, 36))
    assert report["pairs"] == 2 and report["size"] == [48, 36]
    for row in report["tvl1"].values():
        assert row["s_per_pair"] > 0 and row["pairs_per_s"] == pytest.approx(1 / row["s_per_pair"])
    assert report["flow_source"]["fields"] == 2 and report["flow_source"]["cpu_s_per_field"] >= 0
    assert report["dataset"]["core_hours"] == pytest.approx(
        report["flow_source"]["cpu_s_per_field"] * 1000 / 3600
    )


def test_cli_flow_json(video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--flow", "--video", str(video), "--flow-pairs", "1", "--repeats", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["size"] == [340, 256] and report["pairs"] == 1
    assert set(report["tvl1"]) == {"dense_flow", "opencv_cpu_defaults"}
    assert report["dataset"]["frames"] == 2_000_000
