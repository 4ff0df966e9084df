"""The noise-aware loss and its ablations, against hand-worked numbers (paper Eqs. 10-14,
supplement Eqs. 4-8)."""

from __future__ import annotations

import math

import pytest
import torch

from banacli.ops.nal import (
    SEG_LOSSES,
    bootstrap_beta,
    confidence_map,
    merge_ground_truth,
    nal_loss,
    seg_loss,
    split_regions,
)

TAU = 20.0
V = 255


def _lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _ce(cos: list[float], target: int) -> float:
    """-log softmax(tau * cos)[target], by hand."""
    z = [TAU * c for c in cos]
    return _lse(z) - z[target]


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[float]]]:
    """Four pixels, three classes: A in S, B and C in ~S, D void (Ycrf 255)."""
    cos = [
        [0.5, -0.2, 0.1],  # A: Ycrf = Yret = 0            -> S
        [0.3, 0.6, -0.4],  # B: Ycrf 0, Yret 1 (c* = 0)     -> ~S, class 1 is nearest
        [-0.1, 0.2, 0.7],  # C: Ycrf 2, Yret 0 (c* = 2)     -> ~S, c* is nearest
        [0.9, 0.9, -0.9],  # D: void
    ]
    logits = TAU * torch.tensor(cos, dtype=torch.float64).T.reshape(1, 3, 1, 4)  # (B, K, H, W)
    ycrf = torch.tensor([[[0, 0, 2, V]]])
    yret = torch.tensor([[[0, 1, 0, 1]]])
    return logits, ycrf, yret, cos


def test_regions_put_void_in_neither() -> None:
    ycrf = torch.tensor([[[0, 1, 2, V, 1]]])
    yret = torch.tensor([[[0, 2, 2, 1, V]]])
    s, not_s = split_regions(ycrf, yret)
    assert s.tolist() == [[[True, False, True, False, False]]]
    assert not_s.tolist() == [[[False, True, False, False, False]]]


def test_nal_equals_hand_worked_formula() -> None:
    logits, ycrf, yret, cos = _example()
    gamma, lam = 7.0, 0.1
    # Eq. 10: only pixel A is in S.
    l_ce = _ce(cos[0], 0)
    # Eqs. 11-12: D = 1 + cos; B: D = (1.3, 1.6, 0.6), c* = 0 -> sigma = (1.3 / 1.6)^7;
    # C: D = (0.9, 1.2, 1.7), c* = 2 is the max -> sigma = 1.
    sigma_b = (1.3 / 1.6) ** 7
    sigma_c = 1.0
    # Eq. 13 and Eq. 14.
    l_wce = (sigma_b * _ce(cos[1], 0) + sigma_c * _ce(cos[2], 2)) / (sigma_b + sigma_c)
    expected = l_ce + lam * l_wce

    loss, stats = nal_loss(logits, ycrf, yret, tau=TAU, gamma=gamma, lam=lam)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["loss_ce"] == pytest.approx(l_ce, abs=1e-6)
    assert stats["loss_wce"] == pytest.approx(l_wce, abs=1e-6)
    assert stats["frac_s"] == pytest.approx(0.25)
    assert stats["frac_not_s"] == pytest.approx(0.5)
    sigma = confidence_map(logits, torch.tensor([[[0, 0, 2, V]]]), tau=TAU, gamma=gamma)
    assert sigma[0, 0].tolist() == pytest.approx([1.0, sigma_b, 1.0, 0.0], abs=1e-9)


def test_sigma_is_one_exactly_where_pseudo_label_is_nearest_class() -> None:
    torch.manual_seed(0)
    cos = torch.rand(2, 5, 6, 7, dtype=torch.float64) * 2 - 1
    target = torch.randint(0, 5, (2, 6, 7))
    target[0, 0] = cos[0, :, 0].argmax(0)  # make sure some pixels hit the nearest class
    sigma = confidence_map(TAU * cos, target, tau=TAU, gamma=7.0)
    nearest = target == cos.argmax(1)
    assert nearest.any() and (~nearest).any()
    assert torch.all(sigma[nearest] == 1.0)
    assert torch.all(sigma[~nearest] < 1.0) and torch.all(sigma >= 0.0)


def test_large_gamma_tends_to_ce_plus_ce_over_confident_pixels() -> None:
    torch.manual_seed(1)
    k, n = 4, 40
    cos = torch.rand(1, k, 1, n, dtype=torch.float64) * 1.6 - 0.8
    yret = torch.randint(0, k, (1, 1, n))
    ycrf = yret.clone()
    not_s = torch.zeros(n, dtype=torch.bool)
    not_s[n // 2 :] = True  # second half disagrees
    nearest = cos[0, :, 0].argmax(0)  # (n,)
    for i in range(n // 2, n):
        # even pixels: Ycrf is the nearest class (confident); odd pixels: another class
        ycrf[0, 0, i] = nearest[i] if i % 2 == 0 else (nearest[i] + 1) % k
        yret[0, 0, i] = (ycrf[0, 0, i] + 2) % k
    confident = not_s & (ycrf[0, 0] == nearest)
    assert confident.sum() == n // 4
    lam = 0.1
    ce = [_ce(cos[0, :, 0, i].tolist(), int(ycrf[0, 0, i])) for i in range(n)]
    limit = sum(ce[: n // 2]) / (n // 2) + lam * sum(c for c, f in zip(ce, confident) if f) / int(confident.sum())

    gaps = []
    for gamma in (1.0, 7.0, 50.0, 300.0, 2000.0):
        loss, _ = nal_loss(TAU * cos, ycrf, yret, tau=TAU, gamma=gamma, lam=lam)
        gaps.append(abs(loss.item() - limit))
    assert all(a >= b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[0] > 1e-3 and gaps[-1] < 1e-9


def _reference_wce(
    logits: torch.Tensor, ycrf: torch.Tensor, yret: torch.Tensor, gamma: float, detach: bool
) -> torch.Tensor:
    """An independent, loop-free reimplementation of Eq. 13 used to check gradients."""
    not_s = (ycrf != yret) & (ycrf != V) & (yret != V)
    lg = logits[0].permute(1, 2, 0)[not_s[0]]  # (M, K)
    tgt = ycrf[0][not_s[0]]
    d = 1 + lg / TAU
    sig = (d[torch.arange(len(tgt)), tgt] / d.max(1).values) ** gamma
    if detach:
        sig = sig.detach()
    ce = -torch.log_softmax(lg, 1)[torch.arange(len(tgt)), tgt]
    return (sig * ce).sum() / sig.sum()


@pytest.mark.parametrize("detach", [False, True])
def test_gradient_flows_through_sigma_unless_detached(detach: bool) -> None:
    torch.manual_seed(2)
    logits = (TAU * (torch.rand(1, 3, 3, 3, dtype=torch.float64) * 2 - 1)).requires_grad_()
    ycrf = torch.tensor([[[0, 1, 2], [0, 1, 2], [1, 1, 0]]])
    yret = torch.tensor([[[1, 2, 0], [0, 1, 2], [1, 2, 0]]])
    lam = 0.5
    loss, _ = nal_loss(logits, ycrf, yret, tau=TAU, lam=lam, detach_sigma=detach)
    (g,) = torch.autograd.grad(loss, logits)
    s = (ycrf == yret)[0]
    for d, should_match in ((detach, True), (not detach, False)):
        ce_s = -torch.log_softmax(logits[0].permute(1, 2, 0)[s], 1)[torch.arange(int(s.sum())), ycrf[0][s]].mean()
        ref = ce_s + lam * _reference_wce(logits, ycrf, yret, 7.0, d)
        (g_ref,) = torch.autograd.grad(ref, logits)
        assert torch.allclose(g, g_ref, atol=1e-10) is should_match
        assert ref.item() == pytest.approx(loss.item(), abs=1e-10)


def test_empty_not_s_and_zero_sigma_give_zero_wce() -> None:
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    y = torch.tensor([[[0, 1], [2, V]]])
    loss, stats = nal_loss(logits, y, y, tau=TAU)
    assert stats["loss_wce"] == 0.0 and math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # sigma = 0: c* has cos = -1 (D = 0) at the only ~S pixel.
    cos = torch.tensor([-1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    loss, stats = nal_loss(TAU * cos, torch.tensor([[[0]]]), torch.tensor([[[1]]]), tau=TAU)
    assert stats["loss_wce"] == 0.0 and loss.item() == 0.0


def _void_case(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ycrf = torch.randint(0, 4, (2, 6, 6), generator=g)
    yret = torch.where(torch.rand(2, 6, 6, generator=g) < 0.4, torch.randint(0, 4, (2, 6, 6), generator=g), ycrf)
    void = torch.zeros(2, 6, 6, dtype=torch.bool)
    void[:, :2] = True
    ycrf[:, 0] = V
    yret[:, 0] = V
    if kind not in ("ycrf", "yret"):  # void in one of the two labels is void as well
        ycrf[:, 1, :3] = V
        yret[:, 1, 3:] = V
    else:
        ycrf[:, 1] = V
        yret[:, 1] = V
    return ycrf, yret, void, TAU * (torch.rand(2, 4, 6, 6, generator=g, dtype=torch.float64) * 2 - 1)


@pytest.mark.parametrize("kind", SEG_LOSSES)
def test_void_pixels_never_contribute(kind: str) -> None:
    ycrf, yret, void, logits = _void_case(kind)
    other = logits.clone()
    other[:, :, void[0]] = TAU * torch.tensor([1.0, -1.0, 0.3, -0.7], dtype=torch.float64).view(1, 4, 1)
    results = []
    for lg in (logits, other):
        lg = lg.clone().requires_grad_()
        loss, _ = seg_loss(kind, lg, ycrf, yret, tau=TAU, beta=0.6)
        (g,) = torch.autograd.grad(loss, lg)
        results.append((loss.item(), g))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-12)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-12)
    assert torch.all(results[0][1].permute(1, 0, 2, 3)[:, void] == 0)


def test_ablation_losses_match_supplement_equations() -> None:
    logits, ycrf, yret, cos = _example()
    lam, beta = 0.1, 0.3
    l_ce = _ce(cos[0], 0)

    def probs(c: list[float]) -> list[float]:
        z = [TAU * x for x in c]
        return [math.exp(v - _lse(z)) for v in z]

    # ~S = {B (c* = 0), C (c* = 2)}; |~S| = 2.
    ent = sum(-sum(p * math.log(p) for p in probs(cos[i])) for i in (1, 2)) / 2  # supp. Eq. 4
    boot = 0.0  # supp. Eqs. 6-7: Y = beta * onehot(Ycrf) + (1 - beta) * H
    for i, c_star in ((1, 0), (2, 2)):
        h = probs(cos[i])
        y = [beta * (c == c_star) + (1 - beta) * h[c] for c in range(3)]
        boot -= sum(y[c] * math.log(h[c]) for c in range(3))
    boot /= 2
    expected = {
        "ce": l_ce,
        "entropy": l_ce + lam * ent,  # supp. Eq. 5
        "bootstrap": l_ce + lam * boot,  # supp. Eq. 8
        "ycrf": (_ce(cos[0], 0) + _ce(cos[1], 0) + _ce(cos[2], 2)) / 3,
        "yret": (_ce(cos[0], 0) + _ce(cos[1], 1) + _ce(cos[2], 0) + _ce(cos[3], 1)) / 4,
    }
    for kind, value in expected.items():
        loss, _ = seg_loss(kind, logits, ycrf, yret, tau=TAU, lam=lam, beta=beta)
        assert loss.item() == pytest.approx(value, abs=1e-6), kind
    with pytest.raises(ValueError, match="beta"):
        seg_loss("bootstrap", logits, ycrf, yret, tau=TAU)
    with pytest.raises(ValueError, match="unknown"):
        seg_loss("dice", logits, ycrf, yret, tau=TAU)


def test_bootstrap_target_prediction_part_is_detached() -> None:
    """With beta = 0 the target is H itself, held constant (supp. Eq. 7, E-step): the gradient
    of -sum_c Y_c log H_c with respect to the logits is H - Y = 0 at every ~S pixel."""
    _, ycrf, yret, _ = _example()
    logits = (TAU * torch.rand(1, 3, 1, 4, dtype=torch.float64)).requires_grad_()
    loss, _ = seg_loss("bootstrap", logits, ycrf, yret, tau=TAU, lam=1.0, beta=0.0)
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(g[0, :, 0, 1:3], torch.zeros(3, 2, dtype=torch.float64), atol=1e-12)
    assert g[0, :, 0, 0].abs().sum() > 0  # the S pixel still learns


def test_bootstrap_beta_follows_poly_schedule() -> None:
    assert bootstrap_beta(0, 100) == 1.0
    assert bootstrap_beta(100, 100) == 0.0
    assert bootstrap_beta(50, 100) == pytest.approx(0.5**0.9)


def test_ground_truth_images_use_plain_ce_on_their_masks() -> None:
    logits, ycrf, yret, cos = _example()
    logits2 = torch.cat([logits, logits])  # image 0 weak, image 1 with ground truth
    ycrf2, yret2 = torch.cat([ycrf, ycrf]), torch.cat([yret, yret])
    gt = torch.tensor([[[V, V, V, V]], [[1, 1, V, 2]]])
    has_gt = torch.tensor([False, True])
    for kind in ("ce", "nal", "ycrf"):
        loss, _ = seg_loss(kind, logits2, ycrf2, yret2, tau=TAU, gt=gt, has_gt=has_gt)
        # image 1's three labelled pixels join the reliable set S (pixel A of image 0 is the
        # other); its pseudo labels are not used, so ~S is that of image 0 alone
        if kind == "ycrf":
            weak = _ce(cos[0], 0) + _ce(cos[1], 0) + _ce(cos[2], 2)
            expected = (weak + _ce(cos[0], 1) + _ce(cos[1], 1) + _ce(cos[3], 2)) / 6
        else:
            ce = (_ce(cos[0], 0) + _ce(cos[0], 1) + _ce(cos[1], 1) + _ce(cos[3], 2)) / 4
            weak, _ = nal_loss(logits, ycrf, yret, tau=TAU)
            wce = (weak.item() - _ce(cos[0], 0)) / 0.1
            expected = ce + (0.1 * wce if kind == "nal" else 0.0)
        assert loss.item() == pytest.approx(expected, abs=1e-6), kind
    # has_gt inferred from the mask; a single bool applies to the whole batch
    a, b = merge_ground_truth(ycrf2, yret2, gt)
    assert a[1].tolist() == gt[1].tolist() and a[0].tolist() == ycrf[0].tolist()
    a, _ = merge_ground_truth(ycrf2, yret2, gt, True)
    assert a.tolist() == gt.tolist()


def test_every_loss_trains_a_tiny_model() -> None:
    from banacli.models.deeplab import build_segmenter, upsample_logits

    torch.manual_seed(0)
    size = 48
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ycrf = torch.stack([((xx // 16 + yy // 24) % 3), ((xx + yy) // 32 % 3)])  # (2, H, W)
    x = torch.stack([torch.stack([(ycrf[i] == c).float() for c in range(3)]) for i in range(2)]) * 2 - 1
    x = x + 0.1 * torch.randn_like(x)
    yret = ycrf.clone()
    yret[:, 10:20, 10:20] = (yret[:, 10:20, 10:20] + 1) % 3  # a disagreeing block -> ~S
    ycrf[:, :, -3:] = V  # crop padding
    yret[:, :, -3:] = V

    for kind in SEG_LOSSES:
        torch.manual_seed(0)
        model = build_segmenter("tiny", 3)
        opt = torch.optim.SGD(model.param_groups(0.01, 5e-4), momentum=0.9)

        def step(train: bool, it: int = 0) -> float:
            model.train(train)
            logits = upsample_logits(model(x)["logits"], (size, size))
            loss, _ = seg_loss(kind, logits, ycrf, yret, tau=model.tau, beta=bootstrap_beta(it, 30))
            assert torch.isfinite(loss)
            if train:
                opt.zero_grad()
                loss.backward()
                opt.step()
            return loss.item()

        with torch.no_grad():
            before = step(False)
        for it in range(30):
            step(True, it)
        with torch.no_grad():
            after = step(False)
        assert after < before, (kind, before, after)
