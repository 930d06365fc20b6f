"""`fair cluster`: submit sweeps to a running Ray cluster and manage them; check and plan clusters.

    fair cluster submit --config configs/sweeps/paper13-vitb32.yaml [--set k=v ...] [--follow]
                                # checks the sweep here as the job's `fair sweep` will load it, first
    fair cluster status JOB | logs JOB [--follow] | stop JOB | list
    fair cluster validate cluster/aws-gpu.yaml [...]           # Ray's own schema, offline
    fair cluster plan --config SWEEP.yaml [--records DIR ...]  # trials, concurrency, GPU-hours, cost

`fair sweep` is here too (sweep_main): tune's sweep CLI, and with --plan this package's planner, since
tune/ never imports cluster/.

--address: the cluster's dashboard / Jobs API (default $RAY_ADDRESS if it is an http URL, else
http://127.0.0.1:8265, where `ray dashboard cluster/aws-gpu.yaml` forwards it). Exit codes: 0 ok (a
followed job SUCCEEDED), 1 a followed job FAILED or was STOPPED, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

from cluster.errors import ClusterError

log = logging.getLogger("cluster")

_EPILOG = "Walkthrough from an AWS account to a results table: cluster/README.md"


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the cluster's dashboard URL (default: $RAY_ADDRESS if http..., "
                                     "else http://127.0.0.1:8265)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fair cluster", description=__doc__.split("\n\n")[0], epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{submit,status,logs,stop,list,validate,plan}")

    s = sub.add_parser("submit", help="check a sweep as `fair sweep` would, submit it as a Ray job (prints the job id)")
    s.add_argument("--config", "-c", required=True, help="sweep YAML inside the working dir (e.g. configs/sweeps/...)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="sweep-file override, passed on to `fair sweep`")
    s.add_argument("--storage", help="sweep storage (s3://bucket/prefix on a cloud cluster)")
    s.add_argument("--smoke-test", action="store_true", help="`fair sweep --smoke-test`: about a minute")
    s.add_argument("--data-check", action="store_true",
                   help="run `fair data check` on the head too (off: data lives on the GPU nodes only)")
    s.add_argument("--runtime-env", type=Path, metavar="FILE",
                   help="runtime env YAML like `ray job submit --runtime-env` (default cluster/runtime_env.yaml)")
    s.add_argument("--working-dir", type=Path, help="folder shipped to the cluster (default: the project root)")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra non-secret env var")
    s.add_argument("--submission-id", help="job id to use (default: Ray picks raysubmit_...)")
    s.add_argument("--cluster-config", type=Path, metavar="LAUNCHER.yaml",
                   help="the cluster's launcher config: check the sweep's resources against its node types")
    s.add_argument("--no-check", action="store_true", help="skip the resource check against the cluster")
    wait = s.add_mutually_exclusive_group()
    wait.add_argument("--follow", "-f", action="store_true", help="stream the job's logs until it ends")
    wait.add_argument("--no-wait", action="store_true", help="return after submitting (the default)")
    s.add_argument("sweep_args", nargs=argparse.REMAINDER,
                   help="after --: more `fair sweep` arguments, passed through")
    _add_address(s)

    for name, text in (("status", "a job's status"), ("logs", "a job's logs"), ("stop", "stop a job")):
        c = sub.add_parser(name, help=text)
        c.add_argument("job", help="job / submission id (from submit or list)")
        _add_address(c)
        if name == "logs":
            c.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        if name == "stop":
            c.add_argument("--no-wait", action="store_true", help="do not wait for the job to stop")
            c.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    _add_address(sub.add_parser("list", help="jobs on the cluster"))

    v = sub.add_parser("validate", help="check launcher YAMLs against Ray's cluster config schema (offline)")
    v.add_argument("configs", nargs="+", type=Path)

    pl = sub.add_parser("plan", help="estimate trials, GPU-hours, wall time and cost of a sweep")
    pl.add_argument("--config", "-c", required=True, help="sweep YAML")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pl.add_argument("--smoke-test", action="store_true", help="plan the sweep as `--smoke-test` shrinks it")
    _add_plan_inputs(pl)
    return p


def _add_plan_inputs(p) -> None:
    """What a plan reads besides the sweep: `fair cluster plan`'s flags and `fair sweep --plan`'s."""
    p.add_argument("--records", nargs="+", metavar="PATH",
                   help="record JSON files / folders of earlier runs: measured costs instead of the table")
    p.add_argument("--gpu-fraction", type=float, help="GPU share the --records runs had (default 1, as in "
                   "fair adapt; 0.25 for 4 trials per GPU)")
    p.add_argument("--cluster-config", type=Path, metavar="LAUNCHER.yaml",
                   help="node types, prices and max_workers from this launcher config (default cluster/aws-gpu.yaml)")


# `fair sweep` flags (dest: flag) that only a run reads; --plan refuses them.
_RUN_ONLY = {"resume": "--resume", "address": "--address", "num_cpus": "--num-cpus",
             "no_data_check": "--no-data-check", "dry_run": "--dry-run", "show_test": "--show-test"}


def sweep_parser() -> argparse.ArgumentParser:
    """The parser of `fair sweep`: tune's sweep flags, and --plan with the plan's inputs."""
    from tune.cli import parser as tune_sweep_parser
    p = tune_sweep_parser()
    g = p.add_argument_group("estimate instead of running (as `fair cluster plan`)")
    g.add_argument("--plan", action="store_true", help="print the sweep's trials, concurrency, GPU-hours, wall "
                   "time and cost; run nothing (with --set, --smoke-test, --records, --gpu-fraction, "
                   "--cluster-config)")
    _add_plan_inputs(g)
    return p


def _plan_inputs_given(a) -> bool:
    return bool(a.records) or a.gpu_fraction is not None or a.cluster_config is not None


# ---------------------------------------------------------------------------------------------- helpers

def _launcher(path: Path):
    """(node types, top-level max_workers) of a launcher config that passes Ray's schema."""
    from cluster import validate
    prepared = validate.validate_file(path)
    return validate.node_types(validate.read_yaml(path)), validate.worker_cap(prepared)


def check_resources(cluster, req, launcher: Optional[Path]) -> None:
    """Refuse a sweep whose trial workers fit no node (Ray would queue it forever, silently); `req` is
    the sweep's tune.sweep_config.Resources.

    Against the launcher's node types when given (authoritative: what the autoscaler may add); else
    against the live nodes: a warning on a cluster whose autoscaler reports node types (it may add the
    missing GPUs as trials queue), an error otherwise (a hang is worse than a flag to pass).
    """
    from cluster.resources import describe, missing_resources
    if launcher is not None:
        workers = [n for n in _launcher(launcher)[0] if n.max_workers > 0]
        missing = missing_resources(req, workers)
        if missing:
            raise ClusterError(f"the sweep asks {describe(req)} per trial, but no node type of {launcher} "
                               f"can hold {'; '.join(missing)}; change resources.per_worker or the node types")
        return
    nodes = cluster.nodes()
    if not nodes:
        return
    missing = missing_resources(req, nodes)
    if not missing:
        return
    if not cluster.autoscaling():
        raise ClusterError(f"the cluster at {cluster.address} cannot hold one trial worker "
                           f"({describe(req)}): {'; '.join(missing)}, and it does not autoscale; lower "
                           f"resources.per_worker, or if it does autoscale pass --cluster-config LAUNCHER.yaml "
                           f"(or --no-check)")
    log.warning("no node of the cluster holds a trial worker now (%s); an autoscaler must add one "
                "(pass --cluster-config LAUNCHER.yaml to check its node types)", "; ".join(missing))


def sweep_argv(config_rel: str, a) -> list[str]:
    """The job's `fair sweep` arguments: the config, --set, --storage, --smoke-test, the data check and
    whatever followed `--`."""
    args = ["--config", config_rel, "--address", "auto"]
    for o in a.overrides:
        args += ["--set", o]
    if a.storage:
        args += ["--storage", a.storage]
    if a.smoke_test:
        args.append("--smoke-test")
    if not a.data_check:
        args.append("--no-data-check")
    extra = list(a.sweep_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    return args + extra


def entrypoint(config_rel: str, a) -> str:
    """`python -m fair.cli sweep ...` run by the cluster's own python (its PATH on the head)."""
    return shlex.join(["python", "-m", "fair.cli", "sweep", *sweep_argv(config_rel, a)])


def _sweep_args_error(message: str):
    raise ClusterError(f"`fair sweep` would refuse its arguments ({message}); fix the flags after --")


def load_job_sweep(root: Path, argv: list[str]):
    """The sweep config as the job's `fair sweep` will load it, checked here: its own parser, the same
    --set / --storage / --smoke-test, then load_sweep's offline validation (keys, values, dataset names,
    storage URI). Storage access and the data files are the job's to check, on the cluster."""
    from tune.cli import sweep_overrides
    from tune.sweep_config import load_sweep
    p = sweep_parser()
    p.error = _sweep_args_error        # one line, not argparse's usage text
    t = p.parse_args(argv)
    if t.plan or _plan_inputs_given(t):
        _sweep_args_error("--plan estimates locally: run `fair sweep --config FILE --plan` here, not on the "
                          "cluster")
    return load_sweep(str(root / t.config), sweep_overrides(t), smoke_test=t.smoke_test), t


def _pairs(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ClusterError(f"{flag} {item!r} must look like KEY=VALUE")
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------- commands

def cmd_submit(a) -> int:
    from cluster import runtime_env
    from cluster.jobs import Cluster
    root = (a.working_dir.resolve() if a.working_dir else runtime_env.project_root())
    config = Path(a.config).expanduser().resolve()
    try:
        config_rel = config.relative_to(root).as_posix()
    except ValueError:
        raise ClusterError(f"sweep file {config} is outside the folder shipped to the cluster ({root}); "
                           f"put it there (e.g. configs/sweeps/) or pass --working-dir") from None
    argv = sweep_argv(config_rel, a)
    cfg, t = load_job_sweep(root, argv)
    _log_checked(cfg, data_on_cluster=t.no_data_check)
    env_file = a.runtime_env or runtime_env.default_file(root)
    renv = runtime_env.build(root, env_file, _pairs(a.env, "--env"))
    cluster = Cluster(a.address)
    if not a.no_check:
        check_resources(cluster, cfg.resources, a.cluster_config)
    storage = cfg.storage
    if "://" not in storage and not Path(storage).is_absolute():
        log.warning("storage %s is relative: it lands in the job's folder on the head node and is lost with "
                    "it; pass --storage s3://bucket/prefix", storage)
    ep = entrypoint(config_rel, a)
    job_id = cluster.submit(ep, renv, a.submission_id, metadata={"sweep": cfg.name})
    log.info("submitted sweep %s as %s to %s: %s", cfg.name, job_id, cluster.address, ep)
    log.info("records: %s/%s/records/dataset=*/<trial>.json; `fair cluster logs %s --follow`",
             storage.rstrip("/"), cfg.name, job_id)
    print(job_id, flush=True)
    if not a.follow:
        return 0
    return _follow(cluster, job_id)


def _log_checked(cfg, data_on_cluster: bool) -> None:
    """One line: what was checked here, and what is left to the job."""
    data = ("dataset files not checked here (they are on the cluster's GPU nodes; the job runs with "
            "--no-data-check)" if data_on_cluster else "the job checks the dataset files on the head (--data-check)")
    log.info("sweep %s: config valid (%d trials, %d datasets, storage %s); %s", cfg.name, cfg.total_trials,
             len(cfg.datasets), cfg.storage, data)


def _follow(cluster, job_id: str) -> int:
    """Stream a job's logs to its end: 0 when it SUCCEEDED, 1 otherwise; Ctrl-C leaves the job running."""
    try:
        status = cluster.follow(job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running on the cluster "
              f"(`fair cluster stop {job_id}` stops it)", file=sys.stderr)
        return 130
    msg = getattr(cluster.info(job_id), "message", "") or ""
    print(f"job {job_id} {status}{': ' + msg.splitlines()[0] if msg else ''}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def cmd_status(a) -> int:
    from cluster.jobs import Cluster
    c = Cluster(a.address)
    info = c.info(a.job)
    status = getattr(info.status, "value", info.status)
    print(f"{a.job} {status}" + (f": {info.message}" if info.message else ""))
    return 0


def cmd_logs(a) -> int:
    from cluster.jobs import Cluster
    c = Cluster(a.address)
    if a.follow:
        return _follow(c, a.job)
    sys.stdout.write(c.logs(a.job))
    return 0


def cmd_stop(a) -> int:
    from cluster.jobs import TERMINAL, Cluster
    c = Cluster(a.address)
    status = c.status(a.job)
    if status in TERMINAL:
        print(f"{a.job} already {status}")
        return 0
    c.stop(a.job)
    if a.no_wait:
        print(f"{a.job} stop requested")
        return 0
    status = c.wait(a.job, timeout_s=a.timeout)
    print(f"{a.job} {status}")
    return 0 if status in TERMINAL else 1


def cmd_list(a) -> int:
    import datetime
    from cluster.jobs import Cluster
    jobs = Cluster(a.address).list()
    if not jobs:
        print("no jobs")
    for j in jobs:
        started = (datetime.datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M")
                   if j.start_time else "-")
        ep = j.entrypoint if len(j.entrypoint) <= 80 else j.entrypoint[:77] + "..."
        print(f"{j.submission_id or j.job_id:<28} {getattr(j.status, 'value', j.status):<10} {started}  {ep}")
    return 0


def cmd_validate(a) -> int:
    from cluster.validate import validate_file
    for path in a.configs:
        validate_file(path)
        print(f"{path}: ok (Ray's cluster config schema, image pins Ray {__import__('ray').__version__})")
    return 0


def cmd_plan(a) -> int:
    from cluster.plan import calibration_from_records, load_records, plan
    from tune.sweep_config import read_sweep
    sweep = read_sweep(a.config, a.overrides, smoke_test=a.smoke_test)
    calibration = None
    if a.records:
        recs = load_records(a.records)
        if not recs:
            raise ClusterError(f"no run records (*.json with schema_version) under {', '.join(a.records)}")
        calibration = calibration_from_records(recs, 1.0 if a.gpu_fraction is None else a.gpu_fraction)
    nodes, cap = _launcher(a.cluster_config) if a.cluster_config else (None, None)
    print(plan(sweep, calibration, nodes, str(a.cluster_config or ""), cap))
    return 0


COMMANDS = {"submit": cmd_submit, "status": cmd_status, "logs": cmd_logs, "stop": cmd_stop, "list": cmd_list,
            "validate": cmd_validate, "plan": cmd_plan}


def sweep_main(argv: list[str]) -> int:
    """Entry point of `fair sweep` (argv without "sweep"): tune's run, or with --plan the plan of the sweep."""
    a = sweep_parser().parse_args(argv)
    if not a.plan:
        if _plan_inputs_given(a):
            raise ClusterError("--records, --gpu-fraction and --cluster-config are inputs of --plan; add --plan "
                               "or drop them")
        from cluster.plan import trial_durations
        from tune.cli import run_sweep
        return run_sweep(a, prior=trial_durations)
    for dest, flag in _RUN_ONLY.items():
        if getattr(a, dest):
            raise ClusterError(f"--plan estimates the sweep of --config and takes no {flag}; drop it (plan "
                               f"flags: --set, --smoke-test, --records, --gpu-fraction, --cluster-config)")
    return cmd_plan(a)


def main(argv: list[str]) -> int:
    """Entry point of `fair cluster` (argv without "cluster")."""
    a = parser().parse_args(argv)
    # Ray's own INFO lines (config defaults filled in, client connected) are noise on this command line.
    for name in ("ray", "ray.autoscaler", "ray.dashboard"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return COMMANDS[a.command](a)


if __name__ == "__main__":
    from fair.command_line import run_command
    sys.exit(run_command("cluster", lambda: main(sys.argv[1:])))
