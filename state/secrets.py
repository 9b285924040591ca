"""Secrets (store passwords), read when a connection is made and never shown.

A password comes from an environment variable or a file named in the config (`SecretRef`);
the file is read again for every new connection, so rotating it (a Kubernetes Secret
volume, Vault agent) takes effect at the next reconnect without a restart. Every value read
is remembered here so that `redact` can take it out of any text that is about to be shown
(log lines, error messages), together with passwords written in URLs."""

from __future__ import annotations

import os
import re
from pathlib import Path

from abgate.config.errors import AbgateError
from abgate.config.model import SecretRef

# Passwords read in this process, longest first when redacting. Process-wide on purpose:
# the log formatter that redacts has no other way to know them.
_SEEN: set[str] = set()
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_MIN_REDACTED = 4  # shorter values would mask ordinary words


class SecretUnavailable(AbgateError):
    """The secret cannot be read: what is missing, never the value."""


def read_secret(ref: SecretRef) -> str:
    if ref.env is not None:
        value = os.environ.get(ref.env, "")
        if not value:
            raise SecretUnavailable(f"environment variable {ref.env} is not set")
    else:
        assert ref.file is not None
        try:
            value = Path(ref.file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise SecretUnavailable(f"cannot read the file {ref.file}: {reason}") from None
        if not value:
            raise SecretUnavailable(f"the file {ref.file} is empty")
    remember(value)
    return value


def remember(value: str) -> None:
    """A secret this process holds (a password from a URL, too), for `redact`."""
    if len(value) >= _MIN_REDACTED:
        _SEEN.add(value)


def redact(text: str) -> str:
    """`text` with every known secret and every URL password replaced by ***."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    for secret in sorted(_SEEN, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text
