"""URLs the descriptions commands fetch from or post to: shown without secrets, loopback recognised."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from fair.errors import FairError


def requests_module():
    """The requests package, imported when a command first talks to the network: every run imports this
    package (through fair.text to read its descriptions) and never needs it."""
    try:
        import requests
    except ModuleNotFoundError:
        raise FairError("this command needs the requests package: pip install requests") from None
    return requests


def redact_url(url: str) -> str:
    """A URL without credentials or query string (safe to print and to record)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_url(src: str) -> bool:
    return re.match(r"^https?://", src, re.IGNORECASE) is not None


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
