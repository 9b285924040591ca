"""Log set-up shared by every abgate command (light: `abgate flags` imports it too)."""

from __future__ import annotations

import logging
import sys

from abgate.state.secrets import redact

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Every line as formatted, tracebacks included, with the passwords this process has
    read and any password in a URL replaced by ***: whatever a library puts in an error
    message, a secret never reaches the log."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: str) -> None:
    """As logging.basicConfig: nothing when the root logger has a handler already."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
