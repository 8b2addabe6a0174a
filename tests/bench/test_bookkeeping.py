"""`python -m pipeline.benchmark --bookkeeping N` at a small N: every command runs and does what it says."""

from __future__ import annotations

import h5py

from pipeline.bench.bookkeeping import SAMPLE, BookkeepingSettings, bench_bookkeeping, print_bookkeeping
from pipeline.outputs import latest_records
from pipeline.outputs.reader import scan


def test_bookkeeping_report_times_every_command_on_a_fabricated_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pipeline.bench.bookkeeping.SAMPLE", 5)
    report = bench_bookkeeping(BookkeepingSettings(12, store="packed", changed=3, workdir=tmp_path))
    assert SAMPLE > 5  # the sample was made small for this test
    steps = report["steps"]
    assert all(step["returncode"] == 0 for step in steps.values()), steps
    assert report["fabricate"]["failed"] == 3
    out = tmp_path / "packed-12" / "out"
    latest, _ = latest_records(out)
    assert len(latest) == 12 and all(r.final_outcome == "ok" for r in latest.values())  # the 3 redone
    assert steps["rerun_changed"]["bytes_added"] > 0
    assert steps["rerun_nothing_to_do"]["bytes_added"] < 8000  # one kept line and the run record only
    assert [v.key for v in scan([out]).videos] == sorted(latest)
    with h5py.File(out / "features.h5", "r") as h5:
        assert h5.attrs["num_videos"] == 12
    assert report["output_files"] <= 8  # a part, a manifest, a lock, features.h5, run records, shards
    assert report["header_probe_ms_per_video"]["threads_1"] > 0
    print_bookkeeping(report)
    printed = capsys.readouterr().out
    assert "rerun_nothing_to_do" in printed and "per 1000 videos" in printed
