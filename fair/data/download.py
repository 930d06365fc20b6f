"""Resumable, checksummed downloads over HTTP(S) for `fair data prepare`.

A partial download stays as `<name>.part` and resumes with an HTTP Range request; a URL that answers
with an error or a web page instead of the file moves on to the next URL.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import requests
from tqdm import tqdm

from fair.data.disk import check_space, disk_full, human_bytes

log = logging.getLogger(__name__)

CHUNK = 1 << 20
ATTEMPTS = 3                  # tries per URL for a dropped connection (each resumes where the last stopped)
TIMEOUT = (20, 120)           # (connect, read) seconds


def mirror_url(mirror: str, dataset: str, name: str) -> str:
    """Where a --mirror keeps a dataset's file: <mirror>/<dataset>/<file name>."""
    return f"{mirror.rstrip('/')}/{dataset}/{name}"


def resolve_mirror(mirror: str | None) -> str | None:
    """--mirror, else $FAIR_DATA_MIRROR, else None."""
    return mirror or os.environ.get("FAIR_DATA_MIRROR") or None


def http_session():
    """A requests session that says who is asking."""
    s = requests.Session()
    s.headers["User-Agent"] = "fair-data-prepare/1 (+python-requests)"
    return s


def _content_total(resp, have: int) -> int | None:
    """The full size of the file a (possibly partial) response belongs to, if the server says."""
    rng = resp.headers.get("Content-Range", "")
    if "/" in rng and rng.rsplit("/", 1)[1].strip().isdigit():
        return int(rng.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _looks_like_a_web_page(resp, name: str) -> bool:
    """A login, quota or error page served instead of the file (Google Drive, captive portals)."""
    ctype = resp.headers.get("Content-Type", "")
    return ctype.startswith("text/html") and not name.endswith((".html", ".htm"))


def _stream(session, url: str, part: Path, name: str, size_hint: int | None, progress: bool) -> None:
    """One GET of `url` into `part`, resuming from its current size with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as resp:
        if resp.status_code == 416 and have:           # nothing left to send: the part may be complete
            total = _content_total(resp, 0)
            if total == have:
                return
            part.unlink()
            raise ConnectionError("the server refused to resume; starting over")
        resp.raise_for_status()
        if _looks_like_a_web_page(resp, name):
            raise _NotTheFile("the server answered with a web page instead of the file "
                              "(a sign-in, quota or error page)")
        if have and resp.status_code != 206:           # the server ignored Range: start over
            have = 0
        total = _content_total(resp, have)
        check_space(part.parent, (total - have) if total else size_hint, name)
        log.info("downloading %s from %s%s", name, url, f" (resuming at {human_bytes(have)})" if have else "")
        try:
            with open(part, "ab" if have else "wb") as fh, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                    leave=False, disable=None if progress else True) as bar:
                for chunk in resp.iter_content(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise disk_full(e, name, part) from None
            raise
    got = part.stat().st_size
    if total and got < total:
        raise ConnectionError(f"the connection closed after {human_bytes(got)} of {human_bytes(total)}")


class _NotTheFile(Exception):
    """The URL answered, but not with the file (try the next URL, never retry this one)."""


def download(session, urls: list[str], dest: Path, size_hint: int | None, progress: bool) -> str:
    """Download the first of `urls` that works into `dest` (via `<dest>.part`); return the URL used.

    Dropped connections are retried with a Range request from where they stopped; a URL that refuses
    (HTTP error, a web page instead of the file) moves on to the next URL. Raises ConnectionError with
    what each URL answered when none worked.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _stream(session, url, part, dest.name, size_hint, progress)
                os.replace(part, dest)
                return url
            except (requests.HTTPError, _NotTheFile) as e:
                code = getattr(getattr(e, "response", None), "status_code", None)
                errors.append(f"{url}: {f'HTTP {code}' if code else e}")
                if code is not None and code >= 500 and attempt < ATTEMPTS:
                    time.sleep(0.5 * attempt)
                    continue
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    ConnectionError) as e:
                if attempt < ATTEMPTS:
                    log.info("%s: %s; retrying (%d/%d)", dest.name, type(e).__name__, attempt, ATTEMPTS - 1)
                    time.sleep(0.2 * attempt)
                    continue
                errors.append(f"{url}: {type(e).__name__}")
    raise ConnectionError("; ".join(errors) or "no URL to try")

