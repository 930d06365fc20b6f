"""Each formula of the specification pinned on small hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fair.anchors import LearnableAnchors, description_weights, fixed_head, set_score
from fair.local import crop_boxes, mix, pool_locals, random_crops, token_features
from fair.losses import fairness_term, student_loss
from fair.pseudo_labels import gamma_at, pseudo_labels
from fair.weighting import ambiguity_weights
from tune.ray_session import free_port


def test_agreement_weight_is_one_when_both_heads_agree():
    p_fix = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    p_las = torch.tensor([[0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    y = torch.tensor([0, 2])
    w, keep = ambiguity_weights("agreement", p_fix, p_las, (p_fix + p_las) / 2, y)
    assert torch.allclose(w, torch.ones(2)) and keep.all()


def test_agreement_weight_by_hand_when_heads_disagree():
    p_fix = torch.tensor([[0.6, 0.3, 0.1]])
    p_las = torch.tensor([[0.2, 0.5, 0.3]])
    w, _ = ambiguity_weights("agreement", p_fix, p_las, p_fix, torch.tensor([0]))
    assert w.item() == pytest.approx((0.6 / 0.6) * (0.2 / 0.5))


def test_margin_weight_is_zero_for_a_tie_and_power_and_minimum_apply():
    p = torch.tensor([[0.45, 0.45, 0.10], [0.8, 0.1, 0.1]])
    y = p.argmax(1)
    w, keep = ambiguity_weights("margin", p, p, p, y, power=2.0, minimum=0.5)
    assert w[0].item() == pytest.approx(0.0)
    assert keep.tolist() == [False, True]
    assert w[1].item() == pytest.approx((1 - 0.1 / 0.8) ** 2)
    w_none, _ = ambiguity_weights("none", p, p, p, y)
    assert torch.equal(w_none, torch.ones(2))


def test_description_weights_and_fixed_head():
    t_c = F.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
    d = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]), dim=-1)
    mask = torch.tensor([[True, True, False]])
    v0 = description_weights(d, mask, t_c, 0.0)
    assert torch.allclose(v0, torch.tensor([[0.5, 0.5, 0.0]]))          # tau = 0: plain average
    v = description_weights(d, mask, t_c, 2.0)                          # cos = 1 and 0
    assert v[0, 0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    W = fixed_head(d, mask, t_c, 0.0)
    assert torch.allclose(W, F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1))


def test_set_anchors_with_one_description_equal_prototype_before_and_after_a_step():
    torch.manual_seed(0)
    C, D = 5, 8
    t = F.normalize(torch.randn(C, 1, D), dim=-1)
    mask = torch.ones(C, 1, dtype=torch.bool)
    W = fixed_head(t, mask, t[:, 0], tau_text=3.0)
    proto, st = LearnableAnchors("prototype", W), LearnableAnchors("set", t, mask, tau_anchor=7.0)
    z = F.normalize(torch.randn(4, D), dim=-1)
    assert torch.allclose(proto(z), st(z), atol=1e-6)
    y = torch.tensor([0, 1, 2, 3])
    for m in (proto, st):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        F.cross_entropy(10 * m(z), y).backward()
        opt.step()
    assert torch.allclose(proto(z), st(z.clone()), atol=1e-5)


def test_set_score_attends_to_the_matching_description():
    A = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                       # one class, two descriptions
    mask = torch.tensor([[True, True]])
    z = torch.tensor([[1.0, 0.0]])
    s_sharp = set_score(z, A, mask, tau_anchor=100.0)
    s_flat = set_score(z, A, mask, tau_anchor=0.0)
    assert s_sharp.item() == pytest.approx(1.0, abs=1e-6)               # picks the description it matches
    assert s_flat.item() == pytest.approx(0.5)                          # plain average of 1 and 0
    masked = set_score(z, A, torch.tensor([[False, True]]), tau_anchor=100.0)
    assert masked.item() == pytest.approx(0.0, abs=1e-6)                # padding never counts


def test_pseudo_labels_mix_both_heads_with_gamma():
    s_fix = torch.tensor([[0.3, 0.1]])
    s_las = torch.tensor([[0.1, 0.2]])
    t1 = pseudo_labels(s_fix, s_las, scale=100.0, gamma=1.0)
    t0 = pseudo_labels(s_fix, s_las, scale=100.0, gamma=0.0)
    assert t1.y.item() == 0 and t0.y.item() == 1
    t = pseudo_labels(s_fix, s_las, scale=10.0, gamma=0.25)
    p_fix, p_las = torch.softmax(10 * s_fix, -1), torch.softmax(10 * s_las, -1)
    assert torch.allclose(t.p, 0.25 * p_fix + 0.75 * p_las)


def test_gamma_schedules():
    assert gamma_at(1.0, 0.5, "constant", 0.7) == 1.0
    assert gamma_at(1.0, 0.5, "linear", 0.5) == pytest.approx(0.75)
    assert gamma_at(1.0, 0.5, "cosine", 0.0) == pytest.approx(1.0)
    assert gamma_at(1.0, 0.5, "cosine", 1.0) == pytest.approx(0.5)
    assert gamma_at(1.0, 0.0, "cosine", 0.5) == pytest.approx(0.5)


def test_pool_locals_top_k_and_mix():
    f = torch.tensor([[1.0, 0.0]])
    locs = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]), dim=-1)
    one = pool_locals(f, locs, top_k=1, tau_local=5.0)
    assert torch.allclose(one, torch.tensor([[1.0, 0.0]]))              # only the most similar local
    two = pool_locals(f, locs, top_k=2, tau_local=0.0)                  # plain mean of the top two
    assert torch.allclose(two, F.normalize(locs[0, 0] + locs[0, 2], dim=-1).unsqueeze(0), atol=1e-6)
    assert torch.allclose(mix(f, one, 0.0), one) and torch.allclose(mix(f, locs[:, 1], 1.0), f)


def test_pool_locals_by_anchors_keeps_the_locals_that_match_a_class_not_the_image():
    """local.select: anchors ranks locals by their best cos to W_fix: here the background local (most like
    f) loses to the object-like one, and the weights are softmax(tau * best cos), computed by hand."""
    f = torch.tensor([[1.0, 0.0, 0.0]])                                  # the whole image: mostly background
    locs = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.6, 0.8, 0.0]]])   # background, object, half
    w_fix = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])            # two classes' fixed head rows
    one = pool_locals(f, locs, top_k=1, tau_local=5.0, w_select=w_fix)
    assert torch.allclose(one, locs[:, 1])                               # best cos 0.8 (class 0); bg: 0
    assert torch.allclose(pool_locals(f, locs, top_k=1, tau_local=5.0), locs[:, 0])   # spec rule: bg
    two = pool_locals(f, locs, top_k=2, tau_local=2.0, w_select=w_fix)   # locals 1 and 2 (0.8 each): tie
    a = torch.softmax(torch.tensor([1.6, 1.6]), 0)
    assert torch.allclose(two, F.normalize(a[0] * locs[0, 1] + a[1] * locs[0, 2], dim=-1).unsqueeze(0), atol=1e-6)


def test_crops_stay_inside_the_image_and_have_the_input_size():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(3, 5, 32, 48, 0.4, 0.8, g)
    side = boxes[:, 3] - boxes[:, 1]
    assert torch.all(boxes[:, 1] >= 0) and torch.all(boxes[:, 3] <= 48) and torch.all(boxes[:, 4] <= 32)
    assert torch.allclose(side, boxes[:, 4] - boxes[:, 2])
    assert torch.all(side >= 0.4 * 32 - 1e-4) and torch.all(side <= 0.8 * 32 + 1e-4)
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    crops = random_crops(img, 4, 1.0, 1.0, g)                           # full-size crops reproduce the image
    assert crops.shape == (8, 3, 8, 8)
    assert torch.allclose(crops[0], img[0], atol=1e-3) and torch.allclose(crops[4], img[1], atol=1e-3)


def test_token_features_are_maskclip_value_tokens():
    import open_clip
    from fair.models import register_builtin_configs
    register_builtin_configs()
    torch.manual_seed(0)
    visual = open_clip.create_model("fair-tiny-vit").visual.eval()
    x = torch.randn(2, 3, 32, 32)
    f, toks = token_features(visual, x)
    assert torch.allclose(f, F.normalize(visual(x), dim=-1), atol=1e-6)
    assert toks.shape == (2, 16, f.shape[1])                            # one per 8x8 patch
    # by hand: the last block's input, its value projection, out_proj, ln_post, proj
    h = visual._embeds(x)  # conv, class token, positions, ln_pre
    for blk in visual.transformer.resblocks[:-1]:
        h = blk(h)
    last = visual.transformer.resblocks[-1]
    D = h.shape[-1]
    v = last.ln_1(h) @ last.attn.in_proj_weight[2 * D:].t() + last.attn.in_proj_bias[2 * D:]
    ref = F.normalize(visual.ln_post(last.attn.out_proj(v)[:, 1:]) @ visual.proj, dim=-1)
    assert torch.allclose(toks, ref, atol=1e-5)


def test_fairness_term_is_minimal_for_balanced_predictions():
    C = 4
    assert fairness_term(torch.full((C,), 1 / C)).item() == pytest.approx(math.log(C))
    assert fairness_term(torch.tensor([0.7, 0.1, 0.1, 0.1])).item() > math.log(C)


def test_fair_momentum_auto_is_a_running_average_once_batches_miss_classes():
    """Spec §6: pbar is a running average "when C is large". Once batches miss classes, the batch mean has
    near-zero entries and the fairness gradient swamps the CE one; the running average restores the balance."""
    from fair.losses import AUTO_FAIR_MOMENTUM, fair_momentum_for
    assert fair_momentum_for(None, 10, 64) == 0.0 and fair_momentum_for(None, 14, 64) == 0.0   # EuroSAT
    assert fair_momentum_for(None, 15, 64) == AUTO_FAIR_MOMENTUM == fair_momentum_for(None, 47, 64)
    assert fair_momentum_for(0.5, 100, 64) == 0.5 and fair_momentum_for(0.0, 397, 64) == 0.0
    torch.manual_seed(0)
    C, B = 100, 64
    y = torch.randint(C, (B,))
    base = torch.randn(B, C) + 12 * F.one_hot(y, C)                 # confident, a few classes per batch
    running = torch.full((C,), 1 / C)                                # a balanced history

    def grads(momentum):
        logits = base.clone().requires_grad_(True)
        ce = student_loss(logits, y, torch.ones(B), lambda_fair=0.0).loss
        g_ce, = torch.autograd.grad(ce, logits)
        logits = base.clone().requires_grad_(True)
        parts = student_loss(logits, y, torch.ones(B), 1.0, running if momentum else None, momentum)
        g_all, = torch.autograd.grad(parts.loss, logits)
        return (g_all - g_ce).norm() / g_ce.norm()                   # fairness gradient against CE's
    assert grads(0.0) > 5 and grads(AUTO_FAIR_MOMENTUM) < 0.2 * grads(0.0)


def _loss_and_param_grad(x, theta, y, w):
    """The student loss of logits x @ theta, and its gradient w.r.t. the shared parameter theta."""
    theta = theta.clone().requires_grad_(True)
    parts = student_loss(x @ theta, y, w, lambda_fair=0.7)
    parts.loss.backward()
    return parts, theta.grad


def _worker(rank, port, x, theta, y, w, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    sl = slice(4 * rank, 4 * rank + 4)
    parts, g = _loss_and_param_grad(x[sl], theta, y[sl], w[sl])
    dist.all_reduce(g)       # what DDP does to parameter gradients: average over processes
    out[rank] = {"value": parts.value.item(), "grad": g / 2}
    dist.destroy_process_group()


def test_loss_is_the_same_for_one_batch_of_8_and_two_processes_of_4():
    torch.manual_seed(0)
    x, theta = torch.randn(8, 6), torch.randn(6, 5)
    y, w = torch.randint(0, 5, (8,)), torch.rand(8)
    single, grad = _loss_and_param_grad(x, theta, y, w)
    import torch.multiprocessing as mp
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), x, theta, y, w, out), nprocs=2, join=True)
    for r in range(2):
        assert out[r]["value"] == pytest.approx(single.value.item(), rel=1e-5)
        assert torch.allclose(out[r]["grad"], grad, atol=1e-6)


def _near_ties(B: int = 256, C: int = 200, D: int = 512, M: int = 3, seed: int = 0):
    """Issue 16's case: features whose cosines with every class are 0.30 +- 0.01, where one bf16 step
    (0.002) is 0.2 logits at scale 100. Vectors a e + b v around one shared direction e give
    cos = a_x a_w + b_x b_w <v_x, v_w> with <v_x, v_w> ~ 1/sqrt(D)."""
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(D, generator=g), dim=0)

    def around(n, a, shape=()):
        v = torch.randn(*shape, n, D, generator=g)
        v = F.normalize(v - (v @ e).unsqueeze(-1) * e, dim=-1)          # orthogonal to e
        return a * e + math.sqrt(1 - a * a) * v

    a_x = 0.97
    f, f_loc = around(B, a_x), around(B, a_x)
    w_fix, anchors_init = around(C, 0.3 / a_x), around(M, 0.3 / a_x, (C,))
    return f, f_loc, w_fix, anchors_init


@pytest.mark.parametrize("anchors_mode", ["prototype", "set"])
def test_bf16_autocast_leaves_pseudo_labels_weights_and_predictions_as_in_fp32(anchors_mode):
    """The encoders may run in bf16; the scores, softmaxes, mixing and weights run in fp32 whatever the
    autocast (fair.precision.full_precision), so near-tied pseudo-labels are neither flipped nor tied."""
    from fair.scores import s_fix, s_las
    f, f_loc, w_fix, init = _near_ties()
    anchors = LearnableAnchors("prototype", init.mean(1)) if anchors_mode == "prototype" else \
        LearnableAnchors("set", init, torch.ones(init.shape[:2], dtype=torch.bool), tau_anchor=10.0)
    cos = f_loc @ w_fix.t()
    assert abs(cos.mean().item() - 0.30) < 0.005 and cos.std().item() < 0.015
    in_bf16 = (f_loc.bfloat16() @ w_fix.bfloat16().t()).float().argmax(1)      # the case is hard for bf16
    assert (in_bf16 != cos.argmax(1)).float().mean() > 0.05

    def teacher(mode):
        fixed, learned = s_fix(f_loc, w_fix), s_las(anchors, f, f_loc, 0.5)
        t = pseudo_labels(fixed, learned, scale=100.0, gamma=0.5)
        w, _ = ambiguity_weights(mode, t.p_fix, t.p_las, t.p, t.y)
        return t.y, w, s_las(anchors, f).argmax(1), s_las(anchors, f, f_loc, 0.5).argmax(1)

    with torch.no_grad():
        for mode in ("margin", "agreement"):
            want = teacher(mode)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = teacher(mode)
            for name, a, b in zip(("pseudo-labels", "weights", "global predictions", "las predictions"), want, got):
                assert a.dtype == b.dtype and torch.equal(a, b), f"{mode}: {name} differ under bf16 autocast"


# ------------------------------------------------------------------------------------ dpa and tent


def test_image_prototypes_are_normalised_class_means_and_empty_classes_take_z():
    from fair.dpa import image_prototypes
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 0, -1, 2])                                 # -1: never written, counts nowhere
    z = torch.tensor([[5.0, 5.0], [0.0, 3.0], [1.0, 1.0]])
    P = image_prototypes(features, labels, z)
    s = 1 / math.sqrt(2)
    assert torch.allclose(P, torch.tensor([[s, s], [0.0, 1.0], [0.0, 1.0]]))   # class 1 empty: normalize(Z[1])


def test_distribution_alignment_by_hand_and_its_queue_keeps_the_last_means():
    from fair.dpa import DistributionAlignment, align_distribution
    p = torch.tensor([[0.6, 0.4]])
    means = torch.tensor([[0.8, 0.2], [0.4, 0.2]])                      # mean (0.6, 0.2): p / it = (1, 2)
    assert torch.allclose(align_distribution(p, means), torch.tensor([[1 / 3, 2 / 3]]))
    da = DistributionAlignment(length=2)
    batches = [torch.tensor([[0.9, 0.1], [0.7, 0.3]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[0.2, 0.8]])]
    for b in batches:
        out = da(b)
    assert torch.allclose(da.means, torch.tensor([[0.5, 0.5], [0.2, 0.8]]))   # the first batch's mean is gone
    assert torch.allclose(out, align_distribution(batches[-1], torch.tensor([[0.5, 0.5], [0.2, 0.8]])))
    assert torch.allclose(DistributionAlignment(32)(p), torch.tensor([[0.5, 0.5]]))   # alone: p / p, flat


def test_dpa_pseudo_labels_mix_image_and_aligned_text_heads_with_the_ranking_weight():
    from fair.dpa import DistributionAlignment, dpa_pseudo_labels
    s_text = torch.tensor([[math.log(3.0), 0.0]])                       # p_T = (0.75, 0.25)
    s_image = torch.tensor([[0.0, math.log(4.0)]])                      # p_P = (0.2, 0.8)
    t = dpa_pseudo_labels(s_text, s_image, 1.0, 0.5, DistributionAlignment(32))
    assert torch.allclose(t.p_text, torch.tensor([[0.75, 0.25]])) and torch.allclose(t.p_image, torch.tensor([[0.2, 0.8]]))
    # p~_T of a lone batch is flat (0.5, 0.5): p = 0.5 (0.2, 0.8) + 0.5 (0.5, 0.5) = (0.35, 0.65)
    assert torch.allclose(t.p, torch.tensor([[0.35, 0.65]])) and t.y.tolist() == [1]
    assert t.w.item() == pytest.approx((0.8 / 0.8) * (0.25 / 0.75))    # raw p_T, not the aligned one
    t_text_only = dpa_pseudo_labels(s_text, s_image, 1.0, 0.0, DistributionAlignment(32))
    assert torch.allclose(t_text_only.p, torch.tensor([[0.5, 0.5]]))


def test_dpa_loss_by_hand():
    from fair.dpa import dpa_loss
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])          # CE(y=0): ln 2 and ln(4/3)
    y, w = torch.tensor([0, 0]), torch.tensor([0.5, 1.0])
    align_logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])              # each prototype: CE = ln(1 + e^-2)
    parts = dpa_loss(logits, y, w, align_logits, reg=0.5, align=2.0)
    ce = (0.5 * math.log(2) + math.log(4 / 3)) / 2                      # a plain batch mean of w CE
    pbar = torch.tensor([0.625, 0.375])
    fair = -torch.log(pbar).mean().item()
    align = math.log(1 + math.exp(-2))
    assert parts.ce.item() == pytest.approx(ce) and parts.fair.item() == pytest.approx(fair)
    assert parts.align.item() == pytest.approx(align)
    assert parts.value.item() == pytest.approx(ce + 0.5 * fair + 2 * align) == parts.loss.item()


def test_prototype_alignment_moves_z_towards_p_and_leaves_p_alone():
    """The alignment term trains the text prototypes Z only (P is a constant of the step)."""
    from fair.dpa import prototype_alignment
    from fair.scores import s_las
    torch.manual_seed(0)
    P = F.normalize(torch.randn(3, 4), dim=-1)
    z = LearnableAnchors("prototype", F.normalize(torch.randn(3, 4), dim=-1))
    before = (F.normalize(z.weight, dim=-1) * P).sum(1).detach()
    loss = prototype_alignment(10 * s_las(z, P))
    loss.backward()
    assert not P.requires_grad and z.weight.grad is not None
    with torch.no_grad():
        z.weight -= 0.05 * z.weight.grad
    assert prototype_alignment(10 * s_las(z, P)).item() < loss.item()
    assert ((F.normalize(z.weight, dim=-1) * P).sum(1) > before).all()          # each Z[c] nearer its P[c]


def test_memory_bank_keeps_the_latest_write_of_each_entry():
    from fair.dpa import MemoryBank
    bank = MemoryBank(4, 2, torch.device("cpu"))
    bank.write(torch.tensor([0, 2]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0]))
    bank.write(torch.tensor([2]), torch.tensor([[0.5, 0.5]]), torch.tensor([3]))
    assert bank.labels.tolist() == [1, -1, 3, -1]
    assert torch.equal(bank.features[2], torch.tensor([0.5, 0.5])) and bank.stamps.tolist() == [1, 0, 2, 0]


def test_tent_loss_by_hand():
    from fair.tent import entropy, tent_loss
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])          # p = (0.5, 0.5), (0.75, 0.25)
    h = lambda *p: -sum(x * math.log(x) for x in p)                      # noqa: E731
    parts = tent_loss(logits, diversity=0.5)
    mean_h = (h(0.5, 0.5) + h(0.75, 0.25)) / 2
    assert parts.entropy.item() == pytest.approx(mean_h)
    assert parts.diversity.item() == pytest.approx(h(0.625, 0.375))
    assert parts.value.item() == pytest.approx(mean_h - 0.5 * h(0.625, 0.375)) == parts.loss.item()
    assert entropy(torch.tensor([1.0, 0.0])).item() == 0.0              # 0 log 0 = 0


def _dpa_tent_objectives(x, theta, y, w, a):
    """dpa's loss, tent's loss and the aligned text probabilities of logits x @ theta, with the gradients of
    both losses w.r.t. the shared parameter theta (the alignment logits a @ theta: the same on every process)."""
    from fair.dpa import DistributionAlignment, align_distribution, dpa_loss
    from fair.tent import tent_loss
    out = {}
    for name, fn in (("dpa", lambda lg, th: dpa_loss(lg, y, w, a @ th, reg=0.7, align=1.3)),
                     ("tent", lambda lg, th: tent_loss(lg, diversity=0.8))):
        th = theta.clone().requires_grad_(True)
        parts = fn(x @ th, th)
        parts.loss.backward()
        out[name] = (parts.value.item(), th.grad)
    p = torch.softmax(x @ theta, dim=-1)
    da = DistributionAlignment(2)
    out["da"] = [da(p) for _ in range(3)][-1]
    assert torch.allclose(out["da"], align_distribution(p, da.means))
    return out


def _dpa_worker(rank, port, x, theta, y, w, a, out):
    import torch.distributed as dist

    from fair.dpa import MemoryBank, image_prototypes
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    sl = slice(4 * rank, 4 * rank + 4)
    res = _dpa_tent_objectives(x[sl], theta, y[sl], w[sl], a)
    for name in ("dpa", "tent"):
        g = res[name][1]
        dist.all_reduce(g)   # what DDP does to parameter gradients: average over processes
        res[name] = (res[name][0], g / 2)
    # the bank: each process writes its half (and both write entry 0 in their second step: rank 1 wins)
    bank = MemoryBank(8, 6, torch.device("cpu"))
    bank.write(torch.arange(8)[sl], x[sl], y[sl])
    bank.write(torch.tensor([0]), x[7:8] * (rank + 1), torch.tensor([rank]))
    bank.synchronise()
    res["bank"] = (bank.features, bank.labels, image_prototypes(bank.features, bank.labels, theta.t()))
    out[rank] = res
    dist.destroy_process_group()


def test_dpa_and_tent_terms_are_the_same_for_one_batch_of_8_and_two_processes_of_4():
    """As FAIR's loss: values, DDP-averaged gradients, the distribution alignment and the gathered memory bank
    (so P) of two processes equal one process's on the whole batch."""
    import torch.multiprocessing as mp

    from fair.dpa import MemoryBank, image_prototypes
    torch.manual_seed(0)
    x, theta, a = torch.randn(8, 6), torch.randn(6, 5), torch.randn(5, 6)
    y, w = torch.randint(0, 5, (8,)), torch.rand(8)
    single = _dpa_tent_objectives(x, theta, y, w, a)
    bank = MemoryBank(8, 6, torch.device("cpu"))
    bank.write(torch.arange(8), x, y)
    bank.write(torch.tensor([0]), x[7:8] * 2, torch.tensor([1]))
    want_p = image_prototypes(bank.features, bank.labels, theta.t())
    out = mp.Manager().dict()
    mp.spawn(_dpa_worker, args=(free_port(), x, theta, y, w, a, out), nprocs=2, join=True)
    for r in range(2):
        for name in ("dpa", "tent"):
            assert out[r][name][0] == pytest.approx(single[name][0], rel=1e-5), name
            assert torch.allclose(out[r][name][1], single[name][1], atol=1e-6), name
        assert torch.allclose(out[r]["da"], single["da"][4 * r:4 * r + 4], atol=1e-6)
        features, labels, P = out[r]["bank"]
        assert torch.equal(features, bank.features) and torch.equal(labels, bank.labels)
        assert torch.allclose(P, want_p, atol=1e-6)
