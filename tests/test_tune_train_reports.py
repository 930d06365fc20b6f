"""tune.train_reports: a Train run's reports reach its Tune trial in order, also when Tune's loop is slow to
take them (where Ray's TuneReportCallback deadlocks: the module docstring), and fit()'s error after them.

The Train run is a stand-in whose fit() calls the real ForwardReports callback the way the Train controller
does, then returns at once: the sweep tests run real TorchTrainers through this path (runner `trainer`).
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

pytestmark = [pytest.mark.ray]


class _Run:
    """fit(): reports epochs 1..n through ForwardReports (the last with a checkpoint), then returns or raises."""

    def __init__(self, queue, n: int, error: str | None = None):
        self.queue, self.n, self.error = queue, n, error

    def fit(self):
        from tune.train_reports import ForwardReports
        cb = ForwardReports(self.queue)
        for e in range(1, self.n + 1):
            ckpt = SimpleNamespace(path=f"/storage/checkpoint_{e}") if e == self.n else None
            cb.after_report(None, [{"epoch": e}, {"epoch": e, "rank": 1}], ckpt)
        if self.error:
            raise RuntimeError(self.error)


def _trial(config):
    from tune.train_reports import fit_and_forward, reports_queue
    q = reports_queue()
    fit_and_forward(_Run(q, 3, config["error"]), q, poll_s=0.2)


def _tune(storage, error=None, slow_s=0.0):
    """Run _trial once under Tune, with a callback that holds Tune's loop `slow_s` on the first result;
    returns (the epochs Tune saw, with checkpoint paths, the result grid's one result)."""
    import ray.tune
    seen = []

    class Slow(ray.tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen.append((result["epoch"], result.get("checkpoint_path")))
            if result["epoch"] == 1:
                time.sleep(slow_s)          # the Train run ends meanwhile; its later reports wait in the queue

    tuner = ray.tune.Tuner(_trial, param_space={"error": error},
                           run_config=ray.tune.RunConfig(storage_path=str(storage), callbacks=[Slow()],
                                                         failure_config=ray.tune.FailureConfig(max_failures=0)))
    return seen, tuner.fit()[0]


def test_every_report_reaches_tune_in_order_while_tunes_loop_is_slow(ray_session, tmp_path):
    t = time.monotonic()
    seen, result = _tune(tmp_path, slow_s=3.0)
    assert result.error is None
    assert seen == [(1, None), (2, None), (3, "/storage/checkpoint_3")]     # rank 0's, each once, in order
    assert time.monotonic() - t < 120


def test_fits_error_fails_the_trial_after_its_reports(ray_session, tmp_path):
    seen, result = _tune(tmp_path, error="worker group failed: out of retries")
    assert [e for e, _ in seen] == [1, 2, 3]
    assert result.error is not None and "worker group failed: out of retries" in str(result.error)
