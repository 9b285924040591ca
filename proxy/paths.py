"""The request path a route is matched on must be the path the upstream acts on.

Routes match the decoded path, while the proxy forwards the raw request-target; an
upstream that decodes `%2e` and removes dot-segments would then serve `/raw/%2e%2e/secret` as
`/secret`, outside the `/raw/` prefix the route allowed. So a path with dot-segments (plain
or percent-encoded) is normalised once (RFC 3986 §5.2.4), and that one form is both matched
and forwarded. An encoded slash in such a path is refused: whether `%2F` is a separator is up
to the upstream, so no prefix check could be sound. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from abgate.config.errors import AbgateError

_ENCODED_DOT = re.compile("%2e", re.IGNORECASE)
_ENCODED_SLASH = re.compile("%2f", re.IGNORECASE)


class PathRefused(ValueError, AbgateError):
    """A request-target abgate will not forward (400)."""


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: `/a/b/../c/./d` -> `/a/c/d`."""
    output: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(output) > 1:
                output.pop()
        elif segment != ".":
            output.append(segment)
    if path.endswith(("/.", "/..")):
        output.append("")
    return "/".join(output) or "/"


def normalize_target(raw_target: str) -> tuple[str, str] | None:
    """(decoded path to match routes on, request-target to forward), or None when the target
    needs nothing (the common case, checked first). Raises PathRefused."""
    path, question, query = raw_target.partition("?")
    if "/." not in path and "%" not in path:
        return None
    lowered = path.lower()
    decoded_dots = _ENCODED_DOT.sub(".", path) if "%2e" in lowered else path
    if "%2f" in lowered:
        # Whatever the upstream makes of %2F, the path must not hold a dot-segment then.
        decoded = _ENCODED_SLASH.sub("/", decoded_dots)
        if remove_dot_segments(decoded) != decoded:
            raise PathRefused("an encoded slash (%2F) in a path with dot-segments")
    if "/." not in decoded_dots:
        return None  # percent-escapes, but no dot-segment among them
    normalized = remove_dot_segments(decoded_dots)
    if normalized == path:
        return None
    return unquote(normalized), normalized + question + query
