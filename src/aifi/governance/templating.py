"""The Jinja2 environment for governance documents (HTML escaped, Markdown left as written)."""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, select_autoescape


@cache
def environment() -> Environment:
    """One environment per process: templates are read once and are immutable."""
    env = Environment(
        loader=PackageLoader("aifi.governance", "templates"),
        autoescape=select_autoescape(["html"], default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["duration"] = duration
    env.filters["cell"] = markdown_cell
    return env


def duration(seconds: float | None) -> str:
    """A duration as a person says it: '45 s', '5 min', '30 days'; None means no limit."""
    if seconds is None:
        return "kept until deleted (no automatic purge)"
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def markdown_cell(value: object) -> str:
    """A value that stays inside one Markdown table cell (pipes escaped, one line)."""
    return " ".join(str(value).split()).replace("|", "\\|")
