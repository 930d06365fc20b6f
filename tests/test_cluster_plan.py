"""cluster.plan: the arithmetic behind `fair cluster plan` / `fair sweep --plan` (offline, no Ray)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cluster import plan as planner
from cluster.plan import asha_epochs, calibration_from_records, load_records
from cluster.resources import NodeType
from tune.sweep_config import EarlyStopping, from_mapping

ROOT = Path(__file__).resolve().parents[1]
PAPER13 = ["caltech101", "dtd", "eurosat", "fgvc_aircraft", "flowers102", "food101", "oxford_pets",
           "stanford_cars", "sun397", "ucf101", "cub200", "birdsnap", "resisc45"]


def sweep(**budget) -> dict:
    return {"name": "t", "datasets": PAPER13,
            "base": {"model": {"name": "ViT-B-32"}, "data": {"val_per_class": 5}},
            "budget": {"trials_per_dataset": 10, "epochs": 10, **budget},
            "resources": {"num_workers": 1, "per_worker": {"CPU": 2, "GPU": 0.25}, "trial_driver_cpu": 0.01}}


def estimate_of(sweep_mapping: dict, *args, **kw):
    """The plan's numbers for a sweep file's mapping, read as `fair cluster plan` reads it (by tune)."""
    return planner.estimate(from_mapping(sweep_mapping), *args, **kw)


def plan_of(sweep_mapping: dict, *args, **kw) -> str:
    return planner.plan(from_mapping(sweep_mapping), *args, **kw)


def test_trials_and_packing():
    e = estimate_of(sweep())
    assert e.trials == 13 * (10 + 3) == sum(d.trials + d.final_trials for d in e.datasets)   # 3 final seeds
    assert e.request.gpus == 0.25 and e.trials_per_gpu == 4
    small = next(u for u in e.node_use if u.node.name == "gpu-small")
    assert small.trials_per_node == 4          # 1 GPU / 0.25; 16 CPUs hold 4 x 2.01
    assert e.concurrency == sum(u.nodes * u.trials_per_node for u in e.node_use) <= e.trials


def test_gpu_hours_linear_in_epochs():
    a, b = estimate_of(sweep(epochs=5)), estimate_of(sweep(epochs=10))
    fixed = [d.trial_gpu_s - 5 * (b.datasets[i].trial_gpu_s - d.trial_gpu_s) / 5 for i, d in enumerate(a.datasets)]
    for i, d in enumerate(b.datasets):      # trial = fixed + epochs x per-epoch
        per_epoch = (d.trial_gpu_s - a.datasets[i].trial_gpu_s) / 5
        assert d.trial_gpu_s == pytest.approx(fixed[i] + 10 * per_epoch)
    c = estimate_of(sweep(epochs=20))
    assert c.gpu_hours() - b.gpu_hours() == pytest.approx(2 * (b.gpu_hours() - a.gpu_hours()))
    b2 = estimate_of(sweep(epochs=10, final_seeds=2))          # search and final trials cost the same
    assert b2.gpu_hours() == pytest.approx(2 * estimate_of(sweep(trials_per_dataset=5, final_seeds=1)).gpu_hours())


def test_gpu_hours_independent_of_packing_wall_time_not():
    quarter = estimate_of(sweep())
    whole = copy.deepcopy(sweep())
    whole["resources"]["per_worker"] = {"CPU": 2, "GPU": 1}
    whole = estimate_of(whole)
    # Only the per-trial start (orchestration + setup), when a trial holds its GPU share idle, depends on it.
    from cluster.plan import RUNNER_OVERHEAD_S, SETUP_S
    idle = SETUP_S + RUNNER_OVERHEAD_S["trainer"]
    assert whole.gpu_hours() - quarter.gpu_hours() == pytest.approx(169 * idle * (1 - 0.25) / 3600)
    assert whole.wall_hours() != pytest.approx(quarter.wall_hours())
    assert whole.trials_per_gpu == 1
    small = next(u for u in whole.node_use if u.node.name == "gpu-small")
    assert small.trials_per_node == 1


def test_cpu_bound_packing():
    """g5.2xlarge-like node (8 CPUs): four {CPU 2} trials + drivers (8.04) do not fit, three do."""
    node = NodeType("n", {"CPU": 8, "GPU": 1}, max_workers=2, instance="g5.2xlarge", accelerator="A10G")
    one = {"name": "f", "datasets": ["dtd"], "budget": {"trials_per_dataset": 3, "final_seeds": 1},
           "resources": {"num_workers": 1, "per_worker": {"GPU": 0.25, "CPU": 2}}}
    assert node.trials_per_node(from_mapping(one).resources) == 3
    e = estimate_of(one, node_types=[node])
    assert e.concurrency == 4 and e.node_use[0].nodes == 2


def test_ddp_trials_span_nodes():
    ddp = sweep()
    ddp["resources"] = {"num_workers": 4, "per_worker": {"CPU": 8, "GPU": 1}}
    e = estimate_of(ddp)
    assert e.request.gpus == 4
    assert {u.node.name: u.trials_per_node for u in e.node_use} .get("gpu-large") == 1


def test_max_concurrent_and_unfit():
    assert estimate_of(sweep(max_concurrent=6)).concurrency == 6
    big = sweep()
    big["resources"]["per_worker"] = {"GPU": 8}
    e = estimate_of(big)
    assert e.concurrency == 0 and e.unfit and "GPU 8" in e.unfit[0]
    assert "none can hold one trial" in plan_of(big)


def test_asha_expected_epochs():
    assert asha_epochs(15, None) == 15
    assert asha_epochs(15, EarlyStopping(grace_period=3, reduction_factor=3)) == pytest.approx(3 + 6 / 3 + 6 / 9)
    e_full, e_asha = estimate_of(sweep(epochs=15)), estimate_of(sweep(epochs=15, early_stopping={"grace_period": 3,
                                                                                              "reduction_factor": 3}))
    assert e_asha.gpu_hours(asha=True) < e_asha.gpu_hours() == pytest.approx(e_full.gpu_hours())


def test_calibration_from_records(tmp_path):
    rec = {"schema_version": 1, "status": "completed", "backbone": "ViT-B-32", "dataset": "dtd",
           "timings": {"images_per_s": 100.0, "setup_s": 30.0, "train_s": 10, "epochs": 2},
           "provenance": {"device": "cuda"}}
    d = tmp_path / "records" / "dataset=dtd"
    d.mkdir(parents=True)
    (d / "a.json").write_text(json.dumps(rec))
    (d / "b.json").write_text(json.dumps({**rec, "timings": {**rec["timings"], "images_per_s": 300.0}}))
    (d / "junk.json").write_text("{}")
    recs = load_records([tmp_path])
    assert len(recs) == 2
    cal = calibration_from_records(recs, gpu_fraction=0.25)
    assert cal["train_image_s"]["ViT-B-32"] == pytest.approx((0.25 / 100 + 0.25 / 300) / 2)   # median
    e = estimate_of(sweep(), cal)
    assert all(w.source == "measured" for w in e.datasets)
    assert "measured" in plan_of(sweep(), cal).splitlines()[0]


def test_plan_text_says_estimates_and_totals():
    text = plan_of(sweep())
    assert "ESTIMATES" in text and "13 studies x (10 search + 3 final seeds) = 169" in text
    assert "4 trials per GPU" in text
    assert "GPU-hours" in text and "on-demand" in text and "spot" in text
    for ds in PAPER13:
        assert f"\n  fair/{ds} " in text


@pytest.mark.parametrize("bad, says", [
    ({"name": "x"}, "needs 'datasets'"),
    ({"name": "x", "datasets": [{"name": "dtd"}]}, "datasets[0]"),             # tune's list of names only
    ({"name": "x", "datasets": ["dtd"], "resources": {"num_workers": 0}}, "num_workers"),
    ({"name": "x", "datasets": ["dtd"], "resources": {"workers_per_trial": 1}}, "resources.workers_per_trial"),
    ({"name": "x", "datasets": ["dtd"], "base": {"train": {"lrr": 1e-4}}}, "train.lrr"),   # dataset's FairConfig
])
def test_plan_refuses_what_the_sweep_refuses(bad, says, tmp_path, capsys):
    """The plan reads the sweep file through tune: its one schema, its errors (one line, exit 2)."""
    import yaml
    from fair.cli import main
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["cluster", "plan", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err


def test_plan_reads_a_base_file_beside_the_sweep_file(tmp_path, monkeypatch, capsys):
    """`base: fair.yaml` is relative to the sweep file, for the plan as for the sweep."""
    import yaml
    from fair.cli import main
    (tmp_path / "fair.yaml").write_text(yaml.safe_dump({"model": {"name": "ViT-L-14"}}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "x", "datasets": ["dtd"], "base": "fair.yaml"}))
    monkeypatch.chdir(ROOT)
    assert main(["cluster", "plan", "--config", str(tmp_path / "s.yaml")]) == 0
    assert "backbone ViT-L-14" in capsys.readouterr().out


def test_real_sweep_files_plan(capsys):
    """Every shipped sweep file plans through the CLI (tolerant of the tune helper's schema)."""
    from fair.cli import main
    for path in sorted((ROOT / "configs" / "sweeps").glob("*.yaml")):
        assert main(["cluster", "plan", "--config", str(path)]) == 0
        assert "ESTIMATES" in capsys.readouterr().out


def test_direct_runner_costs_less_orchestration_per_trial():
    from cluster.plan import RUNNER_OVERHEAD_S
    trainer, direct = sweep(), sweep()
    direct["resources"]["runner"] = "direct"
    saved = estimate_of(trainer).gpu_hours() - estimate_of(direct).gpu_hours()
    per_trial = (RUNNER_OVERHEAD_S["trainer"] - RUNNER_OVERHEAD_S["direct"]) * 0.25 / 3600
    assert saved == pytest.approx(169 * per_trial)


def test_global_max_workers_caps_all_node_types():
    """The launcher's top-level max_workers bounds the worker nodes of all types together (Ray's rule)."""
    small = NodeType("small", {"CPU": 16, "GPU": 1}, max_workers=8, instance="g5.4xlarge", accelerator="A10G",
                     spot=True)
    large = NodeType("large", {"CPU": 48, "GPU": 4}, max_workers=2, instance="g5.12xlarge", accelerator="A10G")
    free = estimate_of(sweep(), node_types=[small, large])
    assert free.concurrency == 8 * 4 + 2 * 16 and not free.capped
    capped = estimate_of(sweep(), node_types=[small, large], max_workers=8)
    assert sum(u.nodes for u in capped.node_use) == 8 and capped.concurrency == 8 * 4 and capped.capped
    assert "capped by the launcher's top-level max_workers: 8" in plan_of(sweep(), node_types=[small, large],
                                                                          max_workers=8)
    assert estimate_of(sweep(max_concurrent=20), node_types=[small, large], max_workers=8).capped is False


def test_plan_cli_reads_the_launchers_global_cap(tmp_path, capsys):
    import yaml
    from fair.cli import main
    launcher = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    launcher["max_workers"] = 8
    path = tmp_path / "aws-capped.yaml"
    path.write_text(yaml.safe_dump(launcher))
    cfg = str(ROOT / "configs" / "sweeps" / "paper13-vitb32.yaml")
    assert main(["cluster", "plan", "--config", cfg, "--set", "budget.max_concurrent=null",
                 "--cluster-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "concurrency: 32 trials at once" in out and "max_workers: 8" in out
    assert "set budget.max_concurrent: 32" in out


def test_shipped_launchers_plan_their_full_size():
    """Each launcher's global cap is the sum of its per-type caps, so the plan's concurrency is real."""
    from cluster.validate import node_types, read_yaml, worker_cap
    for name in ("aws-gpu.yaml", "gcp-gpu.yaml"):
        raw = read_yaml(ROOT / "cluster" / name)
        nodes = node_types(raw)
        assert worker_cap(raw) == sum(n.max_workers for n in nodes), name
        assert not estimate_of(sweep(trials_per_dataset=40), node_types=nodes, max_workers=worker_cap(raw)).capped


def test_max_concurrent_hint_only_when_the_sweep_cannot_see_the_cluster():
    auto = sweep()
    auto["resources"]["check_cluster"] = False
    assert f"set budget.max_concurrent: {estimate_of(auto).concurrency}" in plan_of(auto)
    assert "set budget.max_concurrent" not in plan_of(sweep())                      # check_cluster on
    auto["budget"]["max_concurrent"] = 12
    assert "set budget.max_concurrent" not in plan_of(auto)                         # already set


def test_sweep_plan_takes_smoke_test(capsys):
    """`fair sweep --config X --plan --smoke-test` plans the shrunk sweep (it was 'unrecognized arguments')."""
    from fair.cli import main
    assert main(["sweep", "--config", str(ROOT / "configs" / "sweeps" / "demo.yaml"), "--plan", "--smoke-test",
                 "--storage", "s3://b/p"]) == 0
    out = capsys.readouterr().out
    assert "sweep 'demo-smoke'" in out and "2 studies x (1 search + 1 final seeds) = 4, 1 epochs each" in out


@pytest.mark.parametrize("extra, says", [
    (["--plan", "--dry-run"], "takes no --dry-run"),              # run-only flags mean nothing to a plan
    (["--plan", "--address", "auto"], "takes no --address"),
    (["--records", "runs"], "inputs of --plan"),                  # plan inputs without --plan
    (["--cluster-config", "cluster/aws-gpu.yaml"], "inputs of --plan"),
])
def test_sweep_plan_flags_are_checked_in_one_line(extra, says, capsys):
    from fair.cli import main
    assert main(["sweep", "--config", str(ROOT / "configs" / "sweeps" / "demo.yaml"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_python_m_tune_cli_refuses_plan_in_one_line():
    """python -m tune.cli is `fair sweep` without --plan (the planner is cluster/'s; tune never imports it)."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "tune.cli", "--config", "configs/sweeps/demo.yaml", "--plan"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "fair sweep --config FILE --plan" in p.stderr


def test_crop_cost_is_averaged_over_the_search_space():
    """`tokens` trials cut no crops and a searched local.num_crops counts at its mean, so the space, not
    only the base config, sets the per-trial cost."""
    def hours(space):
        return estimate_of({**sweep(), "space": space}).gpu_hours()
    tokens = hours({"local.source": "tokens"})
    crops16 = hours({"local.source": "crops", "local.num_crops": 16})
    default = estimate_of({**sweep(), "space": "default"})
    assert default.views == (5.0, 4.0)             # half the trials crops, num_crops 4..16 -> 10; 8 views
    assert tokens < default.gpu_hours() < crops16
    lr_only = {"train.lr": {"loguniform": [1e-5, 1e-3]}}
    assert estimate_of({**sweep(), "space": lr_only}).views == (8.0, 8.0)   # no crop key searched: FAIR's


def test_an_unset_space_is_planned_as_the_default_space_the_sweep_searches():
    from tune.space import DEFAULT_SPACE
    default = estimate_of({**sweep(), "space": DEFAULT_SPACE})
    for raw in ({}, {"space": None}, {"space": "default"}):
        e = estimate_of({**sweep(), **raw})
        assert e.views == default.views and e.gpu_hours() == pytest.approx(default.gpu_hours())


def test_methods_are_priced_per_study_with_their_final_seeds():
    """Each method x dataset is a study with the same budget; a training-free method (wca) costs its set-up
    and evaluation only, whatever the epochs; final re-runs run their full epochs, also under ASHA."""
    two = {**sweep(trials_per_dataset=4, final_seeds=2, early_stopping={"grace_period": 1, "reduction_factor": 3}),
           "datasets": ["dtd", "eurosat"], "methods": {"fair": "default", "wca": {"anchors.tau_text": {"uniform": [0, 50]}}}}
    e = estimate_of(two)
    assert [d.name for d in e.datasets] == ["fair/dtd", "fair/eurosat", "wca/dtd", "wca/eurosat"]
    assert e.trials == 4 * (4 + 2) and all((d.trials, d.final_trials) == (4, 2) for d in e.datasets)
    fair, wca = e.datasets[0], e.datasets[2]
    assert wca.trial_gpu_s < fair.trial_gpu_s and wca.trial_gpu_s == wca.trial_gpu_s_asha
    assert fair.gpu_s(asha=True) == pytest.approx(4 * fair.trial_gpu_s_asha + 2 * fair.trial_gpu_s)
    text = plan_of(two)
    assert "methods fair, wca" in text and "4 studies x (4 search + 2 final seeds) = 24" in text
