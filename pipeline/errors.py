"""The one way to put an error in one line: log lines, manifest records and the app's exit message."""

from __future__ import annotations


def describe_error(error: BaseException, *, with_class: bool = True) -> str:
    """The error's class and the first line of its message (`ValueError: bad frame 4`).

    `with_class=False`: the message's first line alone (the class name when the message is empty).
    """
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    if not with_class:
        return line or type(error).__name__
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


__all__ = ["describe_error"]
