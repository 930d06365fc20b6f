"""The one error type of `results`: bad input or a broken store, printed by the CLI as one line."""
from __future__ import annotations

import os
import re

# Environment variables whose values must never appear in a message, a log line or a table.
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
# the `user:password@` of a URL (an endpoint such as http://key:secret@host:8333)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class ResultsError(Exception):
    """Bad input or an unusable store; the message says what is wrong and how to fix it, in one line."""

    user_error = True  # `fair` prints any exception carrying this flag as `fair: error: ...` and exits 2

    def __init__(self, message: str):
        super().__init__(scrub(" ".join(str(message).split())))


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Return `text` with every known credential value (env and `secrets`) and the `user:password@` of any
    URL replaced by `***`."""
    values = [os.environ.get(name) for name in _SECRET_ENV] + list(secrets)
    for value in sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True):
        text = text.replace(value, "***")
    return _URL_USERINFO.sub("***@", text)
