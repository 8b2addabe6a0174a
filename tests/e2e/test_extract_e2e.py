"""End to end through `python -m pipeline.extract` on generated videos (tiny model, random weights)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline import synth
from pipeline.api import FeatureExtractor
from pipeline.outputs import file_sha256, read_manifest
from tests.helpers import run_extract

ARGS = (
    "model=slowfast_tiny",
    "model.checkpoint=random",
    "data=custom",
    "data.video_ext=.avi",
    "data.fps=30",
    "data.stride=4",
    "hardware.batch_size=3",
)


@pytest.fixture(scope="module")
def first_run(video_root, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    done = run_extract(cwd, *ARGS, f"data.root={video_root}")
    out = cwd / "outputs" / "custom" / "slowfast_tiny_8x1_s4_fps30"
    return cwd, out, done


def test_good_videos_have_features_and_bad_one_is_recorded(first_run, video_root):
    cwd, out, done = first_run
    assert done.returncode == 1, done.stderr[-3000:]
    names = sorted(str(p.relative_to(out / "features")) for p in (out / "features").rglob("*.npy"))
    assert names == ["a.b_8.npy", "frames_clip_8.npy", "short_8.npy", "sub/old_8.npy", "sub/vp9_8.npy"]
    records, problems = read_manifest(out / "manifests" / "shard-0-of-1.jsonl")
    assert not problems
    by_key = {r["key"]: r for r in records}
    assert len(records) == 6  # the duplicate a.b.mp4 is processed once
    assert by_key["broken"]["status"] == "failed"
    assert "broken.mp4" in by_key["broken"]["error"] and "\n" not in by_key["broken"]["error"]
    assert not (out / "features" / "broken_8.npy").exists()
    ok = by_key["a.b"]
    assert ok["status"] == "ok" and ok["sha256"] == file_sha256(out / ok["output"]) and ok["dim"] == 144
    log = done.stderr + done.stdout
    assert "FAILED broken.mp4" in log and "summary: 5 ok, 1 failed, 0 skipped" in log
    assert "Traceback" not in log


def test_run_is_consolidated_into_hdf5(first_run):
    import h5py

    _, out, _ = first_run
    with h5py.File(out / "features.h5", "r") as h5:
        assert np.array_equal(h5["sub/old/features"][()], np.load(out / "features" / "sub" / "old_8.npy"))
        assert h5["a.b/timestamps"].shape == (15, 3)


def test_sidecar_records_timestamps_and_settings(first_run):
    _, out, _ = first_run
    features = np.load(out / "features" / "a.b_8.npy")
    side = json.loads((out / "features" / "a.b_8.json").read_text())
    # 2 s at 30 fps = 60 frames; sliding T=8 stride 4 with zero pad: one row per 4 frames
    assert features.shape == (15, 144) and features.dtype == np.float32
    assert side["rows"] == 15 and side["frames"] == 60 and side["fps"] == 30
    stamps = np.array(side["timestamps"])
    assert np.allclose(stamps[0], [0, 8 / 30, 4 / 30]) and np.allclose(stamps[1, 0], 4 / 30)
    assert stamps[-1, 1] == pytest.approx(2.0)
    assert side["settings"]["random_weights"] is True and side["checkpoint"]["random"] is True
    assert side["settings"]["num_frames"] == 8 and side["settings"]["stride"] == 4
    assert side["config"]["model"]["name"] == "slowfast_tiny"
    short = json.loads((out / "features" / "short_8.json").read_text())
    assert short["rows"] == 2  # 6 frames: shorter than a clip still gives rows (zero padding)


def test_rerun_of_the_same_command_skips_finished_videos(first_run, video_root):
    cwd, out, _ = first_run
    before = {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.npy")}
    done = run_extract(cwd, *ARGS, f"data.root={video_root}")
    assert done.returncode == 1  # the broken video is retried and fails again
    assert "summary: 0 ok, 1 failed, 5 skipped" in done.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.npy")} == before
    runs = list((out / "runs").glob("*.json"))
    assert len(runs) == 2 and json.loads(runs[0].read_text())["totals"]["ok"] in (0, 5)


def test_python_api_matches_the_files(first_run, video_root):
    _, out, _ = first_run
    fx = FeatureExtractor("slowfast_tiny", checkpoint="random", fps=30, stride=4, batch_size=1)
    features, timestamps = fx.extract(video_root / "a.b.mp4")
    assert np.allclose(features, np.load(out / "features" / "a.b_8.npy"), rtol=1e-5, atol=1e-6)
    side = json.loads((out / "features" / "a.b_8.json").read_text())
    assert np.allclose(timestamps, side["timestamps"], atol=1e-6)


def test_bad_inputs_each_fail_alone(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    synth.write_video(root / "good.mp4", seconds=0.5)
    (root / "empty.mp4").write_bytes(b"")
    synth.write_random_bytes(root / "random.mp4", 2000)
    synth.write_audio_only(root / "audio.m4a")
    synth.write_video(root / "full.mp4", seconds=3.0, size=(160, 120))
    synth.write_truncated_copy(root / "full.mp4", root / "truncated.mp4", 0.3)
    synth.write_frame_folder(root / "frames_bad", 5)
    (root / "frames_bad" / "frame_0000000003.jpg").write_text("not an image")
    (tmp_path / "outside.mp4").write_bytes(b"x")
    (root / "video_list.csv").write_text(
        "good.mp4\nmissing.mp4\nempty.mp4\nrandom.mp4\naudio.m4a\ntruncated.mp4\nframes_bad\n../outside.mp4\n/etc/passwd\n"
    )
    done = run_extract(
        tmp_path,
        "model=slowfast_tiny",
        "model.checkpoint=random",
        "data=custom",
        f"data.root={root}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert done.returncode == 1
    records, _ = read_manifest(tmp_path / "out" / "manifests" / "shard-0-of-1.jsonl")
    status = {r["path"]: (r["status"], r["error"]) for r in records}
    assert status["good.mp4"][0] == "ok"
    for bad in (
        "missing.mp4",
        "empty.mp4",
        "random.mp4",
        "audio.m4a",
        "frames_bad",
        "../outside.mp4",
        "/etc/passwd",
    ):
        assert status[bad][0] == "failed", bad
        assert status[bad][1] and "\n" not in status[bad][1], bad
    # truncated: either failed, or kept with what decoded -- the manifest says which
    assert status["truncated.mp4"][0] in ("ok", "failed")
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "out").rglob("*.tmp-*"))
    assert sorted(p.name for p in (tmp_path / "out" / "features").rglob("*.npy")) == [
        p
        for p in ["good_8.npy", "truncated_8.npy"]
        if p != "truncated_8.npy" or status["truncated.mp4"][0] == "ok"
    ]


def test_rows_keep_frame_order(tmp_path):
    """Centered windows with stride 1 give one row per frame; timestamps follow the frames."""
    root = tmp_path / "r"
    synth.write_video(root / "v.mp4", seconds=1.0, fps=20)
    fx = FeatureExtractor("slowfast_tiny", checkpoint="random", window="centered", stride=1, pad="edge")
    features, timestamps = fx.extract(root / "v.mp4")
    assert features.shape[0] == 20
    assert np.allclose(timestamps[:, 2][1:-1], np.arange(1, 19) / 20, atol=1e-6)
    assert np.all(np.diff(timestamps[:, 0]) >= 0)


def test_logits_and_top5_when_asked(video_root, tmp_path):
    out = tmp_path / "out"
    done = run_extract(
        tmp_path,
        "model=slow_tiny",
        "model.checkpoint=random",
        "data=custom",
        "output.logits=true",
        f"data.root={video_root}",
        f"output_dir={out}",
        "output.hdf5=false",
    )
    assert done.returncode == 1  # broken.mp4
    logits = np.load(out / "features" / "a.b_4.logits.npy")
    side = json.loads((out / "features" / "a.b_4.json").read_text())
    assert logits.shape == (side["rows"], 10)
    assert side["logits"] == {"logits": "features/a.b_4.logits.npy"}  # the sidecar names its logits file
    top = side["top5"]["logits"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).mean(0)
    assert [t[0] for t in top] == list(np.argsort(-probs)[:5])
    assert top[0][2] == pytest.approx(probs.max(), abs=1e-6)


def test_truncated_file_that_decodes_partly_is_kept_and_marked_partial(tmp_path):
    root = tmp_path / "root"
    synth.write_video(root / "full.mkv", seconds=4.0, size=(96, 64))
    synth.write_truncated_copy(root / "full.mkv", root / "cut.mkv", 0.5)
    (root / "video_list.csv").write_text("full.mkv\ncut.mkv\n")
    out = tmp_path / "out"
    done = run_extract(
        tmp_path,
        "model=slowfast_tiny",
        "model.checkpoint=random",
        "data=custom",
        f"data.root={root}",
        f"output_dir={out}",
        "output.hdf5=false",
    )
    records = {r["key"]: r for r in read_manifest(out / "manifests" / "shard-0-of-1.jsonl")[0]}
    assert records["full"]["status"] == "ok" and records["full"]["partial"] is False
    cut = records["cut"]
    assert done.returncode == (0 if cut["status"] == "ok" else 1)
    if cut["status"] == "ok":  # FFmpeg stopped quietly: kept, and the manifest says it is partial
        assert cut["partial"] is True and cut["frames"] < 0.95 * 120
        assert "PARTIAL cut.mkv" in done.stdout + done.stderr


# --- errors: what a user can act on is one line (exit 2); a bug of ours shows its traceback (exit 3) ---

BUGGY_APP = """
import runpy
import sys
from pipeline import config

def validate_with_a_bug(*args, **kwargs):
    raise {error}("internal state went wrong")

config.validate = validate_with_a_bug  # bound by pipeline.extract when runpy imports it below
sys.argv = ["pipeline.extract", *{overrides!r}]
runpy.run_module("pipeline.extract", run_name="__main__", alter_sys=True)
"""


def run_buggy_app(cwd, error: str, *overrides: str) -> subprocess.CompletedProcess:
    """The app with `config.validate` replaced by one that raises `error` (a bug, not a user's mistake)."""
    script = cwd / "buggy_app.py"
    script.write_text(BUGGY_APP.format(error=error, overrides=list(overrides)))
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("error", ["RuntimeError", "ValueError", "KeyError"])
def test_a_bug_shows_its_whole_traceback(tmp_path, error):
    (tmp_path / "video_list.csv").write_text("a.mp4\n")
    done = run_buggy_app(
        tmp_path,
        error,
        "model=slowfast_tiny",
        "model.checkpoint=random",
        "data=custom",
        f"data.root={tmp_path}",
    )
    text = done.stdout + done.stderr
    assert done.returncode == 3, text[-3000:]
    assert "Traceback (most recent call last)" in text
    assert "in validate_with_a_bug" in text and "internal state went wrong" in text
    assert "internal error (please report it with this traceback)" in text


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (("data=custom",), "data.root: "),  # missing: no data.root given
        (("model.name=nosuch",), "model.name: unknown model 'nosuch'"),
        (
            ("model.feature_layer=nope",),
            "model.feature_layer: 'nope' is not a feature layer of slowfast_tiny",
        ),
        (("data.resize.mode=short_side", "data.resize.crop=0"), "data.resize.crop: must be >= 1 (got 0)"),
    ],
)
def test_a_users_mistake_is_one_line(tmp_path, overrides, line):
    (tmp_path / "video_list.csv").write_text("a.mp4\n")
    root = () if overrides == ("data=custom",) else ("data=custom", f"data.root={tmp_path}")
    done = run_extract(tmp_path, "model=slowfast_tiny", "model.checkpoint=random", *root, *overrides)
    text = done.stdout + done.stderr
    assert done.returncode == 2, text[-3000:]
    (error,) = [entry for entry in text.splitlines() if "[ERROR]" in entry]
    assert "ConfigError: " + line in error
    assert "Traceback" not in text
