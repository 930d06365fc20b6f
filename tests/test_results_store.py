"""The one storage layer without a server: which locations it takes, the endpoint it uses and shows
(never a `user:password@`), scrubbed one-line errors, the probe, and files the team can read."""
from __future__ import annotations

import os
import re
import time

import pytest

from results.errors import ResultsError, scrub
from results.store import LocalStore, S3Options, S3Store, open_store, s3_uri
from tests.s3 import free_ports


@pytest.mark.parametrize("text, says", [
    ("s3:/bucket/x", "is not an S3 location: write s3://bucket/prefix"),
    ("s3:bucket/x", "is not an S3 location"),
    ("file:/tmp/x", "is not a URI (one slash?)"),
    ("gs://bucket/x", "unsupported location 'gs://bucket/x'"),
    ("s3://", "names no bucket"),
])
def test_a_location_the_store_cannot_read_is_one_line_error(text, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ResultsError, match=re.escape(says)) as e:
        open_store(text)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []          # nothing became a local folder named 's3:' or 'file:'


@pytest.mark.parametrize("text, root", [("file:///data/sweeps", "/data/sweeps"), ("./sweeps", "sweeps"),
                                        ("C:/sweeps", "C:/sweeps"), ("run:1", "run:1")])
def test_local_locations_are_local_folders(text, root):
    store = open_store(text)
    assert isinstance(store, LocalStore) and store.uri == root and s3_uri(text) is None


def test_endpoint_credentials_are_dropped_and_a_bare_host_is_https(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://key:hunter2pass@127.0.0.1:8333/")
    assert S3Options().resolved_endpoint() == "http://127.0.0.1:8333"
    assert S3Options(endpoint="minio.example:9000").resolved_endpoint() == "https://minio.example:9000"
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert S3Options().resolved_region() == "us-east-1" and S3Options().resolved_region(default=None) is None
    fs, path = open_store("s3://bucket/prefix").pyarrow_filesystem()
    state = fs.__reduce__()[1][0]                 # what the filesystem was built with
    assert path == "bucket/prefix" and state["endpoint_override"] == "127.0.0.1:8333" and state["scheme"] == "http"
    assert "hunter2pass" not in repr(state)


def test_scrub_hides_env_secrets_and_url_userinfo(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "legacy-token-value")
    text = scrub("at http://user:pw@host:1/x with s3cr3t-value and legacy-token-value; s3://bucket/key")
    assert text == "at http://***@host:1/x with *** and ***; s3://bucket/key"
    assert str(ResultsError("bad\n  s3cr3t-value")) == "bad ***"


def test_unreachable_s3_endpoint_fails_fast_without_echoing_secrets(monkeypatch):
    """The default options (what a sweep's probe uses): bounded tries, one line, no credential."""
    port = free_ports(1)[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://user:endpoint-password@127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSHOULDNOTLEAK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-should-not-leak")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    t = time.monotonic()
    with pytest.raises(ResultsError) as e:
        open_store("s3://bucket/prefix").probe("sw")
    msg = str(e.value)
    assert "s3://bucket/prefix/sw/.probe-" in msg and f"127.0.0.1:{port}" in msg
    for secret in ("AKIDSHOULDNOTLEAK", "secret-should-not-leak", "endpoint-password"):
        assert secret not in msg
    assert len(msg.splitlines()) == 1 and time.monotonic() - t < 60


def test_local_probe_leaves_nothing_and_an_unwritable_folder_is_one_line(tmp_path):
    store = open_store(tmp_path / "st")
    store.probe("sweep")
    assert store.list() == [] and not list((tmp_path / "st" / "sweep").iterdir())
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(ResultsError, match="cannot write .*check that its folder is writable") as e:
        open_store(tmp_path / "ro").probe("sweep")
    assert "\n" not in str(e.value)


def test_local_writes_are_atomic_and_readable_by_the_team(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    store = LocalStore(tmp_path)
    store.put("a/b.json", b"{}")
    store.put("a/b.json", b"{\"v\": 2}")              # a rewrite replaces the whole file
    assert store.get("a/b.json") == b"{\"v\": 2}" and store.list() == ["a/b.json"]
    assert (tmp_path / "a/b.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]     # no temp file left


def test_s3_store_keys_and_location():
    store = open_store("S3://bucket/some/prefix/")
    assert isinstance(store, S3Store) and store.uri == "s3://bucket/some/prefix"
    assert store.describe("x/y.json") == "s3://bucket/some/prefix/x/y.json"
