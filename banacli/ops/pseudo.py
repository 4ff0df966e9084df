"""Stage 2 of BANA: pseudo labels Ycrf and Yret from a BAP classifier (paper Sec. 3.2).

The steps follow docs/method.md, "Stage 2 — pseudo labels", 1–9 (writing the PNGs belongs to
the stage, not to these pure functions):

1. f = the classifier features, bilinearly upsampled (align_corners=True) to H×W.
2. background queries q_j from the definite-background mask M (grid N, default 1);
   A(p) = mean_j ReLU(cos(f(p), q_j))                                   -> background_attention
3. A(p) = 0 where A(p) < bg_threshold · max A   (max over the WHOLE image, as the
   authors' ``stage2.py`` does: ``bg_attn.max()`` is taken before masking by the boxes)
4. u0 = 1 outside all boxes, A inside (Eq. 7)                           -> compute_unaries
5. u_c = ReLU(f·w_c) / max over the same box, 0 outside the boxes of c (Eqs. 5–6)
6. softmax over [u0, u_c1, …] inside the union of boxes; P(background) = 1 outside
7. DenseCRF on the RGB image                                            -> refine_with_crf
8. zero each class's marginal outside its boxes, argmax -> Ycrf
9. prototypes q_c from Ycrf, C_c = ReLU(cos(f, q_c)), C_0 = 1 outside the boxes, each
   foreground C_c = 0 outside its boxes, argmax -> Yret (Eqs. 8–9)      -> retrieve_labels

Box convention: ``boxes`` are float (K, 4) ``x0, y0, x1, y1``, 0-based with an exclusive end;
their pixels (both conventions, and their arithmetic) are defined in :mod:`banacli.boxes`.

``box_convention="authors"`` reproduces the authors' stage 2 bit for bit (docs/method.md): the
foreground extents — CAM support and per-box maximum (step 5), the post-CRF class mask (step
8) and the retrieval class mask (step 9) — are their ``[ymin:ymax, xmin:xmax]`` slices of the
1-based VOC values after a float32 normalise/denormalise round trip truncated by ``.long()``
(:func:`banacli.boxes.authors_extents`), and where boxes of one class overlap the later box's normalised CAM
wins. The background mask, the background queries and "background outside the boxes" keep the
full (VOC) boxes in both conventions.

Memory. The naive path (``exact=True``) upsamples all C channels to H×W, like the
reference implementation: C·H·W floats (0.77 GB for C = 1024 at 500×375). The default
path never builds that tensor. Bilinear upsampling is linear, f_up = U f with the
separable U = U_y ⊗ U_x, so
  * f_up(p)·v        = U (f·v) (p)                       (upsample a 1-channel map),
  * Σ_p w(p) f_up(p) = Σ_a (Uᵀ w)_a f_a                  (a low-res weight map),
  * ||f_up(p)||²     = Σ_{a,b} U_pa U_pb <f_a, f_b>      over the ≤ 4 low-res neighbours
    of p, gathered from five low-res Gram maps (the centre and the →, ↓, ↘, ↙ neighbour
    products) of the replicate-padded features and the separable bilinear weights.
Cosines, CAMs and masked means are therefore exact with O(C·h·w + H·W) memory; they are
computed in float64 and returned as float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from banacli.boxes import BOX_CONVENTIONS, box_extents, check_box_labels, foreground_extents, union_mask
from banacli.errors import ConfigError, DataError
from banacli.ops.crf import CRFParams, dense_crf

__all__ = [
    "PseudoLabelParams",
    "PseudoLabels",
    "Unaries",
    "FeatureField",
    "background_attention",
    "compute_unaries",
    "refine_with_crf",
    "retrieve_labels",
    "generate_pseudo_labels",
    "DEGENERATE_KEPT_SHARE",
    "attention_kept_share",
    "attention_is_degenerate",
    "image_attention_kept",
]

_EPS_NORM = 1e-12  # as F.normalize: x / max(||x||, eps)
_EPS_MAX = 1e-12  # as the reference: CAM / (max + 1e-12)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class PseudoLabelParams:
    """Constants of stage 2; the defaults are the paper's / reference's.

    grid_size: N for the background queries at label time (supp. Table 1: N = 1 is best).
    bg_threshold: step 3, A(p) := 0 where A(p) < bg_threshold · max_image A.
    use_u0: False is the "BAP: Ycrf w/o u0" ablation: the background unary is the
        background CAM ReLU(f·w_0), normalised per box like Eq. 5 with B_0 = all boxes.
    class_agnostic: paper Table 2 ("VOC-to-COCO"): every box class uses 1 − u0 as its
        foreground score; no classifier weights are needed for those classes.
    crf: DenseCRF parameters for step 7.
    box_convention: "voc" (default: every pixel a box touches) or "authors" (the authors'
        foreground extents, see the module docstring and :func:`authors_extents`).
    """

    grid_size: int = 1
    bg_threshold: float = 0.99
    use_u0: bool = True
    class_agnostic: bool = False
    crf: CRFParams = field(default_factory=CRFParams)
    box_convention: str = "voc"

    def __post_init__(self) -> None:
        if self.box_convention not in BOX_CONVENTIONS:
            raise ConfigError(f"box_convention must be one of {', '.join(BOX_CONVENTIONS)}, got {self.box_convention!r}")
        if isinstance(self.grid_size, bool) or int(self.grid_size) != self.grid_size or self.grid_size < 1:
            raise ConfigError(f"grid_size must be a positive integer, got {self.grid_size!r}")
        if not 0.0 <= float(self.bg_threshold) <= 1.0:
            raise ConfigError(f"bg_threshold must lie in [0, 1], got {self.bg_threshold!r}")
        if not isinstance(self.crf, CRFParams):
            raise ConfigError(f"crf must be CRFParams, got {type(self.crf).__name__}")


@dataclass
class Unaries:
    """Steps 4–6. ``classes`` = (0, c1, c2, …): the class id of each channel of ``probs``."""

    classes: tuple[int, ...]
    u0: np.ndarray  # (H, W) float32 background score (1 outside boxes)
    cams: dict[int, np.ndarray]  # class -> (H, W) float32 u_c (0 outside its boxes)
    probs: np.ndarray  # (n, H, W) float32, softmax inside boxes, one-hot bg outside


@dataclass
class PseudoLabels:
    """Everything stage 2 produces for one image (maps are (H, W) unless noted)."""

    ycrf: np.ndarray  # uint8 class ids after DenseCRF (step 8)
    yret: np.ndarray  # uint8 class ids from retrieval (step 9)
    u0: np.ndarray  # float32 background unary (Eq. 7)
    cams: dict[int, np.ndarray]  # class -> float32 normalised u_c (Eq. 5)
    unreliable: np.ndarray  # bool, ycrf != yret (the region ~S of the NAL)
    classes: tuple[int, ...]  # (0, c1, …) channel order of probs / marginals
    attention: np.ndarray  # float32 thresholded background attention A over the image
    probs: np.ndarray  # (n, H, W) float32 CRF input
    marginals: np.ndarray  # (n, H, W) float32 CRF output, zeroed outside class boxes
    correlations: dict[int, np.ndarray]  # class (incl. 0) -> float32 C_c (Eq. 9, masked)
    attention_kept: float = float("nan")  # share of in-box pixels where step 3 kept A (u0 = A > 0)


# --------------------------------------------------------------------------- features


def _axis_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index i0 and weight λ of bilinear, align_corners=True, along one axis.

    Output o reads (1 − λ)·x[i0] + λ·x[i0 + 1] (with x replicate-padded by one at the end;
    λ = 0 whenever i0 is the last input index), exactly as torch's kernel does.
    """
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out, dtype=np.float64) * scale
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = src - i0
    lam[i0 == n_in - 1] = 0.0
    return i0, lam


def _interp_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """Dense (n_out, n_in) float64 matrix U with U @ x = bilinear(x) along one axis."""
    i0, lam = _axis_weights(n_out, n_in)
    u = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(u, (rows, i0), 1.0 - lam)
    np.add.at(u, (rows, np.minimum(i0 + 1, n_in - 1)), lam)
    return torch.from_numpy(u)


class FeatureField:
    """The upsampled features f_up (C, H, W), queried without (or with) materialising them.

    ``exact=False`` (default) keeps only the low-res (C, h, w) map and answers every query
    with the identities in the module docstring; ``exact=True`` upsamples all channels with
    ``F.interpolate`` (the reference's way; C·H·W floats). Both give the same numbers up to
    float rounding. All results are float64 (efficient) or float32 (exact) torch tensors.
    """

    def __init__(self, feats: torch.Tensor | np.ndarray, size: tuple[int, int], *, exact: bool = False):
        if isinstance(feats, np.ndarray) and not feats.flags.writeable:
            feats = feats.copy()  # joblib hands large arrays to workers as read-only memory maps
        f = torch.as_tensor(feats)
        if f.ndim == 4 and f.shape[0] == 1:
            f = f[0]
        if f.ndim != 3 or min(f.shape) < 1:
            raise DataError(f"features must be (C, h, w), got {tuple(f.shape)}")
        if not torch.is_floating_point(f):
            f = f.float()
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(f.shape[0])
        self.exact = bool(exact)
        height, width = self.size
        if self.exact:
            # (C, H, W) full-resolution features: the memory the default path avoids.
            self._up = F.interpolate(
                f.detach().float()[None], size=self.size, mode="bilinear", align_corners=True
            )[0]
            self._sq_norm: torch.Tensor | None = None
            return
        self._f = f.detach().to(torch.float64)  # (C, h, w)
        _, h, w = self._f.shape
        self._uy = _interp_matrix(height, h)  # (H, h)
        self._ux = _interp_matrix(width, w)  # (W, w)
        self._sq_norm = None

    # -- primitives ---------------------------------------------------------------------

    def _upsample(self, low: torch.Tensor) -> torch.Tensor:
        """(k, h, w) low-res maps -> (k, H, W) bilinear upsampling (efficient path)."""
        return self._uy @ low @ self._ux.T

    def dot(self, vectors: torch.Tensor) -> torch.Tensor:
        """(k, C) vectors -> (k, H, W) maps f_up(p)·v_k."""
        v = torch.as_tensor(vectors)
        if v.ndim == 1:
            v = v[None]
        if self.exact:
            v = v.to(self._up.dtype)
            return torch.einsum("kc,chw->khw", v, self._up)
        v = v.to(torch.float64)
        low = torch.einsum("kc,chw->khw", v, self._f)  # (k, h, w)
        return self._upsample(low)

    def norm(self) -> torch.Tensor:
        """(H, W) map ||f_up(p)||."""
        if self._sq_norm is None:
            if self.exact:
                self._sq_norm = torch.linalg.vector_norm(self._up, dim=0) ** 2
            else:
                self._sq_norm = self._sq_norm_lowres()
        return self._sq_norm.clamp_min(0).sqrt()

    def _sq_norm_lowres(self) -> torch.Tensor:
        height, width = self.size
        fp = F.pad(self._f[None], (0, 1, 0, 1), mode="replicate")[0]  # (C, h+1, w+1)
        g00 = (fp * fp).sum(0)  # <f[r,s], f[r,s]>      (h+1, w+1)
        gx = (fp[:, :, :-1] * fp[:, :, 1:]).sum(0)  # <f[r,s], f[r,s+1]>    (h+1, w)
        gy = (fp[:, :-1, :] * fp[:, 1:, :]).sum(0)  # <f[r,s], f[r+1,s]>    (h, w+1)
        gd = (fp[:, :-1, :-1] * fp[:, 1:, 1:]).sum(0)  # <f[r,s], f[r+1,s+1]> (h, w)
        ga = (fp[:, :-1, 1:] * fp[:, 1:, :-1]).sum(0)  # <f[r,s+1], f[r+1,s]> (h, w)
        _, h, w = self._f.shape
        iy, ly = _axis_weights(height, h)
        ix, lx = _axis_weights(width, w)
        y0, x0 = torch.from_numpy(iy), torch.from_numpy(ix)
        y1, x1 = y0 + 1, x0 + 1

        def at(g: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
            return g.index_select(0, ys).index_select(1, xs)  # (H, W) = g[ys[:, None], xs]

        ay, by = torch.from_numpy(1 - ly)[:, None], torch.from_numpy(ly)[:, None]
        ax, bx = torch.from_numpy(1 - lx)[None, :], torch.from_numpy(lx)[None, :]
        c00, c01, c10, c11 = ay * ax, ay * bx, by * ax, by * bx  # (H, W) bilinear weights
        sq = (
            c00 * c00 * at(g00, y0, x0)
            + c01 * c01 * at(g00, y0, x1)
            + c10 * c10 * at(g00, y1, x0)
            + c11 * c11 * at(g00, y1, x1)
            + 2 * c00 * c01 * at(gx, y0, x0)
            + 2 * c10 * c11 * at(gx, y1, x0)
            + 2 * c00 * c10 * at(gy, y0, x0)
            + 2 * c01 * c11 * at(gy, y0, x1)
            + 2 * c00 * c11 * at(gd, y0, x0)
            + 2 * c01 * c10 * at(ga, y0, x0)
        )
        return sq

    def cosine(self, vectors: torch.Tensor) -> torch.Tensor:
        """(k, C) vectors -> (k, H, W) cos(f_up(p), v_k), with F.normalize's eps."""
        v = torch.as_tensor(vectors)
        if v.ndim == 1:
            v = v[None]
        dots = self.dot(v)
        v_norm = torch.linalg.vector_norm(v.to(dots.dtype), dim=1).clamp_min(_EPS_NORM)
        return dots / (self.norm().clamp_min(_EPS_NORM)[None] * v_norm[:, None, None])

    def weighted_mean(self, weights: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
        """For each (H, W) weight map w_k: Σ_p w_k(p) f_up(p) / Σ_p w_k(p) -> (k, C).

        A map whose weights sum to 0 gives the zero vector.
        """
        out = []
        for wmap in weights:  # one map at a time: O(H·W) memory
            wt = torch.as_tensor(np.asarray(wmap) if not torch.is_tensor(wmap) else wmap)
            if self.exact:
                wt = wt.to(self._up.dtype)
                total = wt.sum()
                vec = torch.einsum("hw,chw->c", wt, self._up)
            else:
                wt = wt.to(torch.float64)
                total = wt.sum()
                low = self._uy.T @ wt @ self._ux  # (h, w) = Uᵀ w
                vec = torch.einsum("hw,chw->c", low, self._f)
            out.append(vec / total if float(total) > 0 else torch.zeros_like(vec))
        if not out:
            dtype = self._up.dtype if self.exact else torch.float64
            return torch.zeros(0, self.channels, dtype=dtype)
        return torch.stack(out)



def _normalise_per_box_later_wins(raw: np.ndarray, ext: np.ndarray) -> np.ndarray:
    """The authors' Eq. 5: each box in turn writes raw / max(raw in that box); later boxes win."""
    out = np.zeros_like(raw)
    for x0, y0, x1, y1 in ext:
        region = raw[y0:y1, x0:x1]
        if region.size == 0:
            continue
        out[y0:y1, x0:x1] = region / (region.max() + _EPS_MAX)
    return out



def _normalise_per_box(raw: np.ndarray, ext: np.ndarray) -> np.ndarray:
    """Eq. 5: inside each box raw / max(raw in that box); 0 elsewhere; max over overlaps."""
    out = np.zeros_like(raw)
    for x0, y0, x1, y1 in ext:
        region = raw[y0:y1, x0:x1]
        normed = region / (region.max() + _EPS_MAX)
        np.maximum(out[y0:y1, x0:x1], normed, out=out[y0:y1, x0:x1])
    return out


def _as_weight(weight: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight).detach()
    if w.ndim == 4 and w.shape[2:] == (1, 1):
        w = w[:, :, 0, 0]
    if w.ndim != 2:
        raise DataError(f"classifier weight must be (L+1, C) or (L+1, C, 1, 1), got {tuple(w.shape)}")
    return w


# --------------------------------------------------------------------------- steps 2–3


def _grid_cells(height: int, width: int, n: int) -> list[tuple[int, int, int, int]]:
    """Cells (y0, y1, x0, x1) of an N×N grid over the image padded to multiples of N.

    Padding is split evenly, the odd pixel at the end (docs/method.md, "Stage 1", Eq. 1); padded pixels are
    never background, so cells are returned clipped to the image (possibly empty).
    """

    def edges(size: int) -> list[tuple[int, int]]:
        pad = (-size) % n
        before = pad // 2
        cell = (size + pad) // n
        return [
            (min(max(k * cell - before, 0), size), min(max((k + 1) * cell - before, 0), size))
            for k in range(n)
        ]

    return [(a, b, c, d) for a, b in edges(height) for c, d in edges(width)]


def background_attention(
    field: FeatureField,
    background: np.ndarray,
    *,
    grid_size: int = 1,
    threshold: float = 0.99,
) -> np.ndarray:
    """Steps 2–3: thresholded background attention A over the whole image, float32 (H, W).

    background: (H, W) bool definite-background mask M (True outside all boxes).
    q_j = mean of f_up over the background pixels of grid cell j (cells with none are
    skipped); A = mean_j ReLU(cos(f_up, q_j)); then A := 0 where A < threshold · max A,
    the max taken over the whole image (the reference's ``bg_attn.max()``).
    With no background pixel at all (boxes cover the image) A = 0.
    """
    height, width = field.size
    bg = np.asarray(background, dtype=bool)
    if bg.shape != (height, width):
        raise DataError(f"background mask {bg.shape} does not match features upsampled to {(height, width)}")
    cell_masks = []
    for y0, y1, x0, x1 in _grid_cells(height, width, grid_size):
        m = np.zeros((height, width), dtype=bool)
        m[y0:y1, x0:x1] = bg[y0:y1, x0:x1]
        if m.any():
            cell_masks.append(m)
    if not cell_masks:
        return np.zeros((height, width), dtype=np.float32)
    queries = field.weighted_mean(cell_masks)  # (J, C)
    attn = torch.zeros((height, width), dtype=queries.dtype)
    for q in queries:  # one (H, W) map at a time
        attn += field.cosine(q[None])[0].clamp_min(0)
    attn /= len(cell_masks)
    attn = attn.numpy()
    attn[attn < threshold * attn.max()] = 0.0
    return attn.astype(np.float32)


# A background attention is degenerate when step 3 keeps it on at least this share of the
# pixels inside the boxes: then u0 ~ max A on (almost) every box pixel, and since u_c <= 1
# Eq. 7 makes (almost) every box background. Seen with a classifier whose features share one
# direction (mean cosine ~ 1, A ~ 1 everywhere), which a relative threshold cannot reject.
# A working BAP classifier keeps A on roughly a fifth of the in-box pixels (docs/bap-vs-gap.md).
DEGENERATE_KEPT_SHARE = 0.9


def attention_kept_share(attention: np.ndarray, inside: np.ndarray) -> float:
    """Share of the pixels inside the boxes where the thresholded attention (step 3) is non-zero,
    i.e. where Eq. 7 sets u0 = A; NaN when no pixel is inside a box."""
    inside = np.asarray(inside, dtype=bool)
    n = int(inside.sum())
    if n == 0:
        return float("nan")
    return float(np.count_nonzero(np.asarray(attention)[inside] > 0) / n)


def image_attention_kept(
    feats: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    boxes: np.ndarray | Sequence[Sequence[float]],
    *,
    grid_size: int = 1,
    threshold: float = 0.99,
) -> float:
    """Steps 1–3 for one image and :func:`attention_kept_share` of the result: the share of its
    in-box pixels where u0 = A (feats (C, h, w), size (H, W), boxes (K, 4) as everywhere here)."""
    height, width = size
    ext = box_extents(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), height, width)
    inside = union_mask(ext, height, width)
    field_ = FeatureField(feats, (height, width))
    attention = background_attention(field_, ~inside, grid_size=grid_size, threshold=threshold)
    return attention_kept_share(attention, inside)


def attention_is_degenerate(kept_share: float, limit: float = DEGENERATE_KEPT_SHARE) -> bool:
    """True when the thresholded attention covers at least ``limit`` of the in-box pixels
    (see DEGENERATE_KEPT_SHARE); NaN (no box) is not degenerate."""
    return bool(kept_share >= limit)


# --------------------------------------------------------------------------- steps 4–6


def compute_unaries(
    field: FeatureField,
    weight: torch.Tensor | np.ndarray | None,
    boxes: np.ndarray,
    labels: np.ndarray | Sequence[int],
    attention: np.ndarray,
    *,
    use_u0: bool = True,
    class_agnostic: bool = False,
    box_convention: str = "voc",
) -> Unaries:
    """Steps 4–6: u0 (Eq. 7), u_c (Eqs. 5–6) and the CRF input probabilities.

    weight: classifier weight (L+1, C[, 1, 1]); may be None when ``class_agnostic`` and
    ``use_u0`` (nothing then reads it). Channel order of ``probs``: (0, sorted classes).
    box_convention: "authors" takes each class's extents from :func:`authors_extents` (the
    later of overlapping boxes wins); u0 and "inside the boxes" keep the full boxes.
    """
    height, width = field.size
    ext = box_extents(boxes, height, width)
    lab = check_box_labels(labels, len(ext))
    authors = box_convention == "authors"
    fg_ext = foreground_extents(boxes, height, width, box_convention)
    w = _as_weight(weight)
    classes = tuple(int(c) for c in np.unique(lab))
    inside = union_mask(ext, height, width)
    attention = np.asarray(attention, dtype=np.float32)

    # Eq. 7: the background channel.
    u0_att = np.where(inside, attention, np.float32(1.0)).astype(np.float32)
    if use_u0:
        u0 = u0_att
    else:
        if w is None:
            raise ConfigError("use_u0=False (background CAM) needs the classifier weight w_0")
        cam0 = field.dot(w[0:1])[0].clamp_min(0).numpy()
        u0 = np.where(inside, _normalise_per_box(cam0, ext), 1.0).astype(np.float32)

    # Eqs. 5–6: one channel per class present.
    if not class_agnostic:
        if w is None:
            raise ConfigError("class-specific unaries need the classifier weight (or set class_agnostic)")
        if w.shape[1] != field.channels:
            raise DataError(f"classifier weight has {w.shape[1]} input channels, features have {field.channels}")
        unseen = [c for c in classes if c >= w.shape[0]]
        if unseen:
            raise DataError(
                f"classes {unseen} have no classifier weight (the classifier has {w.shape[0] - 1} "
                "object classes); use class_agnostic=True for unseen classes"
            )
        raw_cams = field.dot(w[list(classes)]).clamp_min(0).numpy()  # (n-1, H, W)
    cams: dict[int, np.ndarray] = {}
    for i, c in enumerate(classes):
        sel = lab == c
        if class_agnostic:
            fg = np.where(union_mask(fg_ext, height, width, sel), 1.0 - u0_att, 0.0)
        elif authors:
            fg = _normalise_per_box_later_wins(raw_cams[i], fg_ext[sel])
        else:
            fg = _normalise_per_box(raw_cams[i], ext[sel])
        cams[c] = fg.astype(np.float32)

    # Step 6: softmax inside the union of boxes, one-hot background outside.
    scores = torch.from_numpy(np.stack([u0] + [cams[c] for c in classes]).astype(np.float32))
    probs = torch.softmax(scores, dim=0).numpy()
    probs[:, ~inside] = 0.0
    probs[0, ~inside] = 1.0
    return Unaries(classes=(0,) + classes, u0=u0, cams=cams, probs=probs)


# --------------------------------------------------------------------------- steps 7–8


def refine_with_crf(
    image: np.ndarray,
    probs: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray | Sequence[int],
    classes: Sequence[int],
    crf: CRFParams = CRFParams(),
    *,
    box_convention: str = "voc",
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 7–8: DenseCRF, zero each class's marginal outside its boxes, argmax.

    classes: the class id of each channel of probs (channel 0 is the background).
    Returns (Ycrf uint8 (H, W) of class ids, marginals float32 (n, H, W), masked).
    box_convention: the class masks of step 8 (see :func:`foreground_extents`).
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    ext = foreground_extents(boxes, height, width, box_convention)
    lab = check_box_labels(labels, len(ext))
    if len(classes) == 1:  # no boxes: nothing to refine, all background
        marginals = np.array(probs, dtype=np.float32, copy=True)
    else:
        marginals = dense_crf(image, probs, crf)
    for i, c in enumerate(classes):
        if c != 0:
            marginals[i] *= union_mask(ext, height, width, lab == c)
    ids = np.asarray(classes, dtype=np.uint8)
    return ids[marginals.argmax(0)], marginals


# --------------------------------------------------------------------------- step 9


def retrieve_labels(
    field: FeatureField,
    ycrf: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray | Sequence[int],
    classes: Sequence[int],
    weight: torch.Tensor | np.ndarray | None = None,
    *,
    fallback: Mapping[int, np.ndarray] | None = None,
    box_convention: str = "voc",
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Step 9 (Eqs. 8–9): Yret from prototypes of Ycrf.

    q_c = mean of f_up over the pixels Ycrf labels c. A class with no such pixel uses the
    classifier weight w_c if ``weight`` covers it, else the ``fallback[c]`` weight map's
    weighted mean of f_up (class-agnostic mode: 1 − u0 on the class's boxes, u0 for the
    background), else a zero prototype (C_c = 0). C_c = ReLU(cos(f_up, q_c)); C_0 := 1
    outside all boxes; each foreground C_c := 0 outside its boxes; argmax (ties go to the
    lower channel, i.e. the background). Returns (Yret uint8, {class: C_c float32}).
    box_convention: the foreground class masks (see :func:`foreground_extents`); C_0 = 1
    outside the full boxes in both conventions.
    """
    height, width = field.size
    ext = box_extents(boxes, height, width)
    lab = check_box_labels(labels, len(ext))
    fg_ext = ext if box_convention == "voc" else foreground_extents(boxes, height, width, box_convention)
    w = _as_weight(weight)
    ycrf = np.asarray(ycrf)
    inside = union_mask(ext, height, width)
    corr = np.zeros((len(classes), height, width), dtype=np.float32)
    for i, c in enumerate(classes):
        region = ycrf == c
        if region.any():
            proto = field.weighted_mean([region])[0]
        elif w is not None and c < w.shape[0]:
            proto = w[c]
        elif fallback is not None and c in fallback:
            proto = field.weighted_mean([fallback[c]])[0]
        else:
            continue  # no prototype: C_c = 0
        corr[i] = field.cosine(proto[None])[0].clamp_min(0).numpy()
        if c == 0:
            corr[i][~inside] = 1.0
        else:
            corr[i] *= union_mask(fg_ext, height, width, lab == c)
    ids = np.asarray(classes, dtype=np.uint8)
    return ids[corr.argmax(0)], {int(c): corr[i] for i, c in enumerate(classes)}


# --------------------------------------------------------------------------- pipeline


def _checked_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return image


def _class_agnostic_prototypes(unaries: Unaries, inside: np.ndarray) -> dict[int, np.ndarray]:
    """Step 9's prototypes without classifier weights: background from u0 inside the boxes,
    class c from ``unaries.cams[c]`` (in this mode 1 − u0 on c's boxes)."""
    fallback = {0: unaries.u0 * inside}
    fallback.update({c: unaries.cams[c] for c in unaries.cams})
    return fallback


def _void(labels: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """A copy of ``labels`` with 255 on the ``ignored`` pixels."""
    labels = labels.copy()
    labels[ignored] = 255
    return labels


def generate_pseudo_labels(
    image: np.ndarray,
    feats: torch.Tensor | np.ndarray,
    weight: torch.Tensor | np.ndarray | None,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[int],
    params: PseudoLabelParams = PseudoLabelParams(),
    *,
    exact: bool = False,
    ignore: np.ndarray | None = None,
) -> PseudoLabels:
    """Ycrf and Yret for one image (docs/method.md, "Stage 2 — pseudo labels", steps 1–9).

    image: (H, W, 3) uint8 RGB. feats: (C, h, w) classifier features of that image
    (stride 8). weight: classifier 1×1 conv weight (L+1, C[, 1, 1]); None is allowed in
    class-agnostic mode. boxes: float (K, 4) x0, y0, x1, y1 (see module docstring);
    labels: (K,) class ids in 1..L. ``exact=True`` takes the naive full-resolution path.
    ``ignore``: optional (H, W) bool of pixels that are neither objects nor definite background
    (COCO crowd regions): no background query uses them and Ycrf, Yret are 255 there (outside
    every box). None (the default) changes nothing.
    An image without boxes is all background.
    """
    image = _checked_image(image)
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lab = check_box_labels(labels, len(boxes))
    ext = box_extents(boxes, height, width)

    # the functions below derive every extent from the boxes they get; the authors' convention
    # needs the original values (their round trip), the VOC one the same pixel extents as ever
    conv = params.box_convention
    bx = ext if conv == "voc" else boxes
    field_ = FeatureField(feats, (height, width), exact=exact)  # step 1
    inside = union_mask(ext, height, width)
    ign = None if ignore is None else np.asarray(ignore, dtype=bool) & ~inside
    attention = background_attention(  # steps 2–3
        field_, ~inside if ign is None else ~inside & ~ign, grid_size=params.grid_size,
        threshold=params.bg_threshold,
    )
    unaries = compute_unaries(  # steps 4–6
        field_, weight, bx, lab, attention,
        use_u0=params.use_u0, class_agnostic=params.class_agnostic, box_convention=conv,
    )
    ycrf, marginals = refine_with_crf(image, unaries.probs, bx, lab, unaries.classes, params.crf,  # 7–8
                                      box_convention=conv)
    yret, corr = retrieve_labels(  # step 9
        field_, ycrf, bx, lab, unaries.classes,
        None if params.class_agnostic else weight,
        fallback=_class_agnostic_prototypes(unaries, inside) if params.class_agnostic else None,
        box_convention=conv,
    )
    if ign is not None:
        ycrf, yret = _void(ycrf, ign), _void(yret, ign)
    return PseudoLabels(
        ycrf=ycrf,
        yret=yret,
        u0=unaries.u0,
        cams=unaries.cams,
        unreliable=ycrf != yret,
        classes=unaries.classes,
        attention=attention,
        probs=unaries.probs,
        marginals=marginals,
        correlations=corr,
        attention_kept=attention_kept_share(attention, inside),
    )
