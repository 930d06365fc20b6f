"""`fair cluster` against a real Ray head on loopback: submit the demo smoke sweep through the Jobs API and
find its records, stop a running job, one-line errors for unknown jobs and impossible resource requests.

The head is our own `ray start --head --block` in its own process group, on free ports and its own
--temp-dir, stopped by signalling that group: `ray stop` would kill every Ray on the machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.multinode import head_ports_args
from tune.ray_session import free_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
HEAD_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_AIR_NEW_OUTPUT": "0"}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the head's process group, SIGKILL what is left after 10 s; return when the group is empty
    (GCS and the dashboard outlive `ray start --block` and would recreate files in the temp dir)."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if not _group_alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(proc.pid):
            if proc.poll() is None:
                try:
                    proc.wait(0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)


def _stragglers(temp_dir: Path) -> list[int]:
    """Pids of processes of this head outside its process group (Ray workers get their own groups); they
    are the only ones whose command line names this head's unique temp dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(temp_dir).encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _reap_stragglers(temp_dir: Path, wait_s: float = 10.0) -> None:
    """Workers exit by themselves once the raylet is gone (a few seconds); kill the rest by pid."""
    deadline = time.monotonic() + wait_s
    while _stragglers(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _stragglers(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A local Ray head with the dashboard (Jobs API) on 127.0.0.1; yields its http address."""
    tmp = tmp_path_factory.mktemp("rayhead")
    temp_dir = Path("/tmp") / f"fc-ray-{os.getpid()}"      # short: Ray's socket paths must stay < 108 chars
    gcs, dash = free_ports(2)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, **HEAD_ENV, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    cmd = [str(Path(venv_bin) / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           *head_ports_args(gcs, dash),
           "--num-cpus=4", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    log = open(tmp / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=tmp)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray head did not start: {(tmp / 'head.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield address
    finally:
        _stop_group(proc)
        _reap_stragglers(temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _fair(argv, capsys):
    from fair.cli import main
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_submit_smoke_sweep_and_find_records(head, tmp_path, capsys):
    storage = tmp_path / "store"
    # runner direct: what is tested is the submission path; the trainer runner's sweeps are other tests'
    rc, out, err = _fair(["cluster", "submit", "--address", head, "--config", "configs/sweeps/demo.yaml",
                          "--smoke-test", "--storage", str(storage), "--set", "resources.runner=direct",
                          "--follow"], capsys)
    job_id = out.splitlines()[0]
    assert rc == 0, err[-3000:] + out[-3000:]
    assert job_id.startswith("raysubmit_") and f"job {job_id} SUCCEEDED" in err
    records = sorted(storage.glob("demo-smoke/records/dataset=*/*.json"))
    assert {p.parent.name for p in records} == {"dataset=fashion_mnist", "dataset=fashion_mnist_shifted"}
    import json
    rec = json.loads(records[0].read_text())
    assert rec["status"] == "completed" and rec["sweep"]["name"] == "demo-smoke"

    rc, out, _ = _fair(["cluster", "status", job_id, "--address", head], capsys)
    assert rc == 0 and out.strip().startswith(f"{job_id} SUCCEEDED")
    rc, out, _ = _fair(["cluster", "list", "--address", head], capsys)
    assert rc == 0 and job_id in out
    rc, out, _ = _fair(["cluster", "logs", job_id, "--address", head], capsys)
    assert rc == 0 and "records in" in out


def test_stop_running_job(head, capsys):
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(head)
    job_id = client.submit_job(entrypoint="python -c \"import time; print('up', flush=True); time.sleep(300)\"")
    deadline = time.monotonic() + 60
    while client.get_job_status(job_id).value != "RUNNING":
        assert time.monotonic() < deadline, client.get_job_info(job_id)
        time.sleep(0.5)
    rc, out, _ = _fair(["cluster", "stop", job_id, "--address", head], capsys)
    assert rc == 0 and out.strip() == f"{job_id} STOPPED"
    rc, out, _ = _fair(["cluster", "stop", job_id, "--address", head], capsys)
    assert rc == 0 and "already STOPPED" in out


def test_unknown_job_is_one_line(head, capsys):
    for cmd in ("status", "logs", "stop"):
        rc, _, err = _fair(["cluster", cmd, "raysubmit_doesnotexist", "--address", head], capsys)
        assert rc == 2 and err.count("\n") == 1 and "no job 'raysubmit_doesnotexist'" in err


def test_gpu_sweep_refused_on_cpu_cluster(head, tmp_path, capsys):
    """The local head has 4 CPUs, no GPU and no autoscaler: a GPU sweep would queue forever."""
    args = ["cluster", "submit", "--address", head, "--config", "configs/sweeps/paper13-vitb32.yaml"]
    rc, out, err = _fair(args, capsys)
    assert rc == 2 and err.count("\n") == 1 and not out
    assert "cannot hold one trial worker" in err and "GPU 0.25" in err and "does not autoscale" in err
    # With the launcher config the check is against its node types, which do have GPUs; a request none
    # of them can hold is refused whatever the live cluster looks like.
    rc, _, err = _fair(args + ["--set", "resources.per_worker.GPU=8", "--cluster-config",
                               str(ROOT / "cluster" / "aws-gpu.yaml")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no node type of" in err and "GPU 8" in err
