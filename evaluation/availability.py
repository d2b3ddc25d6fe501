"""A metric that cannot be computed here is reported as the string "unavailable: <reason>", never as a number."""

from __future__ import annotations

PREFIX = "unavailable: "


def unavailable(reason: str) -> str:
    return PREFIX + " ".join(str(reason).split())  # one line, whatever the exception text looked like


def is_unavailable(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)
