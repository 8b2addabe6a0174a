"""`python -m pipeline.benchmark --transport` on a tiny model: every row measured, float clips 4x uint8's."""

from __future__ import annotations

from pipeline.bench.media import generated_video
from pipeline.bench.settings import Settings
from pipeline.bench.transport import bench_transport


def test_transport_report_compares_uint8_and_float_clips(tmp_path):
    video = generated_video(tmp_path, (320, 240), 30.0, 2.0)
    s = Settings(
        model="slowfast_tiny", num_frames=8, sampling_rate=1, stride=8, size=64, batch_size=2, repeats=2
    )
    report = bench_transport(s, video, decode_frames=20, repeats=2, sizes=(64, 48))
    rows = {(r["dtype"], r["size"]): r for r in report["rows"]}
    assert set(rows) == {("uint8", 64), ("uint8", 48), ("float32", 64), ("float32", 48)}
    for size in (64, 48):
        uint8, float32 = rows[("uint8", size)], rows[("float32", size)]
        assert float32["clip_mb"] == 4 * uint8["clip_mb"] == 4 * 8 * size * size * 3 / 2**20
        assert (
            uint8["interpolation"] == "opencv_linear_uint8" and float32["interpolation"] == "float_bilinear"
        )
        for row in (uint8, float32):
            assert row["decode_resize_ms_per_frame"] > 0 and row["clips_per_s"] > 0
            assert row["slot_mb"] >= row["clip_mb"] and row["slots_per_worker"] >= 2
            assert row["peak_worker_pss_mb"] > 0
    e2e = report["e2e"]
    assert e2e["uint8"]["clips"] == e2e["float32"]["clips"] > 0
    assert e2e["float32_vs_uint8"] > 0
