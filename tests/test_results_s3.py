"""The tables in a real S3-compatible server (SeaweedFS, signatures checked): round trip, layout,
idempotence, byte-identical tables, concurrent writers, the server dying mid-write, and one-line errors."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from results.collect import collect
from results.errors import ResultsError
from results.parquet import read_table
from results.store import S3Options, S3Store, open_store
from tests.s3 import ACCESS_KEY, SECRET_KEY, free_ports, private_s3_server, s3_server  # noqa: F401
from tests.test_results_records import REPO, epoch_rows, make_record, write_sweep

pytestmark = pytest.mark.s3
FAST = S3Options(tries=2, backoff_s=0.05, connect_timeout_s=1, read_timeout_s=5)


def uniq(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def object_keys(server, prefix: str) -> list[str]:
    """Keys under `prefix` as boto3 sees them, without pyarrow-style directory markers."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []) if not o["Key"].endswith("/"))


def object_bytes(server, prefix: str) -> dict[str, bytes]:
    c = server.client()
    return {k[len(prefix):]: c.get_object(Bucket=server.bucket, Key=k)["Body"].read()
            for k in object_keys(server, prefix)}


def records(n: int = 6, datasets=("cifar10", "fashion_mnist"), sweep: str = "grid") -> list[dict]:
    return [make_record(dataset=d, sweep=sweep, trial=f"t{i:03d}", seed=i % 2, hparams={"optim.lr": 10.0 ** -(i % 3)},
                        val=60 + i, test=61 + i, epochs=epoch_rows(2)) for d in datasets for i in range(n)]


def test_round_trip_layout_and_byte_identical_to_local(s3_server, tmp_path):
    recs = records()
    src = write_sweep(tmp_path / "sweeps", recs)
    uri = f"s3://{s3_server.bucket}/{uniq('tables')}"
    collect([str(src)], uri)
    prefix = uri.split("/", 3)[3] + "/"
    keys = object_keys(s3_server, prefix)
    assert len(keys) == 4
    for k in keys:
        table, sweep, dataset, part = k[len(prefix):].split("/")
        assert table in ("trials", "epochs") and sweep == "sweep=grid"
        assert dataset in ("dataset=cifar10", "dataset=fashion_mnist") and part.startswith("part-")
    t = read_table(open_store(uri), "trials")
    assert t.num_rows == len(recs)
    got = {(r["dataset"], r["trial_id"]): r["test_top1"] for r in t.to_pylist()}
    assert got == {(r["dataset"], r["sweep"]["trial_id"]): r["metrics"]["test_top1"] for r in recs}
    # the same records collected into a local folder give the very same bytes
    collect([str(src)], str(tmp_path / "local"))
    local = {p.relative_to(tmp_path / "local").as_posix(): p.read_bytes()
             for p in sorted((tmp_path / "local").rglob("*.parquet"))}
    assert object_bytes(s3_server, prefix) == local


def test_idempotent_rewrite_on_s3(s3_server, tmp_path):
    recs = records(4, datasets=("cifar10",))
    src = write_sweep(tmp_path / "sweeps", recs)
    uri = f"s3://{s3_server.bucket}/{uniq('idem')}"
    prefix = uri.split("/", 3)[3] + "/"
    collect([str(src)], uri)
    before = object_bytes(s3_server, prefix)
    collect([str(src)], uri)
    collect([str(src / "grid" / "records" / "dataset=cifar10" / "t001.json")], uri)
    assert object_bytes(s3_server, prefix) == before
    assert read_table(open_store(uri), "trials").num_rows == 4


def test_collect_from_s3_sweep_storage(s3_server, tmp_path):
    recs = records(3, datasets=("cifar10",), sweep="remote")
    storage = uniq("storage")
    c = s3_server.client()
    for r in recs:
        key = f"{storage}/remote/records/dataset={r['dataset']}/{r['sweep']['trial_id']}.json"
        c.put_object(Bucket=s3_server.bucket, Key=key, Body=json.dumps(r).encode())
    c.put_object(Bucket=s3_server.bucket, Key=f"{storage}/remote/ray/experiment_state.json", Body=b"{}")
    out = f"s3://{s3_server.bucket}/{uniq('tables')}"
    summary = collect([f"s3://{s3_server.bucket}/{storage}"], out)
    assert summary["records"] == 3
    t = read_table(open_store(out), "trials")
    assert sorted(t.column("trial_id").to_pylist()) == ["t000", "t001", "t002"]
    assert all(s.startswith(f"s3://{s3_server.bucket}/{storage}/remote/records/") for s in t.column("source").to_pylist())


def test_pyarrow_dataset_and_pandas_read_the_s3_tables(s3_server, tmp_path):
    import pandas as pd
    import pyarrow.dataset as ds

    recs = records(3)
    uri = f"s3://{s3_server.bucket}/{uniq('pa')}"
    collect([str(write_sweep(tmp_path / "s", recs))], uri)
    fs, path = open_store(uri).pyarrow_filesystem()
    dataset = ds.dataset(f"{path}/trials", filesystem=fs, format="parquet", partitioning="hive")
    t = dataset.to_table(filter=ds.field("dataset") == "cifar10")
    assert t.num_rows == 3
    df = pd.read_parquet(f"{path}/epochs", filesystem=fs)
    assert len(df) == 2 * len(recs)


def test_no_credentials_leak_into_tables(s3_server, tmp_path):
    uri = f"s3://{s3_server.bucket}/{uniq('leak')}"
    collect([str(write_sweep(tmp_path / "s", records(2)))], uri)
    for data in object_bytes(s3_server, uri.split("/", 3)[3] + "/").values():
        assert ACCESS_KEY.encode() not in data and SECRET_KEY.encode() not in data


_WRITER = """
import sys
from results.collect import collect
collect([sys.argv[1]], sys.argv[2])
"""


def test_concurrent_writers_from_several_processes_lose_nothing(s3_server, tmp_path):
    n_proc, per = 4, 5
    all_recs = []
    sources = []
    for p in range(n_proc):
        # each writer has its own records plus one shared with its neighbour, all in one partition
        recs = [make_record(dataset="cifar10", trial=f"w{p}-{i}", val=50 + i, test=51 + i) for i in range(per)]
        recs.append(make_record(dataset="cifar10", trial=f"shared-{p % 2}", val=1, test=2))
        all_recs += recs
        sources.append(write_sweep(tmp_path / f"src{p}", recs))
    uri = f"s3://{s3_server.bucket}/{uniq('conc')}"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(s), uri], cwd=REPO, stderr=subprocess.PIPE)
             for s in sources]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    t = read_table(open_store(uri), "trials")
    ids = t.column("trial_id").to_pylist()
    assert sorted(ids) == sorted({r["sweep"]["trial_id"] for r in all_recs}) and len(ids) == len(set(ids))
    collect([str(s) for s in sources], uri)  # compacts whatever the racing writers left: one part
    keys = object_keys(s3_server, uri.split("/", 3)[3] + "/trials/")
    assert len(keys) == 1
    assert read_table(open_store(uri), "trials").num_rows == n_proc * per + 2


def test_wrong_credentials_are_a_one_line_error_without_the_secret(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "WRONGKEYID123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-456")
    with pytest.raises(ResultsError) as e:
        collect([str(write_sweep(tmp_path / "s", records(1)))], f"s3://{s3_server.bucket}/creds")
    msg = str(e.value)
    assert "rejected the credentials" in msg and "\n" not in msg
    for secret in ("WRONGKEYID123", "wrong-secret-value-456", ACCESS_KEY, SECRET_KEY):
        assert secret not in msg


def test_one_client_per_process_and_settings(monkeypatch):
    """Every store of the same endpoint, region and credentials shares one boto3 client (making one costs
    ~140 ms of CPU: per record, the driver spent more on clients than on writes); other credentials or
    another endpoint get their own, so a changed environment is never served by a stale client."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "KEY1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret1")
    local = S3Options(endpoint="http://127.0.0.1:9")
    a, b = open_store("s3://bucket/a", local), open_store("s3://other/b", S3Options(endpoint="http://127.0.0.1:9"))
    assert a.client is b.client
    assert open_store("s3://bucket/a", S3Options(endpoint="http://127.0.0.1:10")).client is not a.client
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "KEY2")
    fresh = open_store("s3://bucket/a", local).client
    assert fresh is not a.client and fresh._request_signer._credentials.access_key == "KEY2"


def test_the_server_counts_the_requests_a_store_makes(private_s3_server):
    """The server's request counters (bench.scale's "S3 requests per trial") see each PUT and GET a store
    makes in its bucket, once."""
    s3_server = private_s3_server
    store = open_store(f"s3://{s3_server.bucket}/counted")
    before = s3_server.settled_requests()
    for i in range(3):
        store.put(f"k{i}.json", b"{}")
    store.get("k1.json")
    since = s3_server.requests_since(before, "GET", 1)
    assert since.get("PUT", 0) == 3, since
    assert since.get("GET", 0) == 1, since


def test_missing_bucket_is_a_one_line_error(s3_server, tmp_path):
    with pytest.raises(ResultsError, match="bucket 'no-such-bucket' does not exist"):
        collect([str(write_sweep(tmp_path / "s", records(1)))], "s3://no-such-bucket/x", FAST)


def test_unreachable_endpoint_fails_after_bounded_retries(tmp_path):
    port = free_ports(1)[0]
    opts = S3Options(endpoint=f"http://127.0.0.1:{port}", tries=3, backoff_s=0.05, connect_timeout_s=1)
    t0 = time.monotonic()
    with pytest.raises(ResultsError) as e:
        S3Store("sweeps", "x", opts).put("trials/a.parquet", b"x")
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "failed after 3 tries" in msg and f"127.0.0.1:{port}" in msg and "trials/a.parquet" in msg


def _assert_no_partial_objects(server, prefix):
    """Every part present parses completely and is named by the hash of its bytes."""
    for key, data in object_bytes(server, prefix).items():
        assert key.rsplit("/", 1)[-1] == f"part-{hashlib.sha256(data).hexdigest()[:16]}.parquet", key
        pq.read_table(pa.BufferReader(data))


def test_server_killed_during_writes_gives_a_clear_failure_and_no_partial_file(private_s3_server, tmp_path):
    server = private_s3_server
    recs = [make_record(dataset=f"d{j:02d}", trial=f"t{i}", seed=i, val=50 + i, test=50 + j,
                        epochs=epoch_rows(20)) for j in range(40) for i in range(3)]
    src = write_sweep(tmp_path / "s", recs)
    uri = f"s3://{server.bucket}/crash"
    outcome = {}

    def writer():
        try:
            collect([str(src)], uri, S3Options(tries=2, backoff_s=0.1, connect_timeout_s=1, read_timeout_s=3))
            outcome["ok"] = True
        except ResultsError as e:
            outcome["error"] = str(e)

    th = threading.Thread(target=writer)
    th.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(object_keys(server, "crash/")) < 5 and th.is_alive():
        time.sleep(0.02)
    server.stop(kill=True)  # SIGKILL: the server dies mid-collect
    th.join(timeout=60)
    assert not th.is_alive()
    if "error" in outcome:  # a clear, one-line failure that names what it was doing and where
        assert "failed after 2 tries" in outcome["error"] and "s3://sweeps/crash/" in outcome["error"]
        assert "\n" not in outcome["error"]
    server.start()
    _assert_no_partial_objects(server, "crash/")
    collect([str(src)], uri)  # re-running after the failure completes the tables
    assert read_table(open_store(uri), "trials").num_rows == len(recs)
    _assert_no_partial_objects(server, "crash/")


def test_server_restarted_within_the_backoff_gives_a_retried_write(private_s3_server, tmp_path):
    server = private_s3_server
    recs = records(3)
    src = write_sweep(tmp_path / "s", recs)
    uri = f"s3://{server.bucket}/retry"
    server.stop(kill=True)
    outcome = {}

    def writer():
        try:
            outcome["summary"] = collect([str(src)], uri, S3Options(tries=8, backoff_s=0.5, connect_timeout_s=1))
        except ResultsError as e:
            outcome["error"] = str(e)

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(1.0)
    server.start()
    th.join(timeout=90)
    assert outcome.get("summary", {}).get("records") == len(recs), outcome
    assert read_table(open_store(uri), "trials").num_rows == len(recs)
    _assert_no_partial_objects(server, "retry/")


def test_env_is_set_for_clients(s3_server):
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert S3Options().resolved_endpoint() == s3_server.endpoint


def test_probe_with_a_wrong_secret_is_refused_without_echoing_it(s3_server, monkeypatch):
    """What `fair sweep` checks before it starts (tune.storage.probe is this probe)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(ResultsError, match="rejected the credentials") as e:
        open_store(f"s3://{s3_server.bucket}/x").probe("sw")
    assert "wrong-secret-value" not in str(e.value) and s3_server.access_key not in str(e.value)


def test_probe_on_s3_leaves_no_object(s3_server):
    prefix = uniq("probe")
    open_store(f"s3://{s3_server.bucket}/{prefix}").probe("sw")
    assert object_keys(s3_server, prefix + "/") == []
