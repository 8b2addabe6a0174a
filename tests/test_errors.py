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
