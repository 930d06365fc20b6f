"""Autoscaling from zero on loopback (tests/multinode.py): Ray's fake multi-node autoscaler with GPU node
types shaped like cluster/aws-gpu.yaml (`min_workers: 0`, a head with no CPU for trials). A sweep scales
the cluster up, finishes, and the idle nodes go away; a bundle that no node type can ever hold is one line
at once from `fair sweep`, and from `fair cluster submit` within a bounded time (the job's own `fair sweep`
refuses it on the head, where the launcher config is).
"""
from __future__ import annotations

import logging
import time

import pytest
import yaml

from tests.multinode import LoopbackAutoscalingCluster, worker_nodes
from tests.s3 import s3_server  # noqa: F401  (fixture)
from tests.test_tune_multinode import records, s3_uri, search_record, study_states, sweep_dict, trial_rows
from tune.sweep_config import load_sweep

pytestmark = [pytest.mark.multinode, pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]
log = logging.getLogger("tests.multinode")


@pytest.fixture(scope="module")
def autoscaling(s3_server):                               # noqa: F811 - SeaweedFS first (env)
    import shutil
    import tempfile
    from pathlib import Path

    import ray
    from tune import ray_session
    from tune.sweep_config import RayOptions
    if ray.is_initialized():
        pytest.fail("this process is already connected to a Ray (another module's session fixture)")
    # a short folder: Ray's socket paths under its temp dir must stay within 107 bytes
    c = LoopbackAutoscalingCluster(Path(tempfile.mkdtemp(prefix="fair-as-")))
    try:
        c.start()
        ray_session.init(c.address, RayOptions(worker_start_timeout_s=60))
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(c.workdir, ignore_errors=True)


def autoscaled_sweep(c, s3, name: str, **resources) -> dict:
    d = sweep_dict(name, s3_uri(s3), "direct")
    d["resources"] = {**d["resources"], "check_cluster": False, **resources}
    d["ray"]["autoscaling_config"] = str(c.config_file)
    return d


def test_sweep_scales_up_from_zero_and_the_idle_nodes_go_away(autoscaling, s3_server):  # noqa: F811
    from tune.sweep import preflight, run
    assert worker_nodes() == []                                   # min_workers 0: the head alone
    cfg = load_sweep(None, mapping=autoscaled_sweep(autoscaling, s3_server, "scale"))
    uri = preflight(cfg)
    t = time.monotonic()
    result = run(cfg, uri)
    assert not result.errored and result.trials == 2 and result.complete     # the search trial, its final seed
    recs = records(uri, cfg.name)
    assert [(r["status"], len(r["epochs"])) for r in recs["fashion_mnist"]] == [("completed", 2)] * 2
    rows = trial_rows(uri, cfg.name, search_record(recs)["run_id"])
    assert [r["epoch"] for r in rows] == [1, 2]
    studies = study_states(s3_server, uri, cfg.name)
    assert studies == {"fair/fashion_mnist": [("COMPLETE", rows[-1]["objective"])]}
    during = worker_nodes()
    swept = time.monotonic() - t
    deadline = time.monotonic() + 90                              # idle_timeout_minutes 0.1 + a few updates
    while worker_nodes() and time.monotonic() < deadline:
        time.sleep(1)
    assert worker_nodes() == [], "the idle GPU nodes were not taken down"
    log.warning("autoscaling: sweep %.1f s on %s; idle nodes gone %.1f s later; records %s; studies %s", swept,
                [n["resources"].get("GPU") and {k: v for k, v in n["resources"].items()
                                                if k in ("CPU", "GPU", "gpu-small", "gpu-large")} for n in during],
                time.monotonic() - t - swept,
                {d: [(r["run_id"], r["status"]) for r in v] for d, v in recs.items()}, studies)


def test_bundle_no_node_type_holds_is_one_line_at_once(autoscaling, s3_server, tmp_path, capsys):  # noqa: F811
    from fair.cli import main as fair_main
    d = autoscaled_sweep(autoscaling, s3_server, "huge", per_worker={"CPU": 1, "GPU": 4})
    p = tmp_path / "huge.yaml"
    p.write_text(yaml.safe_dump(d))
    t = time.monotonic()
    assert fair_main(["sweep", "-c", str(p), "--address", autoscaling.address]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GPU 4 (largest node: 2)" in err and "no node type of" in err, err
    assert time.monotonic() - t < 30 and worker_nodes() == []     # refused before asking for a node


def test_cluster_submit_of_a_bundle_no_node_type_holds_fails_in_bounded_time(autoscaling, s3_server, capsys):  # noqa: F811
    """`fair cluster submit --follow` to the autoscaling head: the client sees no GPU node yet and only warns
    (the autoscaler may add one); the job's `fair sweep` checks the launcher config on the head and fails
    with its one line, which the follow shows, without a node ever started."""
    from fair.cli import main as fair_main
    t = time.monotonic()
    rc = fair_main(["cluster", "submit", "--address", autoscaling.dashboard, "--config", "configs/sweeps/demo.yaml",
                    "--storage", s3_uri(s3_server), "--follow",
                    "--set", "resources.per_worker={CPU: 1, GPU: 4}", "--set", "resources.check_cluster=false",
                    "--set", "budget.max_concurrent=1", "--set", f"ray.autoscaling_config={autoscaling.config_file}"])
    out = capsys.readouterr()
    assert rc == 1, out.err[-3000:]
    refusal = [line for line in out.out.splitlines() if "no node type of" in line]
    assert len(refusal) == 1 and "GPU 4 (largest node: 2)" in refusal[0], out.out[-3000:]
    assert " FAILED" in out.err and time.monotonic() - t < 120 and worker_nodes() == []
