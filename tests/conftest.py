"""Shared fixtures: offline environment, a synthetic image-folder dataset, a tiny-model config."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.s3 import s3_server  # noqa: E402,F401  (fixture, for use_s3)

RAY_WATCHDOG_S = float(os.environ.get("FAIR_TEST_RAY_WATCHDOG_S", "300"))
WATCHDOG_KEY = pytest.StashKey[str]()


def pytest_sessionstart(session):
    """Say so up front when the disk is nearly full. SeaweedFS refuses writes once under 1% of its disk is free
    (each S3 test then spends minutes on retries and fails) and Ray needs room for its session logs."""
    usage = shutil.disk_usage(tempfile.gettempdir())
    need = max(5 * 2**30, 0.02 * usage.total)
    if usage.free < need:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"warning: {usage.free / 2**30:.1f} GiB free in {tempfile.gettempdir()}, under the "
                                f"{need / 2**30:.1f} GiB the S3 and Ray tests need: free some space first",
                                yellow=True)


def pytest_collection_modifyitems(config, items):
    """Modules with a `slow` test first, then those with a Ray test, then the rest (stable otherwise; a
    module's items stay together). Under pytest-xdist (`--dist loadfile --no-loadscope-reorder`, the
    Makefile) each worker takes whole modules in this order: the long sweeps start early and the short
    modules fill in at the end, instead of both workers ending on a minutes-long module each."""
    def rank(item) -> int:
        names = {m.name for m in item.iter_markers()}
        return 0 if "slow" in names else 1 if "ray" in names else 2

    def module(item) -> str:
        return item.nodeid.split("::")[0]
    module_rank: dict[str, int] = {}
    for item in items:
        module_rank[module(item)] = min(rank(item), module_rank.get(module(item), 2))
    items.sort(key=lambda item: module_rank[module(item)])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test gets in its report Ray's state if it ran past the watchdog (pytest_runtest_call), and if
    it used SeaweedFS the server's free disk and log tail."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        if WATCHDOG_KEY in item.stash:
            report.sections.append((f"Ray after {RAY_WATCHDOG_S:.0f} s", item.stash[WATCHDOG_KEY]))
        for name in ("private_s3_server", "s3_server", "use_s3"):
            server = getattr(item, "funcargs", {}).get(name)
            if server is not None and hasattr(server, "diagnosis"):
                report.sections.append((f"SeaweedFS ({name})", server.diagnosis()))


def ray_state() -> str:
    """What this process's Ray holds now (resources, live actors, placement groups not yet removed): why a
    sweep test waits, written out when one runs long."""
    import ray
    if not ray.is_initialized():
        return "ray: not initialized in this process"
    from ray.util import state
    lines = [f"ray available {ray.available_resources()} of {ray.cluster_resources()}"]
    try:
        for a in state.list_actors(filters=[("state", "!=", "DEAD")], limit=200, raise_on_missing_output=False):
            lines.append(f"actor {a.class_name} {a.state} pid={a.pid} job={a.job_id} name={a.name!r}")
        for pg in state.list_placement_groups(filters=[("state", "!=", "REMOVED")], limit=200, detail=True,
                                              raise_on_missing_output=False):
            lines.append(f"placement group {pg.placement_group_id[:12]} {pg.state} {pg.name!r} "
                         f"bundles={[b.get('unit_resources') for b in (pg.bundles or [])]}")
    except Exception as e:  # noqa: BLE001 - a diagnosis must never fail the test run
        lines.append(f"ray state API: {type(e).__name__}: {e}")
    lines += tune_state() + actor_stacks()
    return "\n".join(lines)


def tune_state() -> list[str]:
    """Tune's own view in this process: each trial's status and actor, and what its event loop waits on."""
    import gc
    lines = []
    try:
        for ctrl in [o for o in gc.get_objects() if type(o).__name__ == "TuneController"]:
            for t in ctrl.get_trials():
                lines.append(f"tune trial {t.trial_id} {t.status} actor={t.temporary_state.ray_actor} "
                             f"last_epoch={(t.last_result or {}).get('epoch')} staged={t in ctrl._staged_trials}")
            am = ctrl._actor_manager
            lines.append(f"tune actor manager: {am.num_live_actors} live, {am.num_pending_actors} pending; "
                         f"awaits {len(am._resource_manager.get_resource_futures())} resource, "
                         f"{len(am._actor_state_events.get_futures())} actor-state, "
                         f"{len(am._actor_task_events.get_futures())} task futures")
    except Exception as e:  # noqa: BLE001
        lines.append(f"tune state: {type(e).__name__}: {e}")
    return lines


def actor_stacks() -> list[str]:
    """py-spy stacks of this machine's live Tune and Train actors (the trial drivers and controllers)."""
    import subprocess
    import sys
    from pathlib import Path
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return []
    from ray.util import state
    lines = []
    try:
        for a in state.list_actors(filters=[("state", "=", "ALIVE")], limit=200, raise_on_missing_output=False):
            if a.pid and a.class_name in ("ImplicitFunc", "TrainController", "RayTrainWorker"):
                out = subprocess.run([str(py_spy), "dump", "--pid", str(a.pid)], capture_output=True, text=True,
                                     timeout=30)
                lines.append(f"--- py-spy {a.class_name} pid={a.pid}\n{out.stdout}{out.stderr}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"py-spy: {type(e).__name__}: {e}")
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A test still running after FAIR_TEST_RAY_WATCHDOG_S seconds writes Ray's state to the terminal,
    uncaptured: a hang in CI then says what it waited for before pytest-timeout shows where it waited."""
    import sys
    import threading

    def dump():
        text = ray_state()
        item.stash[WATCHDOG_KEY] = text      # a section of the report if the test fails (pytest-xdist workers
        capture = item.config.pluginmanager.getplugin("capturemanager")   # print nothing to the terminal)
        with capture.global_and_fixture_disabled():
            sys.stderr.write(f"\n--- {item.nodeid} still running after {RAY_WATCHDOG_S:.0f} s ---\n{text}\n")
            sys.stderr.flush()

    timer = threading.Timer(RAY_WATCHDOG_S, dump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(scope="session")
def use_s3(request):
    """SeaweedFS when installed (started BEFORE Ray, so Ray's workers inherit its AWS_* env), else None."""
    from tests.s3 import weed_binary
    if weed_binary() is None:
        return None
    return request.getfixturevalue("s3_server")


@pytest.fixture(scope="module")
def ray_session(use_s3):
    """A local Ray of the module's own (4 logical CPUs), shut down after it: the multi-node modules must find
    none in the process, and under pytest-xdist a worker runs several modules in turn. Yields its address."""
    import ray
    import tune.ray_session
    from tune.sweep_config import RayOptions
    started = tune.ray_session.init(None, RayOptions(num_cpus=4, worker_start_timeout_s=30))
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


CLASSES = ["red square", "green circle", "blue triangle", "yellow cross"]
COLORS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 220, 40)]


def _draw(c: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A noisy image of class c: a coloured shape on a grey background at a random offset."""
    img = np.full((size, size, 3), 120, np.uint8) + rng.integers(0, 30, (size, size, 3), dtype=np.uint8)
    cx, cy = rng.integers(12, size - 12, 2)
    yy, xx = np.mgrid[:size, :size]
    shape = [np.maximum(abs(xx - cx), abs(yy - cy)) < 8, (xx - cx) ** 2 + (yy - cy) ** 2 < 64,
             (yy - cy > -8) & (yy - cy < 8) & (abs(xx - cx) < (yy - cy + 8) / 2),
             (abs(xx - cx) < 3) | (abs(yy - cy) < 3)][c] & (abs(xx - cx) < 9) & (abs(yy - cy) < 9)
    img[shape] = COLORS[c]
    return img


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory):
    """<root>/{train,test}/<class>/*.png (4 classes, 16 train + 6 test each) and a CuPL descriptions file."""
    from PIL import Image
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for part, n in (("train", 16), ("test", 6)):
        for c, name in enumerate(CLASSES):
            d = root / part / name.replace(" ", "_")
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_draw(c, rng)).save(d / f"{i:03d}.png")
    desc = {name: [f"a {name.split()[0]} {name.split()[1]} shape.", f"a picture of a {name}.",
                   f"a {name.split()[1]} painted {name.split()[0]}."] for name in CLASSES}
    (root / "descriptions.json").write_text(json.dumps(desc))
    return root


@pytest.fixture
def tiny_cfg(imagefolder, tmp_path):
    """A nested config dict for a 2-epoch FAIR run of the tiny random model on the synthetic folder."""
    return tiny_config(imagefolder, tmp_path)


def tiny_config(imagefolder, tmp_path) -> dict:
    """tiny_cfg's dict, for fixtures of a wider scope: runs and caches go under `tmp_path`."""
    return {
        "method": "fair", "seed": 0,
        "model": {"name": "fair-tiny-vit", "pretrained": "", "device": "cpu"},
        "data": {"dataset": "imagefolder", "root": str(imagefolder),
                 "descriptions": str(imagefolder / "descriptions.json"), "val_per_class": 3, "num_workers": 0},
        "train": {"epochs": 2, "batch_size": 16},
        "local": {"num_crops": 3, "top_k": 2},
        "eval": {"local_views": 3, "batch_size": 32},
        "run": {"out_dir": str(tmp_path / "runs"), "cache_root": str(tmp_path / "cache"), "progress": False},
    }
