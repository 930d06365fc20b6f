"""One Optuna study per method x dataset inside a single Tuner, so every study's trials share the cluster.

`StudySearcher` holds one `OptunaSearch` (own study, own seed, its method's define-by-run space) per study
(`<method>/<dataset>`, tune.studies) and hands out suggestions among the studies that still have budget, in
the sweep's `search.order` (tune.study_order: by need from their measured trial durations, or round-robin),
then each study's final-seed re-runs of its best configuration; results and completions are routed back to
the owning study by trial id.

The studies live in an Optuna storage (tune.optuna_storage: a SQLite file beside the sweep by default, or a
database URL), which is their one source of truth: every study trial carries its Tune trial id (user attr
`tune_trial_id`), and the searcher's own state, pickled with the Tune experiment, holds its bookkeeping and
the samplers but never the studies nor the storage (whose URL may name a password). A restored searcher
re-reads the studies (`_attach`): a trial that the storage holds as finished is never told again (a driver
killed between a tell and Tune's next snapshot), and a RUNNING trial of no known Tune trial (asked by that
driver after the snapshot, perhaps before it carried its Tune id) is handed to the next suggestion of its study
instead of asking a new one.

`PerStudyASHA` does the same for early stopping: accuracies of different studies are not comparable, so
each study gets its own ASHA rungs (final-seed re-runs always run to the end).

How a trial ended reaches its study as one Optuna state (`outcome`): COMPLETE only with the trial's final
report (its real objective), PRUNED when it ended without one (stopped by the scheduler: its last result
is an epoch's global-head accuracy, not comparable with a final objective, so it must never be a study's
best), FAIL on error. A trial that errored and was resumed by a later `fair sweep` (same trial id) comes
back with its late result: Optuna cannot tell a finished trial again, so the study gets a copy of it (same
parameters and distributions) in the late state, once (`StudySearcher._tell_late`).
"""
from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Optional

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from tune.study_order import StudyProgress, early_finals_due, priority
from tune.studies import FINAL, SEARCH, stage_of

log = logging.getLogger("tune.searcher")
METRIC = "objective"   # what every report carries: the sweep's objective (val_top1 or head_agreement)
LATE_ATTR = "resumed_trial_id"   # user attr of a study trial added for a trial that errored, then resumed
TUNE_ATTR = "tune_trial_id"      # user attr of every study trial: the Tune trial it is
_LIVE = ("_ot_study", "_storage", "_ot_trials", "_completed_trials")   # an OptunaSearch's storage-bound parts


def outcome(result: Optional[Dict], error: bool) -> str:
    """The Optuna state of a trial that ended with `result` (its last one): FAIL on error or when its final
    report has no objective, PRUNED when it ended without its final report (a scheduler stopped it), else
    COMPLETE. The final report is the one place a finished trial's objective is (tune.trainable)."""
    from tune.progress import finished_result
    if error:
        return "FAIL"
    if not finished_result(result):
        return "PRUNED"
    return "COMPLETE" if result.get(METRIC) is not None else "FAIL"


def make_sampler(kind: str, seed: int):
    import optuna
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # multivariate TPE with group=True models conditional subspaces jointly; plain TPE is the default
    if kind == "tpe-multivariate":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    return optuna.samplers.TPESampler(seed=seed)




@dataclass
class HandOut:
    """How a sweep hands its trials out in this process (set by `fair sweep` from its config; a resumed sweep
    takes the rerun's): `order` (search.order, tune.study_order), `max_running` (the cap on one study's search
    trials in flight, search.max_running_share; None: none), `early_finals` (search.early_finals: a study's finals
    may re-run its current pick before its search has ended), `prior` ({study:
    (search, full)} trial durations a cost model expects, in any unit: tune.study_order.durations),
    `settled_epoch` (search.speculative_finals: ASHA's last rung, past which a running search trial may be
    re-run by early finals beside the pick's; None: only the pick is)."""
    order: str = "critical_path"
    max_running: Optional[int] = None
    early_finals: bool = True
    prior: Dict[str, tuple] = field(default_factory=dict)
    settled_epoch: Optional[int] = None


class StudySearcher(Searcher):
    """Optuna studies (one per method x dataset) with a search budget each, in `order` (tune.study_order),
    then each study's final-seed re-runs.

    A trial's Tune config is `{"study", "stage": "search", "hparams"}` while its study has search budget
    left. Once every search trial of a study has ended (completed, stopped or failed), its best completed
    trial on the objective is picked and re-run once per seed of `final_seeds[study]`:
    `{"study", "stage": "final", "seed", "picked_from": <search trial id>, "hparams": <its values>}`.
    Final trials are not told to the study (they are no search) and are never early-stopped. While a
    study waits for its last search trials, `suggest` returns None (Tune asks again later); when no study
    has anything left to run, FINISHED. A study without a completed search trial has nothing to re-run.

    Early finals (`HandOut.early_finals`): a study ends the sweep with its chain (its last search trial,
    then its finals), and at the sweep's end most slots wait for it. Once a study's search trials are all
    handed out, a slot runs a final of its current pick while its last search trials still run: first
    when its final alone outlasts all other work left (tune.study_order.early_finals_due), else only when
    no study can use the slot otherwise. The final repeats a configuration with a fixed seed, so it is the
    run a final started later would be. If a search trial ending later becomes the pick, the finals of the
    old one are superseded (`superseded`): FinalsScheduler stops those still running, their seeds are
    handed out again for the new pick, and their records name the old pick in `picked_from`, which
    results.tables never reports.

    Speculative finals (`HandOut.settled_epoch`): with early finals alone a study's chain is its pick's
    whole run, then its final. Under ASHA a search trial past the last rung is no longer stopped, so it
    may yet end as the pick (a `contender`); one whose objective at that rung beats the pick's there (or any,
    while the study has no pick) gets early finals of its own, beside the pick's, which keep running. Each
    configuration's finals run until its search trial is decided: they are superseded when it ends not the
    best, or fails, and kept when it becomes the pick. A configuration superseded this way can never be
    the pick again (a study's best completed objective only improves), so no seed runs twice for one pick.
    """

    stores: Dict[str, object] = {}     # sweep -> its opened tune.optuna_storage.StudyStore (never pickled)
    hand_outs: Dict[str, HandOut] = {}   # sweep -> how it hands trials out in this process (may change on resume)
    live: Dict[str, "StudySearcher"] = {}   # sweep -> its searcher in this process (FinalsScheduler asks it)

    def __init__(self, space, studies: list[str], trials_per_study: int, mode: str, sampler: str = "tpe",
                 seeds: Optional[Dict[str, int]] = None, final_seeds: Optional[Dict[str, list]] = None,
                 sweep: str = "", hand_out: Optional[HandOut] = None):
        """`space`: one SearchSpace for every study, or {study: SearchSpace}; `seeds`: each study's sampler
        seed; `final_seeds`: {study: [seed, ...]} of its final re-runs (None: none); `sweep`: the sweep whose
        Optuna storage (`use_store`) holds the studies, named `<sweep>/<study>` ("": an in-memory storage,
        kept with the searcher's state, for tools and tests); `hand_out`: its HandOut, unless
        `set_hand_out` gave the sweep one in this process."""
        super().__init__(metric=METRIC, mode=mode)
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seeds = seeds or {}
        spaces = space if isinstance(space, dict) else {k: space for k in studies}
        self.sweep = sweep
        self._memory = None if sweep else optuna.storages.InMemoryStorage()
        self.study_keys = list(studies)
        self.budget = {k: trials_per_study for k in self.study_keys}
        self.suggested = {k: 0 for k in self.study_keys}
        self.final_seeds = {k: list((final_seeds or {}).get(k, [])) for k in self.study_keys}
        storage = self._storage()
        from tune.optuna_storage import study_name
        self.studies = {k: OptunaSearch(space=spaces[k], metric=METRIC, mode=mode, study_name=study_name(sweep, k),
                                        sampler=make_sampler(sampler, seeds.get(k, 0)), storage=storage)
                        for k in self.study_keys}
        self.owner: Dict[str, str] = {}     # trial_id -> study
        self.configs: Dict[str, Dict] = {}  # trial_id -> its Tune config (what suggest returned)
        self.ended: Dict[str, list] = {k: [] for k in self.study_keys}    # search trials that ended
        self.values: Dict[str, Dict[str, float]] = {k: {} for k in self.study_keys}   # completed: objective
        self.finals: Dict[str, list] = {k: [] for k in self.study_keys}   # final trial ids emitted
        self.failed: Dict[str, list] = {k: [] for k in self.study_keys}   # search trials that errored
        self.orphans: Dict[str, list] = {k: [] for k in self.study_keys}  # storage trial ids to hand out again
        self.running: set = set()           # trial ids handed out and not ended (finals included)
        self.durations: Dict[str, Dict[str, list]] = {}   # study -> {"search"|"full": [seconds, count]}
        self.superseded: set = set()        # finals of a configuration that is no longer its study's pick
        self.settled: Dict[str, Dict[str, float]] = {k: {} for k in self.study_keys}   # objective at the last rung
        self._hand_out = hand_out or HandOut()
        self._next = 0
        self._attached = True
        self.live[sweep] = self

    @classmethod
    def set_hand_out(cls, sweep: str, hand_out: HandOut) -> None:
        """How `sweep` hands trials out in this process; searchers of that sweep restored afterwards use it."""
        cls.hand_outs[sweep] = hand_out

    @property
    def hand_out(self) -> HandOut:
        return self.hand_outs.get(self.sweep) or getattr(self, "_hand_out", None) or HandOut()

    @classmethod
    def is_superseded(cls, sweep: str, trial_id: str) -> bool:
        """Whether `trial_id` of `sweep` is a final of a configuration its study no longer picks."""
        s = cls.live.get(sweep)
        return s is not None and trial_id in s.superseded

    @classmethod
    def use_store(cls, sweep: str, store) -> None:
        """The Optuna storage of `sweep` in this process; searchers of that sweep restored afterwards use it."""
        cls.stores[sweep] = store

    def _storage(self):
        if not self.sweep:
            return self._memory
        if self.sweep not in self.stores:
            raise RuntimeError(f"no Optuna storage opened for sweep {self.sweep!r} (tune.sweep.run opens it)")
        return self.stores[self.sweep].storage

    def _attach(self) -> None:
        """After a restore: open every study in the storage and take its trials as they are there
        (`_reconcile`). The sampler and the bookkeeping come from the restored state."""
        if self._attached:
            return
        storage = self._storage()
        for k, s in self.studies.items():
            s._storage = storage
            s._setup_study(self.mode)        # Ray's create_study(load_if_exists=True): the stored study
            self._reconcile(k)
        self._attached = True

    def _reconcile(self, k: str) -> None:
        """Study `k`'s trials as the storage holds them: each search trial of this searcher finds its study
        trial by its Tune trial id (finished ones are never told again); RUNNING trials of no known Tune
        trial (or of none) were asked by a driver that died before Tune's snapshot: the next suggestions
        take them."""
        import optuna
        s, mine = self.studies[k], {t for t, c in self.configs.items()
                                    if self.owner.get(t) == k and stage_of(c) == SEARCH}
        s._ot_trials, s._completed_trials, self.orphans[k] = {}, set(), []
        for t in s._ot_study.get_trials(deepcopy=False):
            tid = t.user_attrs.get(TUNE_ATTR)
            if tid in mine:
                s._ot_trials[tid] = optuna.Trial(s._ot_study, t._trial_id)
                if t.state.is_finished():
                    s._completed_trials.add(tid)
            elif t.state == optuna.trial.TrialState.RUNNING:
                # asked after the snapshot; with no Tune id when the driver died between the ask and the
                # user attr (two storage writes): the study's trials are this sweep's alone either way
                self.orphans[k].append(t._trial_id)
        lost = sorted(mine - set(s._ot_trials))
        if lost:
            log.warning("the Optuna storage %s lacks %d trials of study %s (%s); their results will not reach it",
                        self.stores[self.sweep].shown if self.sweep else "(memory)", len(lost), k,
                        ", ".join(lost[:5]))

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True   # metric and mode are fixed by the sweep file; the space lives in the studies

    def suggest(self, trial_id: str) -> Optional[Dict]:
        if trial_id in self.configs:     # Tune may ask again for a trial it already has a config for
            return self.configs[trial_id]
        self._attach()
        n = len(self.study_keys)
        rotated = [self.study_keys[(self._next + i) % n] for i in range(n)]
        slots = SweepLimiter.limits.get(self.sweep) or len(self.running) + 1
        searching = Counter(self.owner.get(t) for t in self.running if self.stage(t) == SEARCH)
        progress = [self._progress(k, searching[k]) for k in rotated]
        rules = self.hand_out
        due = early_finals_due(progress, rules.order, slots) if rules.early_finals else [False] * n
        ranked = priority(progress, rules.order, slots, len(self.running), rules.max_running)
        for j in ranked:
            k = rotated[j]
            config = (self._search(k, trial_id) if self.suggested[k] < self.budget[k]
                      else self._final(k, trial_id, early=due[j]))
            if config is not None:
                return self._hand(k, trial_id, config)
        for k in [rotated[j] for j in ranked] if rules.early_finals else ():   # a slot no study can use
            config = self._final(k, trial_id, early=True)
            if config is not None:
                return self._hand(k, trial_id, config)
        return None if any(self._pending(k) for k in self.study_keys) else Searcher.FINISHED

    def _hand(self, k: str, trial_id: str, config: Dict) -> Dict:
        self._next = (self.study_keys.index(k) + 1) % len(self.study_keys)
        self.owner[trial_id], self.configs[trial_id] = k, config
        self.running.add(trial_id)
        return config

    def _progress(self, k: str, running: int) -> StudyProgress:
        """Study `k` as tune.study_order sees it: trials left, `running` (its search trials in flight), mean
        measured durations, the prior's."""
        d = self.durations.get(k, {"search": [0.0, 0], "full": [0.0, 0]})
        mean = {kind: (total / n if n else None) for kind, (total, n) in d.items()}
        return StudyProgress(self.budget[k] - self.suggested[k], running,
                             self._finals_left(k), mean.get("search"), mean.get("full"),
                             (d["search"][1], d["full"][1]), self.hand_out.prior.get(k))

    def _ended(self, trial_id: str, result: Optional[Dict]) -> None:
        """A trial left the cluster: it runs no more, and its duration (Tune's time_total_s) is measured for
        its study, as a search trial and, when it reached its final report, as a full-length trial."""
        from tune.progress import finished_result
        self.running.discard(trial_id)
        k, seconds = self.owner.get(trial_id), (result or {}).get("time_total_s")
        if k is None or not seconds:
            return
        d = self.durations.setdefault(k, {"search": [0.0, 0], "full": [0.0, 0]})
        kinds = (["search"] if self.stage(trial_id) == SEARCH else []) + (["full"] if finished_result(result) else [])
        for kind in kinds:
            d[kind][0] += float(seconds)
            d[kind][1] += 1

    def _search(self, k: str, trial_id: str) -> Dict:
        import optuna
        self.suggested[k] += 1
        s = self.studies[k]
        if self.orphans[k]:      # asked before a driver died: its parameters are kept (define-by-run returns them)
            s._ot_trials[trial_id] = optuna.Trial(s._ot_study, self.orphans[k].pop(0))
        hparams = s.suggest(trial_id)
        s._ot_trials[trial_id].set_user_attr(TUNE_ATTR, trial_id)
        return {"study": k, "stage": SEARCH, "hparams": hparams}

    def _final(self, k: str, trial_id: str, early: bool = False) -> Optional[Dict]:
        """The next final re-run of study `k`'s pick, once its search is over (`early`: once all its search
        trials are handed out; then also of its speculated contenders); None if there is none (yet)."""
        over = len(self.ended[k]) >= self.budget[k]
        if self.suggested[k] < self.budget[k] or not (over or early):
            return None
        unissued = self._unissued(k)
        if not unissued:
            return None
        source, seed = unissued[0]
        self.finals[k].append(trial_id)
        return {"study": k, "stage": FINAL, "seed": seed, "picked_from": source,
                "hparams": self.configs[source]["hparams"]}

    def _unissued(self, k: str) -> list[tuple[str, int]]:
        """(configuration, seed) of study `k`'s finals not handed out yet: its pick's, then its speculated
        contenders' (best at the last rung first)."""
        picked = self.picked(k)
        sources = ([picked] if picked is not None else []) + self._speculated(k, picked)
        out = []
        for source in sources:
            used = {self.configs[t]["seed"] for t in self.finals[k] if self.configs[t]["picked_from"] == source}
            out += [(source, x) for x in self.final_seeds[k] if x not in used]
        return out

    def _finals_left(self, k: str) -> int:
        """Finals of study `k` still to hand out: its (future) pick's seeds not run yet, and its speculated
        contenders'."""
        return (len(self.final_seeds[k]) if self.picked(k) is None else 0) + len(self._unissued(k))

    def contenders(self, k: str) -> list[str]:
        """Search trials of study `k` still running past ASHA's last rung (speculative finals): no rung
        stops them, so each may yet end as its pick; best objective at that rung first."""
        at = self.settled.get(k, {}) if self.hand_out.settled_epoch is not None else {}
        return sorted((t for t in at if t in self.running), key=lambda t: -self._sign * at[t])

    def _speculated(self, k: str, picked: Optional[str]) -> list[str]:
        """The contenders whose finals run beside those of the pick `picked`: those ahead of it at the last
        rung (all, while the study has no pick or its pick has no value there)."""
        at = self.settled.get(k, {})
        if picked is None or picked not in at:
            return self.contenders(k)
        return [t for t in self.contenders(k) if self._sign * at[t] > self._sign * at[picked]]

    def _supersede(self, k: str) -> None:
        """Finals of study `k` that re-run a configuration that is neither its pick nor a contender no
        longer count (FinalsScheduler stops them); the pick's missing seeds are handed out again."""
        keep = {self.picked(k), *self.contenders(k)}
        stale = [t for t in self.finals[k] if self.configs[t]["picked_from"] not in keep]
        for t in stale:
            self.finals[k].remove(t)
            self.superseded.add(t)
        if stale:
            log.info("study %s picks %s now: %d final(s) of another configuration superseded (%s)", k,
                     self.picked(k), len(stale), ", ".join(stale))

    def _pending(self, k: str) -> bool:
        """Whether study `k` will still have a trial to hand out (search budget, or finals to come: while
        its search runs, a later pick may supersede its early finals)."""
        if self.suggested[k] < self.budget[k]:
            return True
        if not self.final_seeds[k]:
            return False
        if len(self.ended[k]) < self.budget[k]:
            return True
        return self.picked(k) is not None and bool(self._unissued(k))   # no contender runs once all ended

    def picked(self, k: str) -> Optional[str]:
        """The search trial of study `k` with the best objective among its completed ones (first on ties)."""
        values = self.values[k]
        if not values:
            return None
        return max(values, key=lambda t: self._sign * values[t])

    @property
    def _sign(self) -> int:
        """+1 when a higher objective is better (mode max), -1 when lower is."""
        return 1 if self.mode == "max" else -1

    def stage(self, trial_id: str) -> str:
        return stage_of(self.configs.get(trial_id))

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        """An epoch's result: kept if it is the settled epoch's (the finals' order). Not reported to the study:
        see _report_pruned."""
        k = self.owner.get(trial_id)
        if k is None or self.stage(trial_id) == FINAL:
            return
        self._settle(k, trial_id, result)

    def _settle(self, k: str, trial_id: str, result: Dict) -> None:
        settled, epoch = self.hand_out.settled_epoch, result.get("epoch")
        if (settled is not None and epoch is not None and epoch >= settled and result.get(METRIC) is not None
                and trial_id not in self.settled[k]):     # Tune passes no result ASHA stopped on
            self.settled[k][trial_id] = result[METRIC]

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        if trial_id in self.running:
            self._ended(trial_id, result)
        k = self.owner.get(trial_id)
        if k is None or self.stage(trial_id) == FINAL:
            return
        self._attach()
        state, study = outcome(result, error), self.studies[k]
        if trial_id not in study._ot_trials:
            log.warning("trial %s [%s] ended but its study has no trial for it (see the warning above)", trial_id, k)
            return
        told = self._told(k, trial_id)
        value = (result or {}).get(METRIC)
        if told is not None and told.state.name != "FAIL":
            # the storage holds how it ended (told before a driver died, or its late copy): the storage wins
            state, value = told.state.name, told.value
        if trial_id not in self.ended[k]:
            self.ended[k].append(trial_id)
        if state == "FAIL" and trial_id not in self.failed[k]:
            self.failed[k].append(trial_id)
        elif state != "FAIL" and trial_id in self.failed[k]:
            self.failed[k].remove(trial_id)
        if state == "COMPLETE":
            self.values[k][trial_id] = value
        self._supersede(k)            # a new pick, or a contender decided
        if told is None:
            if state == "PRUNED" and value is not None and "training_iteration" in result:
                self._settle(k, trial_id, result)        # the epoch it was stopped on (Tune sent it no result)
                self._report_pruned(k, trial_id, result)
            # OptunaSearch tells COMPLETE with the result's objective, else PRUNED, or FAIL when error=True
            study.on_trial_complete(trial_id, result=result if state == "COMPLETE" else None,
                                    error=state == "FAIL")
        elif told.state.name == "FAIL" and state != "FAIL":
            self._tell_late(k, trial_id, result, state)

    def _report_pruned(self, k: str, trial_id: str, result: Dict) -> None:
        """Give study `k` the epoch a stopped trial ended on, as its one intermediate value, before it is told
        PRUNED. TPE ranks a pruned trial by its last step's value alone (Optuna's _get_pruned_trial_score),
        and the study has no pruner (ASHA is Tune's), so reporting every epoch as it came, one storage
        write each in the driver's loop (a network round trip where the storage is a database server), would
        tell it nothing more."""
        s = self.studies[k]
        if trial_id in s._ot_trials and trial_id not in s._completed_trials:
            with warnings.catch_warnings():   # reported before by an older version's run: Optuna keeps the first
                warnings.filterwarnings("ignore", message=".*is already reported")
                s.on_trial_result(trial_id, result)

    def _frozen(self, k: str, trial_id: str):
        """The study's own (frozen) trial of Tune trial `trial_id`, as the storage holds it now."""
        s = self.studies[k]
        return s._ot_study._storage.get_trial(s._ot_trials[trial_id]._trial_id)

    def _told(self, k: str, trial_id: str):
        """How study `k` holds the end of `trial_id`: None while its trial runs; else its late copy if it has
        one (the trial failed, then ended after a resume), else its own finished trial."""
        if trial_id not in self.studies[k]._completed_trials:
            return None
        own = self._frozen(k, trial_id)
        if own.state.name != "FAIL":
            return own
        late = [t for t in self.studies[k]._ot_study.get_trials(deepcopy=False)
                if t.user_attrs.get(LATE_ATTR) == trial_id]
        return late[0] if late else own

    def _tell_late(self, k: str, trial_id: str, result: Dict, state: str) -> None:
        """A trial the study recorded as FAIL ended after all (resumed by a later run, same trial id): add a
        trial with its parameters and distributions in `state`, once (`_told` then returns it)."""
        import optuna
        old = self._frozen(k, trial_id)
        value = result.get(METRIC)
        step = result.get("training_iteration") or result.get("epoch") or 0
        self.studies[k]._ot_study.add_trial(optuna.trial.create_trial(
            params=old.params, distributions=old.distributions, user_attrs={LATE_ATTR: trial_id},
            state=getattr(optuna.trial.TrialState, state), value=value if state == "COMPLETE" else None,
            intermediate_values={int(step): value} if state == "PRUNED" and value is not None else None))
        log.info("trial %s [%s] ended after a resume: its study records it %s", trial_id, k, state)

    def remaining(self) -> Dict[str, int]:
        """Search trials each study has yet to hand out."""
        return {k: self.budget[k] - self.suggested[k] for k in self.study_keys}

    # Tune saves this with the experiment state and restores it on Tuner.restore; the studies themselves are
    # in the Optuna storage (each OptunaSearch is saved without its storage-bound parts, _LIVE)
    _STATE = ("budget", "suggested", "owner", "configs", "ended", "values", "finals", "final_seeds", "study_keys",
              "failed")

    def get_state(self) -> Dict:
        return {**{a: getattr(self, a) for a in self._STATE}, "next": self._next, "memory": self._memory,
                "running": self.running, "durations": self.durations, "superseded": self.superseded,
                "settled": self.settled,
                "studies": {k: _detached(s) for k, s in self.studies.items()}}

    def set_state(self, state: Dict) -> None:
        for a in self._STATE:
            setattr(self, a, state[a])
        # saved by a version without them: durations are measured again, and finished trials leave `running`
        self.running, self.durations = set(state.get("running", ())), state.get("durations", {})
        self.superseded = set(state.get("superseded", ()))
        self.settled = state.get("settled") or {k: {} for k in self.study_keys}
        self.live[self.sweep] = self
        self._next, self._memory = state["next"], state.get("memory")
        # Restored by a rerun, which resumes every errored trial under its id (sweep.run): a study's search
        # is not over until they end again, and one may yet become its pick (its finals wait for it).
        for k, ids in self.failed.items():
            self.ended[k] = [t for t in self.ended[k] if t not in ids]
        for k, st in state["studies"].items():
            self.studies[k].__dict__.update(st)
        self._attached = False
        self._attach()

    def save(self, checkpoint_path: str) -> None:
        """The searcher's state; for a sweep whose studies live in a driver file (an s3 sweep), a copy of that
        file beside it in Tune's staging folder, which Tune uploads with its snapshot (tune.optuna_storage)."""
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.get_state(), fh)
        if self.sweep in self.stores:
            self.stores[self.sweep].snapshot(os.path.dirname(os.path.abspath(checkpoint_path)))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.set_state(pickle.load(fh))

    def __getstate__(self) -> Dict:   # pickled with the Tuner (tuner.pkl): no storage, no live study
        state = self.__dict__.copy()
        state["studies"] = {k: _detached(s) for k, s in self.studies.items()}
        state["_attached"] = False
        return state

    def __setstate__(self, state: Dict) -> None:
        studies = state.pop("studies")
        state.setdefault("running", set())
        state.setdefault("durations", {})
        state.setdefault("superseded", set())
        state.setdefault("settled", {k: {} for k in state.get("study_keys", ())})
        self.__dict__.update(state)
        self.live[self.sweep] = self
        self.studies = {}
        for k, st in studies.items():
            s = OptunaSearch.__new__(OptunaSearch)
            s.__dict__.update(st)
            s._ot_study, s._storage, s._ot_trials, s._completed_trials = None, None, {}, set()
            self.studies[k] = s


def _detached(s: OptunaSearch) -> Dict:
    """An OptunaSearch's state without its study, storage and trials (those are re-read from the storage)."""
    return {a: v for a, v in s.__dict__.items() if a not in _LIVE}


class SweepSearch(SearchGenerator):
    """Tune's SearchGenerator, but a restored sweep asks its searcher again even if it had said FINISHED.

    Tune saves the generator's `finished` flag with the experiment. A study whose search trials all errored
    has no configuration to re-run, so the searcher finishes; a rerun resumes those trials, and when one
    completes its study has a pick whose final-seed re-runs must still be created.
    """

    def set_state(self, state: Dict) -> None:
        super().set_state(state)
        self._finished = False


class SweepLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter, but the limit is the one this process set for the sweep (`set_limit`),
    also after a restore.

    Tune restores a limiter's saved state, limit included, so a resumed sweep would keep the concurrency it
    started with: after the cluster grew, after `--set budget.max_concurrent=...`, or, on an autoscaling
    cluster, the 1 that a head with no GPU node yet allows.
    """
    limits: Dict[str, int] = {}

    def __init__(self, searcher: Searcher, sweep: str, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.sweep = sweep

    @classmethod
    def set_limit(cls, sweep: str, max_concurrent: int) -> None:
        """The concurrency of `sweep` in this process; limiters restored afterwards take it."""
        cls.limits[sweep] = max_concurrent

    def set_state(self, state: Dict) -> None:
        super().set_state(state)
        self.max_concurrent = self.limits.get(self.sweep, self.max_concurrent)

    def __setstate__(self, state: Dict) -> None:   # unpickled with the Tuner on restore
        self.__dict__.update(state)
        self.max_concurrent = self.limits.get(self.sweep, self.max_concurrent)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        """Tune's limiter drops completions of trials it does not hold; a trial resumed after it errored
        (same id, `Tuner.restore(resume_errored=True)`) left `live_trials` when it failed, and its late
        result must still reach its study (StudySearcher ignores repeated completions)."""
        if trial_id in self.live_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
        else:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)


class FinalsScheduler(FIFOScheduler):
    """Tune's FIFO scheduler, but a final-seed re-run that its study's searcher superseded (an early final of
    a configuration that is no longer the pick: StudySearcher) is stopped at its next result."""

    def __init__(self, sweep: str = ""):
        super().__init__()
        self.sweep = sweep

    def on_trial_result(self, tune_controller, trial, result: Dict) -> str:
        if StudySearcher.is_superseded(getattr(self, "sweep", ""), trial.trial_id):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


class PerStudyASHA(FinalsScheduler):
    """ASHA with separate rungs per study (`trial.config["study"]`), stopping on the epoch counter; a
    final-seed re-run (`stage: final`) is not early-stopped (it reports the picked configuration's result),
    only stopped once superseded (FinalsScheduler).

    The epoch (not training_iteration) is the time axis: a worker restarted from a checkpoint reports some
    epochs twice, which would push training_iteration past max_t and cut the trial before its final report.
    """

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float, sweep: str = ""):
        super().__init__(sweep)
        self.kw = dict(time_attr="epoch", max_t=max_t, grace_period=grace_period,
                       reduction_factor=reduction_factor)
        self.by_study: Dict[str, AsyncHyperBandScheduler] = {}
        self._metric, self._mode = METRIC, "max"

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def _asha(self, trial) -> AsyncHyperBandScheduler:
        d = trial.config.get("study", "?")
        if d not in self.by_study:
            self.by_study[d] = AsyncHyperBandScheduler(metric=self._metric, mode=self._mode, **self.kw)
        return self.by_study[d]

    def on_trial_add(self, tune_controller, trial) -> None:
        if stage_of(trial.config) != FINAL:
            self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: Dict) -> str:
        if stage_of(trial.config) == FINAL:
            return super().on_trial_result(tune_controller, trial, result)
        if trial.trial_id not in self._asha(trial)._trial_info:   # e.g. after a restore
            self._asha(trial).on_trial_add(tune_controller, trial)
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: Dict) -> None:
        if trial.trial_id in self._asha(trial)._trial_info:
            self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{d}: {s.debug_string()}" for d, s in self.by_study.items()) or "PerStudyASHA"


__all__ = ["StudySearcher", "HandOut", "FinalsScheduler", "SweepSearch", "PerStudyASHA", "METRIC", "TrialScheduler",
           "outcome"]
