"""describe_error: the one way an error becomes one line (logs, manifest records, the app's exit line)."""

from __future__ import annotations

import pytest

from pipeline.errors import describe_error


@pytest.mark.parametrize(
    ("error", "with_class", "without_class"),
    [
        (ValueError("bad frame 4"), "ValueError: bad frame 4", "bad frame 4"),
        (RuntimeError("\n  first line\nsecond line\n"), "RuntimeError: first line", "first line"),
        (MemoryError(), "MemoryError", "MemoryError"),
        (OSError("   \n "), "OSError", "OSError"),
    ],
)
def test_an_error_is_its_class_and_first_line(error, with_class, without_class):
    assert describe_error(error) == with_class
    assert describe_error(error, with_class=False) == without_class


def test_every_error_a_user_can_act_on_shares_one_base():
    """extract's one-line exit (status 2) catches PipelineError, so each of these reaches it as one line."""
    from pipeline.config import ConfigError
    from pipeline.consolidate import ConsolidateError
    from pipeline.errors import EXPECTED_ERRORS, PipelineError
    from pipeline.export import ExportError
    from pipeline.hardware import DeviceError
    from pipeline.inference import BatchMemoryError
    from pipeline.inspect import InspectError
    from pipeline.io import DecodeError
    from pipeline.launch import LaunchError
    from pipeline.outputs import LockError, OutputError
    from pipeline.run import RunError
    from pipeline.videolist import VideoListError
    from pipeline.weights import (
        CheckpointError,
        ChecksumError,
        DownloadError,
        WeightsError,
        WeightsNotFoundError,
    )

    for error in (
        CheckpointError,
        ConfigError,
        ConsolidateError,
        ExportError,
        BatchMemoryError,
        DeviceError,
        InspectError,
        DecodeError,
        LaunchError,
        LockError,
        OutputError,
        RunError,
        VideoListError,
        ChecksumError,
        DownloadError,
        WeightsError,
        WeightsNotFoundError,
    ):
        assert issubclass(error, PipelineError), error
        assert issubclass(error, EXPECTED_ERRORS)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_the_benchmark_on_a_missing_gpu_ends_in_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pipeline.benchmark", "--device", "cuda", "--seconds", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "hardware.device=cuda" in line]
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]


def test_a_reader_that_goes_away_is_not_an_error(tmp_path) -> None:
    import subprocess
    import sys

    script = (
        "import sys; from pipeline.errors import exit_status\n"
        "def main():\n"
        "    for i in range(100000):\n"
        "        print('line', i)\n"
        "    return 3\n"
        "sys.exit(exit_status(main, 'prog'))\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout is not None
    writer.stdout.readline()
    writer.stdout.close()  # as `| head -1` does
    _, stderr = writer.communicate(timeout=60)
    assert writer.returncode == 0 and b"internal error" not in stderr and b"Traceback" not in stderr


def test_the_weights_list_read_in_part_ends_quietly(tmp_path) -> None:
    """`python -m pipeline.weights --list | grep -q NAME` (the wheel check) closes the pipe at the first
    match: the rest of the list is not an error."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "pipeline.weights", "--list", "--cache", str(tmp_path)]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert writer.stdout is not None
    writer.stdout.read(10)
    writer.stdout.close()
    _, stderr = writer.communicate(timeout=120)
    assert writer.returncode == 0 and b"Traceback" not in stderr, stderr
