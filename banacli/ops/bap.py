"""Background-aware pooling (BAP, paper Sec. 3.1, Eqs. 1-4) as pure, batched tensor functions.

Coordinates. Boxes arrive in input pixels ``[batch_idx, x0, y0, x1, y1]`` (0-based, exclusive
end: a box covers columns x0..x1-1). Inside the ops we use *continuous* coordinates in which
pixel k spans [k, k+1) and has its centre at k + 0.5, the convention of
``torchvision.ops.roi_align(aligned=True)``. Every backbone here has output stride 8 built
from kernel-3/padding-1 (or kernel-7/padding-3, 1x1) stride-2 layers, each of which centres
output pixel i on input pixel 2i, so feature pixel i is centred on input pixel 8i: its
continuous centre 8i + 0.5 must map to i + 0.5. Hence the affine map (see
:func:`boxes_to_feature_coords`) ``v = (u - 0.5) / s + 0.5 = (u + (s - 1) / 2) / s``; a plain
``u / s`` would shift every box by 7/16 of a feature pixel up and left. The definite-background
mask M is resized the same way: feature pixel (i, j) takes M at input pixel (s*i, s*j).

Pooling. Each of the R x R bins of a box is a weighted average of features with weights
1 - A (Eq. 4). It is computed with one ``roi_align`` over the channels [f * w, w] and the
quotient of the two, so bilinear sampling (several samples per bin, adaptive like
roi_align's default) plays the role of the reference's per-box ``grid_sample`` crop.
A tiny constant ``POOL_EPS`` is added to the weights so that a bin whose pixels all look like
background (w ~ 0) degrades to the plain mean instead of dividing by zero.

Precision. Under ``torch.autocast`` (``amp: true``) the backbone may run in bf16/fp16, but the
background queries, the attention A, the pooling weights 1 - A, the pooled features and the
logits of :func:`bap_loss` are computed in float32 with autocast disabled: in bf16, A in
[0.9, 1) takes only 17 distinct values and 1 - A is off by 3% on average (16% at worst),
which would change the method, not just its speed.

Poolings (``pooling=``):

- ``bap``: Eq. 4 with the attention A, plus the valid background queries as class-0 samples.
- ``gap``: A = 0 (each bin a plain average over the box) but the background queries are kept
  as class-0 samples: bana's ablation of the attention alone.
- ``gap-paper``: the paper's GAP baseline (Sec. 4.2, "a CNN with GAP for image
  classification"): A = 0 and no background samples; the loss is the softmax
  cross-entropy of the foreground bins only (the background class of the classifier then
  gets no positive sample).

Stage 2 of each pooling (docs/bap-vs-gap.md): the background attention u0 of Eq. 7 is "a
by-product of our BAP"; the paper's GAP row is made "using CAMs and DenseCRF" (Sec. 4.2), so a
GAP classifier's labels take their background score from the background CAM
(``labels.use_u0=false``, what the demo does). gen-labels warns when u0 comes from the
attention of a classifier not trained with BAP, and when that attention is degenerate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

POOL_EPS = 1e-6
POOLINGS: tuple[str, ...] = ("bap", "gap", "gap-paper")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def boxes_to_feature_coords(boxes: Tensor, stride: int = 8) -> Tensor:
    """(N, 5) ``[b, x0, y0, x1, y1]`` input pixels -> same layout in continuous feature coords."""
    out = boxes.to(torch.float32).clone()
    out[:, 1:] = (out[:, 1:] + (stride - 1) / 2.0) / stride
    return out


def downsample_mask(mask: Tensor, size: Sequence[int], *, stride: int | None = None) -> Tensor:
    """Nearest-neighbour resize of a (B, H, W) mask to (B, h, w); dtype is kept.

    With ``stride`` (and a feature map of side ceil(H/stride)) feature pixel (i, j) takes the
    mask at input pixel (stride*i, stride*j), i.e. at the centre of its receptive field. Without
    it, ``F.interpolate(mode="nearest")`` is used.
    """
    h, w = int(size[0]), int(size[1])
    H, W = mask.shape[-2:]
    if stride is not None and (h - 1) * stride < H and (w - 1) * stride < W:
        return mask[..., : (h - 1) * stride + 1 : stride, : (w - 1) * stride + 1 : stride]
    out = F.interpolate(mask[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    return out.to(mask.dtype)


def background_queries(feats: Tensor, bg_mask: Tensor, grid_size: int) -> tuple[Tensor, Tensor]:
    """Eq. 1: masked mean of the features over each cell of an N x N grid.

    feats (B, C, h, w); bg_mask (B, h, w) bool/float (1 = definite background).
    Both are zero-padded so each side is a multiple of N (padding split as evenly as possible,
    the odd pixel at the end), then cut into N x N equal cells (row-major order).
    Returns queries (B, N*N, C) (zero for invalid cells) and valid (B, N*N) bool: a cell is
    valid if it holds at least one background pixel.
    """
    B, C, h, w = feats.shape
    n = int(grid_size)
    if n < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    ph, pw = (-h) % n, (-w) % n
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # (left, right, top, bottom)
    f = F.pad(feats, pad)
    m = F.pad(bg_mask.to(feats.dtype), pad)[:, None]  # (B, 1, H2, W2)
    ch, cw = (h + ph) // n, (w + pw) // n
    sums = (f * m).view(B, C, n, ch, n, cw).sum(dim=(3, 5))  # (B, C, N, N)
    counts = m.view(B, 1, n, ch, n, cw).sum(dim=(3, 5))  # (B, 1, N, N)
    valid = counts > 0
    queries = sums / counts.clamp_min(torch.finfo(feats.dtype).tiny)
    queries = queries * valid
    return queries.flatten(2).transpose(1, 2), valid.flatten(1)


def attention_map(feats: Tensor, queries: Tensor, valid: Tensor) -> Tensor:
    """Eqs. 2-3: A(p) = mean over valid j of ReLU(cos(f(p), q_j)) -> (B, h, w) in [0, 1].

    Computed at every pixel (the caller uses it inside boxes only); an image with no valid
    query gets A = 0 everywhere (its boxes are pooled with GAP).
    """
    fn = F.normalize(feats, dim=1)  # (B, C, h, w)
    qn = F.normalize(queries, dim=-1)  # (B, J, C)
    sim = torch.einsum("bchw,bjc->bjhw", fn, qn).relu()
    v = valid.to(feats.dtype)
    num = (sim * v[:, :, None, None]).sum(dim=1)
    return num / v.sum(dim=1).clamp_min(1.0)[:, None, None]


def pool_boxes(
    feats: Tensor,
    weights: Tensor,
    boxes: Tensor,
    roi_size: int | Sequence[int],
    *,
    sampling_ratio: int = -1,
) -> Tensor:
    """Eq. 4 on an R x R grid of bins: (N, R*R, C) weighted-average features per box.

    feats (B, C, h, w); weights (B, h, w) = 1 - A (all ones for GAP); boxes (N, 5)
    ``[b, x0, y0, x1, y1]`` in continuous feature coordinates (see module docstring).
    One batched ``roi_align`` over [f*w, w]; bins are ordered row-major.
    """
    B, C, h, w = feats.shape
    R = _pair(roi_size)
    wt = (weights.to(feats.dtype) + POOL_EPS)[:, None]  # (B, 1, h, w)
    stacked = torch.cat([feats * wt, wt], dim=1)  # (B, C+1, h, w)
    out = roi_align(
        stacked, boxes.to(feats.dtype), output_size=R, spatial_scale=1.0,
        sampling_ratio=sampling_ratio, aligned=True,
    )  # (N, C+1, R, R)
    pooled = out[:, :C] / out[:, C:].clamp_min(torch.finfo(feats.dtype).tiny)
    return pooled.flatten(2).transpose(1, 2)


def pool_boxes_loop(
    feats: Tensor,
    weights: Tensor,
    boxes: Tensor,
    roi_size: int | Sequence[int],
    *,
    sampling_ratio: int = -1,
) -> Tensor:
    """Reference for :func:`pool_boxes`: a plain Python loop over boxes (tests/benchmark only).

    For each box: bilinearly sample f*w and w on a regular grid of sample points covering the
    box (``grid_sample``, border clamping), average the samples of each bin, divide.
    """
    B, C, h, w = feats.shape
    Rh, Rw = _pair(roi_size)
    wt = (weights.to(feats.dtype) + POOL_EPS)[:, None]
    stacked = torch.cat([feats * wt, wt], dim=1)
    rows = []
    for box in boxes.to(feats.dtype):
        b = int(box[0])
        x0, y0, x1, y1 = box[1], box[2], box[3], box[4]
        roi_w, roi_h = x1 - x0, y1 - y0
        gh = sampling_ratio if sampling_ratio > 0 else max(math.ceil((roi_h / Rh).item()), 1)
        gw = sampling_ratio if sampling_ratio > 0 else max(math.ceil((roi_w / Rw).item()), 1)
        # sample points in pixel-index space (pixel k at coordinate k): start - 0.5 + (t + .5) * step
        ys = (y0 - 0.5) + (torch.arange(Rh * gh, dtype=feats.dtype) + 0.5) * (roi_h / (Rh * gh))
        xs = (x0 - 0.5) + (torch.arange(Rw * gw, dtype=feats.dtype) + 0.5) * (roi_w / (Rw * gw))
        gy = 2 * ys / (h - 1) - 1 if h > 1 else torch.zeros_like(ys)
        gx = 2 * xs / (w - 1) - 1 if w > 1 else torch.zeros_like(xs)
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # (1, Rh*gh, Rw*gw, 2)
        crop = F.grid_sample(stacked[b : b + 1], grid, mode="bilinear", padding_mode="border", align_corners=True)
        bins = crop.view(C + 1, Rh, gh, Rw, gw).mean(dim=(2, 4))  # (C+1, Rh, Rw)
        pooled = bins[:C] / bins[C:].clamp_min(torch.finfo(feats.dtype).tiny)
        rows.append(pooled.flatten(1).t())
    if not rows:
        return feats.new_zeros((0, Rh * Rw, C))
    return torch.stack(rows)


def bap_loss(
    feats: Tensor,
    classifier_weight: Tensor,
    boxes: Tensor,
    box_labels: Tensor,
    bg_mask: Tensor,
    *,
    stride: int = 8,
    grid_size: int = 4,
    roi_size: int | Sequence[int] = 2,
    pooling: str = "bap",
    bg_fallback: float = 0.125,
) -> dict[str, Tensor]:
    """The stage-1 loss: one softmax cross-entropy over foreground bins and background queries.

    feats (B, C, h, w) backbone features; classifier_weight (K, C) or (K, C, 1, 1), K = L + 1;
    boxes (N, 5) ``[b, x0, y0, x1, y1]`` in input pixels; box_labels (N,) in 1..L;
    bg_mask (B, H, W) bool definite background M at input resolution (padding False).

    An image whose mean of M (over the whole input, padding included) is <= ``bg_fallback``
    gets A = 0 (GAP) for its boxes and contributes no background queries. ``pooling="gap"``
    sets A = 0 everywhere but keeps the background queries as class-0 samples (the ablation);
    ``pooling="gap-paper"`` sets A = 0 and uses no background samples (the paper's baseline).
    Everything after the backbone runs in float32, also under autocast (module docstring).

    Returns loss (scalar), logits (N*R*R + J, K) with targets (same order: all foreground bins
    box by box, then the valid queries image by image), attention (B, h, w) A,
    valid (B, N*N), bap_images (B,) bool, num_fg, num_bg.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    B, C, h, w = feats.shape
    weight = classifier_weight.reshape(classifier_weight.shape[0], -1)  # (K, C)
    if weight.shape[1] != C:
        raise ValueError(f"classifier expects {weight.shape[1]} channels, features have {C}")
    R = _pair(roi_size)
    with torch.autocast(device_type=feats.device.type, enabled=False):
        return _bap_loss_fp32(feats.float(), weight.float(), boxes, box_labels, bg_mask, stride=stride,
                              grid_size=grid_size, R=R, pooling=pooling, bg_fallback=bg_fallback)


def _bap_loss_fp32(feats, weight, boxes, box_labels, bg_mask, *, stride, grid_size, R, pooling, bg_fallback):
    B, C, h, w = feats.shape
    enough_bg = bg_mask.to(torch.float32).flatten(1).mean(dim=1) > bg_fallback  # (B,)
    m = downsample_mask(bg_mask, (h, w), stride=stride).to(feats.dtype)
    m = m * enough_bg[:, None, None].to(feats.dtype)
    queries, valid = background_queries(feats, m, grid_size)  # (B, N*N, C), (B, N*N)
    if pooling == "bap":
        attention = attention_map(feats, queries, valid)  # (B, h, w), 0 where no valid query
    else:
        attention = feats.new_zeros((B, h, w))

    fboxes = boxes_to_feature_coords(boxes, stride).to(feats.device)
    fg = pool_boxes(feats, 1.0 - attention, fboxes, R)  # (N, R*R, C)
    fg_targets = box_labels.to(device=feats.device, dtype=torch.long).repeat_interleave(R[0] * R[1])
    bg = queries[valid] if pooling != "gap-paper" else queries.new_zeros((0, C))  # (J, C)
    bg_targets = torch.zeros(bg.shape[0], dtype=torch.long, device=feats.device)

    samples = torch.cat([fg.reshape(-1, C), bg], dim=0)
    targets = torch.cat([fg_targets, bg_targets])
    logits = samples @ weight.t()
    if samples.shape[0] > 0:
        loss = F.cross_entropy(logits, targets)
    else:  # nothing to learn from: keep the graph so backward() still works
        loss = feats.sum() * 0.0 + weight.sum() * 0.0
    return {
        "loss": loss,
        "logits": logits,
        "targets": targets,
        "attention": attention,
        "valid": valid,
        "bap_images": enough_bg & (pooling == "bap"),
        "num_fg": torch.tensor(fg.shape[0] * R[0] * R[1]),
        "num_bg": torch.tensor(bg.shape[0]),
    }
