"""params.yaml errors: one line per bad key, `origin: dotted.key: reason (got value)`."""

from __future__ import annotations

from pydantic import (
    ValidationError,
)

from squeeze.config.locations import hide_userinfo
from squeeze.config.sections import ARCH_TAGS, NAME_PATTERN


class ParamsError(ValueError):
    """params.yaml (or a profile, or a flow parameter) does not match the schema."""


def format_errors(err: ValidationError, origin: str) -> str:
    """One line per problem: `origin: dotted.key: reason (got value)`."""
    lines = []
    for e in err.errors():
        if not e["loc"]:  # a whole-file check (the candidate graph) names its keys itself
            lines.append(f"{origin}: {e['msg'].removeprefix('Value error, ')}")
            continue
        *path, last = e["loc"]
        if e["type"] == "string_too_short" and e["input"] == "":  # a cleared UI form field
            e["msg"] = "empty; give a value, or null where the key allows none"
        if last == "[key]":  # a bad name under distill/prune/quantize/merge: the key itself
            e["msg"] = f"name must match {NAME_PATTERN}"
            path = path[:-1]
        key = ".".join(str(p) for p in (*path, last) if p != "[key]" and p not in ARCH_TAGS)
        # a whole section's check names its key itself; its "input" is the whole section
        got = (
            ""
            if e["type"] == "missing" or isinstance(e["input"], dict)
            else f" (got {shown(e['input'])!r})"
        )
        lines.append(f"{origin}: {key}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "\n".join(lines)


def shown(value: object) -> object:
    """A value as an error may echo it: a string without the `user:secret@` of a URL in it."""
    return hide_userinfo(value) if isinstance(value, str) and "://" in value else value
