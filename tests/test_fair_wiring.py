"""The method's pieces wired as the specification says, on the tiny model: each test here fails on a named
mistake in the wiring (docs/method.md, "Wiring tests", lists the mistakes tried and the test that caught each).

The formulas themselves are pinned in test_fair_formulas.py; here the question is whether the loop feeds them
the right inputs: f_loc to S_fix and f_mix to S_las, gamma from gamma_start to gamma_end, only the norms and
anchors training, the lr ending at lr_min, validation choosing the predictor, the last epoch reported, and a
teacher that passes no gradient (and, with pseudo.teacher=frozen, stays the pretrained tower).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fair import adapt, engine, local
from fair.config import FairConfig, from_dict
from fair.data import prepare_data
from fair.losses import student_loss
from fair.pseudo_labels import gamma_at, pseudo_labels
from fair.weighting import ambiguity_weights
from tests.conftest import tiny_config

B = 8                  # images per hand-made batch (the tiny model's input is 32 x 32)


def _config(base: dict, **sections) -> FairConfig:
    """`base` with the given sections' keys replaced (one level deep), validated."""
    d = dict(base)
    for name, values in sections.items():
        d[name] = {**d.get(name, {}), **values} if isinstance(values, dict) else values
    return from_dict(d)


def _training(cfg: FairConfig, total_steps: int = 4) -> tuple[FairConfig, adapt.Setup, engine.Training]:
    """The run's set-up (seeded, as adapt does) and a training state over `total_steps` steps, without data
    loaders: the tests feed hand-made batches."""
    cfg = adapt.resolve_auto(cfg, 4, None)
    engine.seed_everything(cfg.seed)
    setup = adapt.set_up(cfg, prepare_data(cfg.data), torch.device("cpu"))
    tr = engine.make_training(cfg, setup.student, setup.visual_params, setup.heads, setup.device, total_steps)
    return cfg, setup, tr


def _views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (weak, strong) pair of normalised-looking batches."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 32, 32, generator=g), torch.randn(B, 3, 32, 32, generator=g)


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _by_hand(setup: adapt.Setup, cfg: FairConfig, weak: torch.Tensor, seed: int = 3, visual: nn.Module | None = None):
    """(f, f_loc) of the weak view written out from fair.local's pieces: crops cut by the same generator
    calls as the engine's, encoded with the global view, top-k pooled."""
    f, locs = local.crop_features(visual or setup.student.visual, weak, cfg.local.num_crops, cfg.local.crop_min,
                                  cfg.local.crop_max, _gen(seed))
    return f, local.pool_locals(f, locs, cfg.local.top_k, cfg.local.tau_local)


def _f_mix(f: torch.Tensor, f_loc: torch.Tensor, beta: float) -> torch.Tensor:
    return F.normalize(beta * f + (1 - beta) * f_loc, dim=-1)


# ----------------------------------------------------------------------- f_loc in S_fix, f_mix in S_las


def test_the_teacher_scores_f_loc_with_the_fixed_head_and_f_mix_with_the_anchors(tiny_cfg):
    """Spec §4: S_fix = <f_loc, W_fix>, S_las = score(normalize(beta f + (1 - beta) f_loc)); beta != 0, 1/2
    so that f and f_loc cannot be exchanged unnoticed anywhere."""
    beta = 0.25
    cfg, setup, tr = _training(_config(tiny_cfg, local={"beta": beta}))
    weak, _ = _views(0)
    fixed, learned = engine.teacher_scores(tr, weak, _gen())
    w_fix, anchors = setup.heads.w_fix, setup.student.anchors
    with torch.no_grad():
        f, f_loc = _by_hand(setup, cfg, weak)
        assert torch.allclose(fixed, f_loc @ w_fix.t(), atol=1e-6)
        assert torch.allclose(learned, anchors(_f_mix(f, f_loc, beta)), atol=1e-6)
        # the test can fail: the other feature gives other scores
        assert not torch.allclose(fixed, f @ w_fix.t(), atol=1e-3)
        assert not torch.allclose(learned, anchors(_f_mix(f_loc, f, beta)), atol=1e-3)


def test_anchor_selection_pools_the_locals_the_fixed_head_ranks_first(tiny_cfg):
    """local.select: anchors: the teacher's f_loc keeps the locals with the best cos to W_fix (top_k 1 of 8
    crops), in training and in evaluation; the spec's rule (cos to f) would keep another crop here."""
    cfg, setup, tr = _training(_config(tiny_cfg, local={"select": "anchors", "top_k": 1, "num_crops": 8}))
    weak, _ = _views(0)
    fixed, _ = engine.teacher_scores(tr, weak, _gen())
    w_fix = setup.heads.w_fix
    with torch.no_grad():
        f, locs = local.crop_features(setup.student.visual, weak, 8, cfg.local.crop_min, cfg.local.crop_max, _gen())
        best = torch.einsum("bld,cd->blc", locs, w_fix).amax(-1).argmax(1)
        f_loc = locs[torch.arange(len(weak)), best]
        assert torch.allclose(fixed, f_loc @ w_fix.t(), atol=1e-5)
        by_image = torch.einsum("bld,bd->bl", locs, f).argmax(1)
        assert (by_image != best).any()                    # the test can fail: the spec's rule differs here
        _, f_eval = engine.pooled_local_features(setup.student.visual, weak, cfg, _gen(), 8, None, w_fix)
        assert torch.allclose(f_eval, f_loc, atol=1e-5)


class _Spy:
    """What a spied adapt() run saw: its set-up, each training step, each evaluation."""

    def __init__(self):
        self.setup: adapt.Setup | None = None
        self.data = None
        self.tr: engine.Training | None = None
        self.steps: list[dict] = []     # per step: gamma, the lr of each group for that step
        self.evals: list[dict] = []     # per engine.predict call: images, predictor names, predictions, weights


def _expected_scores(name: str, setup: adapt.Setup, cfg: FairConfig, f: torch.Tensor, fl: torch.Tensor):
    """Each predictor's scores written out from spec §8 (fl: the pooled local feature f_loc)."""
    heads, anchors = setup.heads, setup.student.anchors
    return {"zeroshot": lambda: f @ heads.class_emb.t(), "wca": lambda: fl @ heads.w_desc.t(),
            "global": lambda: anchors(f), "las": lambda: anchors(_f_mix(f, fl, cfg.local.beta))}[name]()


@pytest.fixture(scope="module")
def spied_run(imagefolder, tmp_path_factory):
    """One 2-epoch run (2 steps each) through adapt(), with spies on set-up, every step and every evaluation.

    Every predictor call is checked against _expected_scores as it happens (the anchors change per epoch)."""
    tmp = tmp_path_factory.mktemp("wiring")
    cfg = _config(tiny_config(imagefolder, tmp),
                  train={"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2, "lr": 1e-3, "lr_min": 1e-5,
                         "fair_momentum": 0.0},
                  pseudo={"gamma_start": 0.9, "gamma_end": 0.2, "gamma_schedule": "linear"},
                  local={"num_crops": 3, "top_k": 2, "beta": 0.25})
    spy = _Spy()
    real_set_up, real_step, real_predict = adapt.set_up, engine.train_step, engine.predict

    def set_up(cfg, data, device):
        spy.setup, spy.data = real_set_up(cfg, data, device), data
        return spy.setup

    def train_step(tr, weak, strong, gamma, generator, crops=None):
        spy.tr = tr
        spy.steps.append({"gamma": gamma, "lr": [g["lr"] for g in tr.optimizer.param_groups]})
        return real_step(tr, weak, strong, gamma, generator, crops)

    def predict(visual, images, predictors, cfg, *args, **kwargs):
        errors = {}

        def checked(name, fn):
            def scores(f, fl):
                out = fn(f, fl)
                err = (out - _expected_scores(name, spy.setup, cfg, f, fl)).abs().max().item()
                errors[name] = max(errors.get(name, 0.0), err)
                return out
            return scores

        preds, bad = real_predict(visual, images, {k: checked(k, fn) for k, fn in predictors.items()}, cfg,
                                  *args, **kwargs)
        spy.evals.append({"images": images, "names": tuple(predictors), "preds": preds, "errors": errors,
                          "weights": engine.trainable_state(spy.setup.student)})
        return preds, bad

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapt, "set_up", set_up)
        mp.setattr(engine, "train_step", train_step)
        mp.setattr(engine, "predict", predict)
        record = adapt.adapt(cfg, tmp / "run")
    return cfg, record, spy, tmp / "run"


def test_every_predictor_scores_the_features_the_spec_names(spied_run):
    """zero-shot: f with the template head; WCA: f_loc with the description head; global: f with the anchors;
    las: f_mix with the anchors — in the baselines, per-epoch validation and the final evaluation."""
    _, _, spy, _ = spied_run
    seen = set()
    for call in spy.evals:
        for name, err in call["errors"].items():
            assert err < 1e-5, f"predictor {name!r} does not score the features spec §8 names (off by {err:.3g})"
            seen.add(name)
    assert seen == {"zeroshot", "wca", "global", "las"}


# ------------------------------------------------------------------------------------------------ gamma


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_gamma_schedules_run_from_gamma_start_to_gamma_end(schedule):
    for start, end in ((0.9, 0.2), (0.1, 0.7)):
        path = [gamma_at(start, end, schedule, i / 10) for i in range(11)]
        assert path[0] == pytest.approx(start) and path[-1] == pytest.approx(end)
        steps = [b - a for a, b in zip(path, path[1:])]
        assert all(s * (end - start) >= 0 for s in steps)            # monotone, towards gamma_end
    assert gamma_at(0.9, 0.2, "constant", 1.0) == 0.9


def test_gamma_runs_from_gamma_start_at_the_first_step_to_gamma_end_at_the_last(spied_run):
    cfg, record, spy, _ = spied_run
    gammas = [s["gamma"] for s in spy.steps]
    assert len(gammas) == 4                                        # 2 epochs x max_steps_per_epoch 2
    assert gammas == pytest.approx([0.9 + (0.2 - 0.9) * i / 3 for i in range(4)])
    assert [r["gamma"] for r in record["epochs"]] == pytest.approx([gammas[1], gammas[3]])   # each epoch's last


# ------------------------------------------------------------------------------------- what trains


def _norm_names(visual: nn.Module) -> set[str]:
    """visual.<name> of every LayerNorm parameter of the image tower (ViTs have no other norms)."""
    return {f"visual.{m}.{p}" for m, mod in visual.named_modules() if isinstance(mod, nn.LayerNorm)
            for p, _ in mod.named_parameters(recurse=False)}


@pytest.mark.parametrize("trainable", ["norm", "norm+proj"])
def test_only_the_norms_and_anchors_train_and_norm_proj_adds_exactly_the_projection(tiny_cfg, trainable):
    cfg, setup, tr = _training(_config(tiny_cfg, train={"trainable": trainable, "lr": 1e-2}))
    student = setup.student
    norms = _norm_names(student.visual)
    anchors = {f"anchors.{n}" for n, _ in student.anchors.named_parameters()}
    assert norms and anchors
    want = norms | anchors | ({"visual.proj"} if trainable == "norm+proj" else set())
    names = {p: n for n, p in student.named_parameters()}
    assert {n for n, p in student.named_parameters() if p.requires_grad} == want
    assert {names[p] for g in tr.optimizer.param_groups for p in g["params"]} == want
    assert {names[p] for p in tr.optimizer.param_groups[1]["params"]} == anchors      # the lr_mult group
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    engine.train_step(tr, *_views(0), 0.5, _gen())
    for n, p in student.named_parameters():
        assert torch.equal(p, before[n]) != (n in want), f"{n} {'did not train' if n in want else 'trained'}"


# ------------------------------------------------------------------------------------- learning rate


def test_the_lr_starts_at_lr_and_ends_at_lr_min_in_both_groups(spied_run):
    """Spec §6: cosine from lr to lr_min over the run's steps (max_steps_per_epoch included); the anchors'
    group at lr_mult times both."""
    cfg, record, spy, _ = spied_run
    lr, lr_min, mult = cfg.train.lr, cfg.train.lr_min, cfg.anchors.lr_mult
    used = [s["lr"] for s in spy.steps]
    assert used[0] == pytest.approx([lr, lr * mult])
    assert all(b[0] < a[0] for a, b in zip(used, used[1:]))         # decreasing at every step
    assert used[-1][0] > lr_min
    final = [g["lr"] for g in spy.tr.optimizer.param_groups]
    assert final == pytest.approx([lr_min, lr_min * mult], rel=1e-6)
    assert record["epochs"][-1]["lr"] == pytest.approx(lr_min, rel=1e-6)


# ------------------------------------------------------------------------------ honest selection


def test_the_validation_accuracy_picks_the_predictor_never_the_test_accuracy():
    cfg = from_dict({})
    for val, test, want in (((80.0, 90.0), (95.0, 70.0), "las"), ((90.0, 80.0), (70.0, 95.0), "global"),
                            ((85.0, 85.0), (70.0, 95.0), "global")):
        metrics = {"val_top1_global": val[0], "val_top1_las": val[1], "test_top1_global": test[0],
                   "test_top1_las": test[1]}
        assert adapt._pick_predictor(cfg, metrics, ["global", "las"]) == want


def test_the_final_validation_metrics_are_measured_on_the_validation_split(spied_run):
    cfg, record, spy, _ = spied_run
    final = [c for c in spy.evals if c["names"] == ("global", "las")]
    assert [c["images"] for c in final] == [spy.data.val, spy.data.test]
    m, C = record["metrics"], len(spy.data.classnames)
    for split, call in zip(("val", "test"), final):
        for k in ("global", "las"):
            assert m[f"{split}_top1_{k}"] == pytest.approx(engine.accuracy(*call["preds"][k], C)[0])
    best = max(("global", "las"), key=lambda k: (m[f"val_top1_{k}"], k == "global"))
    assert m["predictor"] == best and m["val_top1"] == m[f"val_top1_{best}"]
    assert m["test_top1"] == m[f"test_top1_{best}"]


# ------------------------------------------------------------------------------------- the last epoch


def test_the_record_reports_the_last_epoch(spied_run):
    """Spec §8: the last epoch's model and diagnostics, never a best epoch."""
    cfg, record, spy, run_dir = spied_run
    rows = record["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["loss"] != rows[1]["loss"]
    m = record["metrics"]
    assert (m["final_loss"], m["pseudo_label_acc"], m["head_agreement"]) == \
        (rows[-1]["loss"], rows[-1]["pseudo_label_acc"], rows[-1]["head_agreement"])
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)
    assert last["epoch"] == 2
    test_call = [c for c in spy.evals if c["images"] is spy.data.test][-1]
    assert test_call["weights"].keys() == last["trainable"].keys()
    for k, v in last["trainable"].items():
        assert torch.equal(test_call["weights"][k], v), f"the test split was scored with another epoch's {k}"


# ------------------------------------------------------------------------------ no gradient to the teacher


def _leaky_and_detached_grads(setup, cfg, weak, strong, gamma, params):
    """The student loss's gradients with the teacher's outputs as constants (spec §4: no gradient), and,
    to show the test can fail, with gradient let through the teacher's weights."""
    out = []
    for no_grad in (True, False):
        with torch.set_grad_enabled(not no_grad):
            f, f_loc = _by_hand(setup, cfg, weak)
            t = pseudo_labels(f_loc @ setup.heads.w_fix.t(), setup.student.anchors(_f_mix(f, f_loc, cfg.local.beta)),
                              setup.heads.scale, gamma)
            w, _ = ambiguity_weights(cfg.weighting.mode, t.p_fix, t.p_las, t.p, t.y, cfg.weighting.power,
                                     cfg.weighting.min)
        loss = student_loss(setup.heads.scale * setup.student(strong), t.y, w, cfg.train.lambda_fair).loss
        out.append(torch.autograd.grad(loss, params))
    return out


def test_the_teacher_passes_no_gradient_to_the_student(tiny_cfg):
    cfg, setup, tr = _training(_config(tiny_cfg, train={"fair_momentum": 0.0}, local={"beta": 0.25},
                                       weighting={"mode": "agreement"}))
    weak, strong = _views(0)
    params = [p for p in setup.student.parameters() if p.requires_grad]
    want, leaky = _leaky_and_detached_grads(setup, cfg, weak, strong, 0.5, params)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(want, leaky))   # the test can fail
    engine.train_step(tr, weak, strong, 0.5, _gen())
    for p, g in zip(params, want):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- pseudo.teacher: frozen


def test_a_frozen_teacher_keeps_the_pretrained_s_fix_while_the_students_drifts(tiny_cfg):
    """pseudo.teacher=frozen: S_fix stays the pretrained model's through training, S_las still learns; with
    the student as teacher (the default) S_fix drifts with the adapting tower."""
    probe, _ = _views(9)
    out = {}
    for teacher in ("student", "frozen"):
        cfg, setup, tr = _training(_config(tiny_cfg, pseudo={"teacher": teacher}, train={"lr": 1e-2}), 3)
        start = engine.teacher_scores(tr, probe, _gen())
        for i in range(3):
            engine.train_step(tr, *_views(i), 0.5, _gen(i))
        out[teacher] = start, engine.teacher_scores(tr, probe, _gen())
    (fix0_s, las0_s), (fix1_s, las1_s) = out["student"]
    (fix0_f, las0_f), (fix1_f, las1_f) = out["frozen"]
    # the same pretrained model at step 0 (in eval mode, attention may take another kernel: not bitwise)
    assert torch.allclose(fix0_f, fix0_s, atol=1e-6) and torch.equal(las0_f, las0_s)
    assert torch.equal(fix1_f, fix0_f)                                  # frozen: the prior does not move
    assert not torch.allclose(fix1_s, fix0_s, atol=1e-4)                 # student: it drifts
    assert not torch.allclose(las1_f, las0_f, atol=1e-4)                 # S_las learns under both


def test_a_frozen_teacher_gets_no_gradient_and_is_never_saved(tiny_cfg, tmp_path):
    cfg, setup, tr = _training(_config(tiny_cfg, pseudo={"teacher": "frozen"}, train={"lr": 1e-2}))
    frozen = setup.heads.frozen_visual
    assert frozen is not None and frozen is not setup.student.visual
    before = {n: p.detach().clone() for n, p in frozen.named_parameters()}
    setup.student.train()
    engine.train_step(tr, *_views(0), 0.5, _gen())
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    for n, p in frozen.named_parameters():
        assert p.grad is None and torch.equal(p, before[n]), n
    in_optimizer = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in frozen.parameters()}
    engine.save_checkpoint(tmp_path / "last.pt", tr, 1, [], "digest")
    saved = torch.load(tmp_path / "last.pt", weights_only=False)["trainable"]
    assert set(saved) == {n for n, p in setup.student.named_parameters() if p.requires_grad}


def test_a_student_teacher_run_keeps_its_config_digest(tiny_cfg):
    """pseudo.teacher=student is today's behaviour: runs from before the key existed resume unchanged."""
    from fair.config import to_dict
    from fair.record import config_digest, result_config
    cfg = from_dict(tiny_cfg)
    old = to_dict(cfg)
    old["pseudo"].pop("teacher")
    assert result_config(old) == result_config(to_dict(cfg))
    assert config_digest(cfg) != config_digest(_config(tiny_cfg, pseudo={"teacher": "frozen"}))


@pytest.mark.parametrize("source", ["crops", "tokens"])
def test_a_frozen_teacher_scores_s_fix_on_the_frozen_towers_f_loc_and_s_las_on_the_students(tiny_cfg, source):
    """With the pipeline's crops (the device pipeline cuts them) or MaskCLIP tokens: both towers see the same
    locals; S_fix pools the frozen tower's, S_las the student's."""
    cfg, setup, tr = _training(_config(tiny_cfg, pseudo={"teacher": "frozen"}, train={"lr": 1e-2},
                                       local={"source": source, "beta": 0.25}))
    engine.train_step(tr, *_views(1), 0.5, _gen())                      # the two towers now differ
    weak, _ = _views(0)
    crops = local.random_crops(weak, 3, 0.4, 0.8, _gen()).unflatten(0, (B, 3)) if source == "crops" else None
    fixed, learned = engine.teacher_scores(tr, weak, _gen(), crops)

    def features(visual):
        if source == "tokens":
            f, locs = local.token_features(visual, weak)
        else:
            feats = local.encode(visual, torch.cat([weak, crops.flatten(0, 1)]))
            f, locs = feats[:B], feats[B:].view(B, 3, -1)
        return f, local.pool_locals(f, locs, cfg.local.top_k, cfg.local.tau_local)

    with torch.no_grad():
        (f, f_loc), (_, frozen_loc) = features(setup.student.visual), features(setup.heads.frozen_visual)
        assert torch.allclose(fixed, frozen_loc @ setup.heads.w_fix.t(), atol=1e-6)
        assert torch.allclose(learned, setup.student.anchors(_f_mix(f, f_loc, 0.25)), atol=1e-6)
        assert not torch.allclose(fixed, f_loc @ setup.heads.w_fix.t(), atol=1e-4)
