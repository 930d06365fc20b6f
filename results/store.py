"""Where bytes live: a local folder or `s3://bucket/prefix` on any S3-compatible endpoint.

Every write is atomic: a local file is written next to its final name and renamed into place; an S3 object
is one PUT of the complete bytes (never multipart), so a reader sees the whole object or none.
S3 calls that fail for a transient reason (connection refused, timeout, 5xx, throttling) are retried with
exponential backoff, then fail loudly with a `ResultsError` that names the key, never a credential.
Credentials come only from the standard AWS chain (env, shared files, instance or workload identity); a
`user:password@` in the endpoint is dropped, never sent or shown.

This is the one storage layer of the project: `results` reads and writes its tables here, and `tune` writes
its sweep records and state here (a sweep's own checkpoints and experiment state are Ray's).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

from results.errors import ResultsError, scrub

log = logging.getLogger(__name__)
T = TypeVar("T")
_UMASK = os.umask(0o022)     # read once (os.umask can only be read by setting it): files get open()'s mode
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
# a URI scheme (two characters at least, so that a Windows drive `C:/` stays a path) and the slashes after it
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):(?P<slashes>/*)")

_RETRYABLE_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                    "RequestTimeout", "RequestTimeoutException", "Throttling", "ThrottlingException",
                    "RequestLimitExceeded", "TooManyRequestsException"}
# what decides who a client is besides its endpoint settings: a change in any of them needs a new client
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()
_AUTH_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
               "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


class MissingKey(ResultsError):
    """The key does not exist (e.g. a concurrent compaction removed it after it was listed)."""


@dataclass
class S3Options:
    """How to reach an S3-compatible endpoint. Unset fields come from the environment:
    endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, region from AWS_REGION / AWS_DEFAULT_REGION."""

    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    tries: int = 5
    backoff_s: float = 0.25          # first wait; doubles each try (with jitter), capped at 8 s
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    extra: dict = field(default_factory=dict)

    def resolved_endpoint(self) -> str | None:
        """The endpoint URL (None: AWS's own), https:// when it names no scheme, and never with the
        `user:password@` an endpoint may carry: credentials come only from the AWS chain."""
        raw = self.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if not raw:
            return None
        parts = urlsplit(raw if "://" in raw else f"https://{raw}")
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), parts.query, ""))

    def resolved_region(self, default: str | None = "us-east-1") -> str | None:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or default


def s3_client(o: S3Options):
    """The boto3 S3 client for these settings and the environment's credentials, one per process: making
    one costs ~140 ms of CPU (botocore loads its service model), a PUT through it ~5 ms, and a sweep's driver
    writes a record per trial stopped early (bench.scale). boto3's clients are safe to share between
    threads; a forked child makes its own."""
    key = (os.getpid(), o.resolved_endpoint(), o.resolved_region(), o.path_style, o.connect_timeout_s,
           o.read_timeout_s, *(os.environ.get(v) for v in _CREDENTIAL_VARS))
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            import boto3
            from botocore.config import Config

            config = Config(retries={"max_attempts": 1, "mode": "standard"},  # we retry ourselves, visibly
                            connect_timeout=o.connect_timeout_s, read_timeout=o.read_timeout_s,
                            s3={"addressing_style": "path" if o.path_style else "auto"})
            _CLIENTS[key] = boto3.session.Session().client(
                "s3", endpoint_url=o.resolved_endpoint(), region_name=o.resolved_region(), config=config)
        return _CLIENTS[key]


def _shown_endpoint(endpoint: str | None) -> str:
    return endpoint or "the default AWS S3 endpoint"


class Store:
    """Bytes under a root, addressed by '/'-separated keys relative to it."""

    uri: str

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (relative to the root), sorted; directory markers are left out."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        """The bytes of `key`; a missing key is a ResultsError."""
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        """Write `data` to `key` atomically (readers see all of it or nothing)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove `key`; a key that is already gone is fine."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        """Whether `key` exists."""
        raise NotImplementedError

    def delete_folder(self, prefix: str) -> None:
        """Remove every key under the folder `prefix` (and, in S3, its directory markers); a folder that is
        already gone is fine."""
        raise NotImplementedError

    def describe(self, key: str = "") -> str:
        """The full location of `key`, for messages."""
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri

    def probe(self, prefix: str = "") -> None:
        """Write, read back and delete a marker under `prefix`: a missing bucket or folder, an unreachable
        endpoint, bad credentials or no write permission fail here, as one ResultsError, before any work."""
        key = f"{prefix.strip('/')}/.probe-{uuid.uuid4().hex[:8]}".lstrip("/")
        self.put(key, b"storage probe\n")
        self.get(key)
        self.delete(key)


class LocalStore(Store):
    """A folder on the local filesystem."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):  # temp files of writes in progress start with '.'
                    keys.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(keys)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise MissingKey(f"{self.describe(key)} does not exist") from None
        except OSError as e:
            raise ResultsError(f"cannot read {self.describe(key)}: {e.strerror or e}") from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with contextlib.suppress(OSError):   # mkstemp's 0600 would hide the tables from the team; some
                os.fchmod(fd, _FILE_MODE)       # network/FUSE mounts refuse chmod: then keep it, and write
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            raise ResultsError(f"cannot write {path}: {e.strerror or e}; check that its folder is writable") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ResultsError(f"cannot delete {self.describe(key)}: {e.strerror or e}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_folder(self, prefix: str) -> None:
        try:
            shutil.rmtree(self._path(prefix.strip("/")))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ResultsError(f"cannot delete {self.describe(prefix)}: {e.strerror or e}") from None


class S3Store(Store):
    """`s3://bucket/prefix` on AWS or any S3-compatible server, through boto3."""

    def __init__(self, bucket: str, prefix: str, options: S3Options | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options or S3Options()
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = None

    # -- plumbing
    @property
    def client(self):
        if self._client is None:
            self._client = s3_client(self.options)
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run one S3 call with bounded retries; map failures to one-line ResultsErrors."""
        from botocore.exceptions import (BotoCoreError, ClientError, NoCredentialsError,
                                         PartialCredentialsError)

        o = self.options
        where = self.describe(key)
        endpoint = _shown_endpoint(o.resolved_endpoint())
        reason = ""
        for attempt in range(1, max(1, o.tries) + 1):
            try:
                return fn()
            except (NoCredentialsError, PartialCredentialsError):
                raise ResultsError(f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY, or configure an AWS profile") from None
            except ClientError as e:
                err = e.response.get("Error", {})
                code = str(err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if code in ("NoSuchBucket",):
                    raise ResultsError(f"bucket '{self.bucket}' does not exist at {endpoint}; create it or fix "
                                       f"the s3:// URI") from None
                if code in _AUTH_CODES:
                    raise ResultsError(f"{endpoint} rejected the credentials ({code}) for {where}: check "
                                       "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS profile") from None
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise MissingKey(f"{where} does not exist") from None
                if code not in _RETRYABLE_CODES:
                    raise ResultsError(f"{what} {where} failed: {code} {err.get('Message', '')}") from None
                reason = f"{code} {err.get('Message', '')}".strip()
            except BotoCoreError as e:  # connection refused / reset, timeouts, bad endpoint
                reason = type(e).__name__
            except OSError as e:
                reason = type(e).__name__
            if attempt < o.tries:
                wait = min(8.0, o.backoff_s * 2 ** (attempt - 1)) * (1 + 0.2 * random.random())
                log.warning("%s %s failed (%s), try %d of %d; retrying in %.1f s", what, where, scrub(reason),
                            attempt, o.tries, wait)
                time.sleep(wait)
        raise ResultsError(f"{what} {where} failed after {o.tries} tries ({reason}); check that {endpoint} is up "
                           "and reachable (AWS_ENDPOINT_URL or --endpoint)")

    # -- the Store interface
    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        keys: list[str] = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("listing", prefix, lambda: self.client.list_objects_v2(**kwargs))
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if k.endswith("/"):  # directory markers (pyarrow writes them)
                    continue
                keys.append(k[len(self.prefix) + 1:] if self.prefix else k)
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        return sorted(keys)

    def get(self, key: str) -> bytes:
        return self._call("reading", key,
                          lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        # One PUT of the complete bytes: atomic on S3; the request checksum guards against truncation.
        self._call("writing", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key),
                                                                  Body=data))

    def delete(self, key: str) -> None:
        self._call("deleting", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def exists(self, key: str) -> bool:
        try:
            self._call("checking", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
            return True
        except MissingKey:
            return False

    def delete_folder(self, prefix: str) -> None:
        # one LIST and one DeleteObjects per 1,000 keys (pyarrow's delete_dir: a request per object and marker)
        folder = self._key(prefix.strip("/")).rstrip("/") + "/"
        if folder == "/":
            raise ResultsError(f"refusing to delete the whole bucket {self.uri}: name a folder in it")
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": folder, **({"ContinuationToken": token} if token else {})}
            page = self._call("listing", prefix, lambda: self.client.list_objects_v2(**kwargs))
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                out = self._call("deleting", prefix, lambda: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}))
                if out.get("Errors"):
                    e = out["Errors"][0]
                    raise ResultsError(f"deleting {self.describe(prefix)} failed for {len(out['Errors'])} of "
                                       f"{len(keys)} keys: {e.get('Code')} {e.get('Message', '')} ({e.get('Key')})")
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def check(self) -> None:
        """Fail early, in one line, when the bucket is missing, unreachable or the credentials are wrong."""
        self._call("checking", "", lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""),
                                                                       MaxKeys=1))

    def pyarrow_filesystem(self):
        """A `pyarrow.fs.S3FileSystem` for the same endpoint (credentials from the standard chain), and the
        `bucket/prefix` path to use with it — for reading the tables with pyarrow.dataset or pandas."""
        from pyarrow import fs

        o = self.options
        # bounded timeouts and tries: a dead endpoint fails in seconds instead of retrying for minutes
        kwargs = {"force_virtual_addressing": False, "connect_timeout": o.connect_timeout_s,
                  "request_timeout": o.read_timeout_s,
                  "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=max(1, o.tries))}
        region = o.resolved_region(default=None)    # unset: the AWS SDK's own chain (profile, instance)
        if region:
            kwargs["region"] = region
        endpoint = o.resolved_endpoint()
        if endpoint:   # pyarrow reads AWS_ENDPOINT_URL only in FileSystem.from_uri, so it is passed here
            parts = urlsplit(endpoint)
            kwargs["endpoint_override"] = parts.netloc
            kwargs["scheme"] = parts.scheme
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return fs.S3FileSystem(**kwargs), path


def s3_uri(text: str) -> str | None:
    """`text` as `s3://...` (scheme in lower case) when it names S3, else None (a local path or file://).
    The one check of a location: a text that starts like a URI but is not one this layer reads is a
    ResultsError rather than a local folder of that name: `s3:/bucket/x` or `s3:bucket` (not two slashes),
    `file:/x` (one slash), `gs://bucket` (another scheme)."""
    m = _SCHEME.match(text)
    if m is None:
        return None
    scheme, slashes = m["scheme"].lower(), m["slashes"]
    if scheme == "s3":
        if not slashes.startswith("//"):
            raise ResultsError(f"{text!r} is not an S3 location: write s3://bucket/prefix (two slashes)")
        return "s3://" + text[len("s3://"):]
    if slashes == "/":
        raise ResultsError(f"{text!r} is not a URI (one slash?): write s3://bucket/prefix, or a local folder "
                           "without a scheme")
    if slashes.startswith("//") and scheme != "file":
        raise ResultsError(f"unsupported location {text!r}: use a local folder or s3://BUCKET/PREFIX")
    return None


def open_store(uri: str | os.PathLike, options: S3Options | None = None) -> Store:
    """A store for a local folder or `s3://bucket/prefix`. No I/O: a bad location fails here, an unusable
    one at the first call (or at `probe`)."""
    text = os.fspath(uri)
    s3 = s3_uri(text)
    if s3 is not None:
        bucket, _, prefix = s3[5:].partition("/")
        if not bucket:
            raise ResultsError(f"{text!r} names no bucket; use s3://BUCKET/PREFIX")
        return S3Store(bucket, prefix, options)
    return LocalStore(text[len("file://"):] if text.startswith("file://") else text)
