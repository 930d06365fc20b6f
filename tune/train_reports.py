"""Reports of a Ray Train run passed on to the Tune trial that runs it (runner `trainer`, tune.trainable).

Ray's own bridge, ray.tune.integration.ray_train.TuneReportCallback, hands each report to the trial's *main*
thread, which puts it on the Tune session's one-slot result queue that only it empties. When the last report
still waits in the bridge's queue as fit() returns, the training thread first queues its "function returned"
result, the main thread then blocks for ever putting the last report behind it, and the sweep hangs with the
trial's actor alive and its Train run gone (seen in about one CI run in four, after a lost node or an errored
trial). Here the trial's training thread itself passes every report to ray.tune.report, in order, while fit()
runs on a thread of its own, as under the `direct` runner: there is one producer and one consumer.
"""
from __future__ import annotations

import threading

import ray
import ray.tune
from ray.train import UserCallback
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

CHECKPOINT_PATH_KEY = "checkpoint_path"       # the key Ray's TuneReportCallback gives the checkpoint's path


class ForwardReports(UserCallback):
    """Runs in the Train controller: each report of rank 0, with the path of its checkpoint in storage, goes
    onto `queue` (unbounded: the Train run never waits for Tune's loop)."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        m = dict(metrics[0])
        if checkpoint is not None:
            m[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.queue.put(m)


def reports_queue() -> Queue:
    """The queue a trial's ForwardReports fill, on this (the trial's) node, like the Train controller: it
    shares their fate when the node is lost. fit_and_forward removes it."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def fit_and_forward(trainer, queue: Queue, poll_s: float = 0.5) -> None:
    """Run `trainer.fit()` on a thread of its own while the calling thread (the trial's training thread)
    passes each forwarded report to Tune. Returns once fit() has returned and every report is passed on;
    raises fit()'s error, if any, after them. The queue is removed either way."""
    outcome: dict = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - raised again on the training thread below
            outcome["error"] = e

    t = threading.Thread(target=fit, name="train-fit", daemon=True)
    t.start()
    try:
        while True:
            done = not t.is_alive()      # read before the queue: every report is queued before fit() returns
            try:
                ray.tune.report(queue.get(block=True, timeout=poll_s))
            except Empty:
                if done:
                    break
    finally:
        ray.kill(queue.actor)
    if "error" in outcome:
        raise outcome["error"]
