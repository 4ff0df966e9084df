"""Stage-3 segmentation losses: the noise-aware loss (NAL) and its ablations.

Pure functions of tensors. Symbols follow the paper (Sec. 3.3, supplement Sec. 5):

- ``S``  = pixels where Ycrf == Yret (target Ycrf); ``~S`` = pixels where they differ
  (target c* = Ycrf). A pixel that is void (255) in either label is in neither region
  and never contributes to any loss, statistic or gradient.
- ``logits_up`` are the cosine-classifier logits ``tau * cos(phi(p), W_c)`` already
  upsampled (bilinear, align_corners=True) to the label resolution: (B, K, H, W).

All means are taken over the pixels of the whole batch (Eq. 10 divides by sum_c |S_c|),
not per image. An empty region contributes 0 (with a graph, so ``backward`` still works).

Semi-supervised training: images whose ground-truth mask is known (``has_gt``) use plain
cross-entropy on that mask. We implement this by putting every labelled pixel of such an
image in S with its ground-truth class (Ycrf := Yret := GT), so those pixels are pooled with
the reliable weak pixels in L_ce (one mean over all reliable pixels of the batch); their
pseudo labels are not used at all. For ``kind="ycrf"``/``"yret"`` the GT replaces the
pseudo label in the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255

SEG_LOSSES = ("nal", "ce", "ycrf", "yret", "entropy", "bootstrap")

__all__ = [
    "IGNORE_INDEX",
    "SEG_LOSSES",
    "bootstrap_beta",
    "confidence_map",
    "merge_ground_truth",
    "nal_loss",
    "seg_loss",
    "split_regions",
]


def split_regions(ycrf: Tensor, yret: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Boolean masks (S, ~S), each (B, H, W); void pixels (255 in either label) are in neither."""
    if ycrf.shape != yret.shape:
        raise ValueError(f"Ycrf {tuple(ycrf.shape)} and Yret {tuple(yret.shape)} differ in shape")
    valid = (ycrf != ignore_index) & (yret != ignore_index)
    same = ycrf == yret
    return valid & same, valid & ~same


def confidence_map(logits_up: Tensor, target: Tensor, *, tau: float, gamma: float = 7.0) -> Tensor:
    """sigma(p) = (D_c*(p) / max_c D_c(p))^gamma with D_c = 1 + cos = 1 + logits / tau (Eqs. 11-12).

    ``target`` (B, H, W) holds c* = Ycrf; where it is void (>= K, e.g. 255) sigma is 0.
    Returns (B, H, W) in [0, 1]; 1 exactly where c* is the class with the largest cosine.
    """
    num_classes = logits_up.shape[1]
    inside = (target >= 0) & (target < num_classes)  # (B, H, W)
    safe = torch.where(inside, target, torch.zeros_like(target)).long()
    d = 1.0 + logits_up / tau  # (B, K, H, W), in [0, 2]
    d_star = d.gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, H, W)
    d_max = d.amax(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
    ratio = (d_star / d_max).clamp(0.0, 1.0)
    sigma = ratio.pow(gamma)
    return torch.where(inside, sigma, torch.zeros_like(sigma))


def _pixel_ce(logits_up: Tensor, target: Tensor, region: Tensor) -> Tensor:
    """Per-pixel cross-entropy (B, H, W), exactly 0 (and no gradient) outside ``region``."""
    tgt = torch.where(region, target, torch.full_like(target, IGNORE_INDEX)).long()
    return F.cross_entropy(logits_up, tgt, ignore_index=IGNORE_INDEX, reduction="none")


def _region_mean(values: Tensor, region: Tensor) -> Tensor:
    """Mean of ``values`` over ``region``; 0 for an empty region (keeps the graph)."""
    n = region.sum()
    total = torch.where(region, values, torch.zeros_like(values)).sum()
    return total / n.clamp_min(1)


def _check(logits_up: Tensor, *labels: Tensor | None) -> None:
    if logits_up.dim() != 4:
        raise ValueError(f"logits must be (B, K, H, W), got {tuple(logits_up.shape)}")
    b, _, h, w = logits_up.shape
    for y in labels:
        if y is not None and tuple(y.shape) != (b, h, w):
            raise ValueError(f"label of shape {tuple(y.shape)} does not match logits {(b, h, w)}")


def nal_loss(
    logits_up: Tensor,
    ycrf: Tensor,
    yret: Tensor,
    *,
    tau: float,
    gamma: float = 7.0,
    lam: float = 0.1,
    detach_sigma: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """The noise-aware loss L = L_ce + lam * L_wce (Eqs. 10-14).

    L_ce  = mean cross-entropy over S with target Ycrf (Eq. 10).
    L_wce = sum_{~S} sigma * CE / sum_{~S} sigma, target c* = Ycrf (Eq. 13); 0 when ~S is
            empty or sigma sums to 0.
    sigma is not detached by default (as in the authors' implementation), so the loss also
    moves the features/classifier weights to make sigma larger; ``detach_sigma=True`` treats
    it as a constant weight.

    Returns the scalar loss and detached statistics (python floats):
    ``loss``, ``loss_ce``, ``loss_wce``, ``frac_s``, ``frac_not_s`` (fractions of all
    pixels) and ``sigma_mean`` (mean sigma over ~S, NaN when ~S is empty).
    """
    _check(logits_up, ycrf, yret)
    s, not_s = split_regions(ycrf, yret)
    ce_s = _pixel_ce(logits_up, ycrf, s)
    loss_ce = _region_mean(ce_s, s)

    ce_n = _pixel_ce(logits_up, ycrf, not_s)  # (B, H, W)
    target = torch.where(not_s, ycrf, torch.full_like(ycrf, IGNORE_INDEX))
    sigma = confidence_map(logits_up, target, tau=tau, gamma=gamma)  # 0 outside ~S
    if detach_sigma:
        sigma = sigma.detach()
    denom = sigma.sum()
    num = (sigma * ce_n).sum()
    loss_wce = torch.where(denom > 0, num / denom.clamp_min(torch.finfo(denom.dtype).tiny), num * 0.0)

    loss = loss_ce + lam * loss_wce
    n_not_s = int(not_s.sum())
    stats = {
        "loss": float(loss.detach()),
        "loss_ce": float(loss_ce.detach()),
        "loss_wce": float(loss_wce.detach()),
        "frac_s": float(s.float().mean()),
        "frac_not_s": float(not_s.float().mean()),
        "sigma_mean": float(denom.detach()) / n_not_s if n_not_s else float("nan"),
    }
    return loss, stats


def bootstrap_beta(iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """beta for the bootstrapping loss: 1 -> 0 on the poly schedule, (1 - it / max)^power."""
    frac = min(max(iteration / max(max_iterations, 1), 0.0), 1.0)
    return (1.0 - frac) ** power


def merge_ground_truth(
    ycrf: Tensor | None,
    yret: Tensor | None,
    gt: Tensor | None,
    has_gt: Tensor | bool | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Replace the pseudo labels of the images with a ground-truth mask by that mask.

    ``gt`` (B, H, W) holds class ids, 255 where unknown; ``has_gt`` is a (B,) bool tensor or
    one bool for the whole batch. Without ``has_gt`` an image counts as labelled when its
    ``gt`` has any non-void pixel. Returns new (ycrf, yret); inputs are not modified.
    """
    if gt is None:
        return ycrf, yret
    ref = ycrf if ycrf is not None else yret
    if ref is not None and gt.shape != ref.shape:
        raise ValueError(f"gt {tuple(gt.shape)} does not match the pseudo labels {tuple(ref.shape)}")
    if has_gt is None:
        has = (gt != IGNORE_INDEX).flatten(1).any(dim=1)
    elif isinstance(has_gt, bool):
        has = torch.full((gt.shape[0],), has_gt, dtype=torch.bool, device=gt.device)
    else:
        has = has_gt.to(device=gt.device, dtype=torch.bool).reshape(-1)
        if has.numel() != gt.shape[0]:
            raise ValueError(f"has_gt has {has.numel()} entries for a batch of {gt.shape[0]}")
    sel = has.view(-1, 1, 1)  # (B, 1, 1)
    gt = gt.to(ref.dtype) if ref is not None else gt
    out_crf = torch.where(sel, gt, ycrf) if ycrf is not None else None
    out_ret = torch.where(sel, gt, yret) if yret is not None else None
    return out_crf, out_ret


def seg_loss(
    kind: str,
    logits_up: Tensor,
    ycrf: Tensor | None,
    yret: Tensor | None,
    *,
    tau: float,
    gamma: float = 7.0,
    lam: float = 0.1,
    detach_sigma: bool = False,
    beta: float | None = None,
    gt: Tensor | None = None,
    has_gt: Tensor | bool | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Segmentation loss of the given ``kind`` (one of ``SEG_LOSSES``; paper Table 3/4).

    - ``nal``:       L_ce over S + lam * L_wce over ~S (Eq. 14), see :func:`nal_loss`.
    - ``ce``:        L_ce over S only; ~S is ignored (Table 3 "baseline").
    - ``ycrf``:      plain cross-entropy on Ycrf at every non-void pixel ("w/ Ycrf").
    - ``yret``:      plain cross-entropy on Yret at every non-void pixel ("w/ Yret").
    - ``entropy``:   L_ce + lam * L_ER, L_ER = -(1/|~S|) sum_{~S} sum_c H_c log H_c (supp. Eqs. 4-5).
    - ``bootstrap``: L_ce + lam * L_BS, L_BS = -(1/|~S|) sum_{~S} sum_c Y_c log H_c with
      Y = beta * onehot(Ycrf) + (1 - beta) * H, H detached (supp. Eqs. 6-8); ``beta`` is
      required (see :func:`bootstrap_beta`).

    ``gt``/``has_gt``: semi-supervised images use plain CE on their masks (see module doc).
    Returns the loss and detached statistics (``loss``, ``loss_ce``, ``loss_aux`` ...).
    """
    if kind not in SEG_LOSSES:
        raise ValueError(f"unknown segmentation loss {kind!r}; choose one of {', '.join(SEG_LOSSES)}")
    ycrf, yret = merge_ground_truth(ycrf, yret, gt, has_gt)

    if kind in ("ycrf", "yret"):
        target = ycrf if kind == "ycrf" else yret
        if target is None:
            raise ValueError(f"loss {kind!r} needs the {kind} labels")
        _check(logits_up, target)
        valid = (target != IGNORE_INDEX) & (target >= 0) & (target < logits_up.shape[1])
        loss = _region_mean(_pixel_ce(logits_up, target, valid), valid)
        value = float(loss.detach())
        stats = {"loss": value, "loss_ce": value, "frac_valid": float(valid.float().mean())}
        return loss, stats

    if ycrf is None or yret is None:
        raise ValueError(f"loss {kind!r} needs both Ycrf and Yret")
    if kind == "nal":
        loss, stats = nal_loss(logits_up, ycrf, yret, tau=tau, gamma=gamma, lam=lam, detach_sigma=detach_sigma)
        stats["loss_aux"] = stats["loss_wce"]
        return loss, stats

    _check(logits_up, ycrf, yret)
    s, not_s = split_regions(ycrf, yret)
    loss_ce = _region_mean(_pixel_ce(logits_up, ycrf, s), s)
    if kind == "ce":
        loss_aux = loss_ce * 0.0
        lam_eff = 0.0
    elif kind == "entropy":
        logp = F.log_softmax(logits_up, dim=1)  # (B, K, H, W)
        ent = -(logp.exp() * logp).sum(dim=1)  # (B, H, W)
        loss_aux = _region_mean(ent, not_s)
        lam_eff = lam
    else:  # bootstrap
        if beta is None:
            raise ValueError("loss 'bootstrap' needs beta (1 -> 0 on the poly schedule)")
        logp = F.log_softmax(logits_up, dim=1)  # (B, K, H, W)
        ce_hard = _pixel_ce(logits_up, ycrf, not_s)  # -log H_{Ycrf}
        ce_soft = -(logp.detach().exp() * logp).sum(dim=1)  # -sum_c H_c(detached) log H_c
        loss_aux = _region_mean(beta * ce_hard + (1.0 - beta) * ce_soft, not_s)
        lam_eff = lam
    loss = loss_ce + lam_eff * loss_aux
    stats = {
        "loss": float(loss.detach()),
        "loss_ce": float(loss_ce.detach()),
        "loss_aux": float(loss_aux.detach()),
        "frac_s": float(s.float().mean()),
        "frac_not_s": float(not_s.float().mean()),
    }
    return loss, stats
