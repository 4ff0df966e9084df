"""Instance segmentation on the pseudo labels: torchvision's Mask R-CNN with the mask loss
restricted to the reliable region S (paper Sec. 4.3, Table 6).

Targets (:mod:`banacli.instances.targets`). Each annotated box gets an instance mask from the pseudo label Ycrf by the one rule of
:func:`banacli.ops.instances.box_instance_masks` (the pixels of the box's class inside the box;
overlapping boxes of one class: the smallest box wins). The region S is the set of pixels where
Ycrf and Yret agree (void excluded). With ``inst.targets=gt`` the masks come from VOC
``SegmentationObject`` PNGs instead (instance ``k+1`` is the ``k``-th box of the XML, as in VOC
and ``bana synth``), and S is every non-void pixel.

The S-restricted loss (:func:`region_mask_loss`). For every positive RoI (a proposal matched to
a box), torchvision's Mask R-CNN compares the ``M x M`` mask logits of the box's class with the
box's mask resampled into the RoI (``roi_align``) by per-cell binary cross-entropy, averaged
over all cells of all positive RoIs. Here S is resampled into the RoI the same way, a cell
counts when its resampled S value is at least 0.5, and the loss is the mean BCE over the cells
that count (over all positive RoIs). Cells outside S contribute nothing and get exactly zero
gradient. With ``region=None`` every cell counts and the value equals torchvision's
``maskrcnn_loss`` (with ``aligned=False``, its resampling convention). By default we resample
with ``aligned=True`` (pixel centres at integer + 0.5), which puts an integer box's cells
exactly on its pixels.

How it plugs in. :class:`RegionMaskRoIHeads` subclasses torchvision's ``RoIHeads``: in training
it lets the parent compute the box branch with the mask branch switched off (``has_mask``),
keeps the proposals the parent sampled (``select_training_samples``), then runs the mask branch
itself with :func:`region_mask_loss`. Inference is the parent's, unchanged. Nothing global is
patched. :class:`RegionTransform` resizes S with the image, as torchvision resizes the masks.

Models: ``resnet50_fpn`` (the paper's Mask R-CNN, ResNet-50-FPN) and ``tiny`` (a 3-layer CNN with
one feature level, for CPU tests and demos). Inputs are RGB floats in 0..1; the model normalises
with the torchvision ImageNet mean/std and resizes to ``min_size``/``max_size`` inside.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align

from banacli import __version__
from banacli.artifacts import atomic_path, atomic_write_bytes, atomic_write_json, load_model, read_state_dict
from banacli.errors import BanaError
from banacli.interop.model_export import (
    EXPORT_FORMAT, FILE_NAMES, TORCHSCRIPT_META, _quiet_torch_warnings, _write_sidecar, export_safetensors,
)
from banacli.runs import RunDir, load_rebuilt
from banacli.data.palette import overlay as blend, save_label_png
from banacli.models.backbones import download_imagenet_state

INST_BACKBONES = ("resnet50_fpn", "tiny")
ARCH_KIND = "maskrcnn"

__all__ = [
    "INST_BACKBONES", "INST_OUTPUT_NAMES", "PixelMaskRCNN", "RegionMaskRoIHeads", "RegionTransform", "TinyBackbone",
    "build_mask_rcnn", "export_instance_model", "instance_export_metadata",
    "write_instance_prediction",
    "inst_arch", "load_instance_model", "predict_instances", "region_mask_loss",
]


def inst_arch(backbone: str) -> str:
    """The sidecar ``arch`` of an instance model: ``maskrcnn/<backbone>``."""
    return f"{ARCH_KIND}/{backbone}"


# ----------------------------------------------------------------------------- the loss


def _resample(maps: Tensor, boxes: Tensor, index: Tensor, size: int, aligned: bool) -> Tensor:
    """(N, size, size): ``maps[index[i]]`` (float) resampled into box ``i`` by roi_align."""
    rois = torch.cat([index.to(boxes)[:, None], boxes], dim=1)
    return roi_align(maps[:, None].to(boxes), rois, (size, size), spatial_scale=1.0, aligned=aligned)[:, 0]


def region_mask_loss(
    mask_logits: Tensor,
    proposals: Sequence[Tensor],
    gt_masks: Sequence[Tensor],
    gt_regions: Sequence[Tensor | None],
    gt_labels: Sequence[Tensor],
    matched_idxs: Sequence[Tensor],
    *,
    aligned: bool = True,
) -> Tensor:
    """Mask R-CNN's mask loss over the region S only (see the module docstring).

    ``mask_logits``: (N, C, M, M) for the N positive RoIs of all images, in image order.
    Per image ``j``: ``proposals[j]`` (n_j, 4) xyxy boxes, ``gt_masks[j]`` (K_j, H, W),
    ``gt_regions[j]`` (H, W) S as 0/1 (or None: every cell counts), ``gt_labels[j]`` (K_j,),
    ``matched_idxs[j]`` (n_j,) the box each proposal was matched to.
    Returns the mean BCE over the RoI cells inside S (0 with a graph when there are none).
    """
    m = mask_logits.shape[-1]
    labels, targets, inside = [], [], []
    for boxes, masks, region, lab, idx in zip(proposals, gt_masks, gt_regions, gt_labels, matched_idxs):
        labels.append(lab[idx])
        targets.append(_resample(masks, boxes, idx, m, aligned))
        if region is None:
            inside.append(torch.ones(len(boxes), m, m, dtype=torch.bool, device=boxes.device))
        else:
            zero = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
            inside.append(_resample(region[None], boxes, zero, m, aligned) >= 0.5)
    if not labels or sum(len(t) for t in targets) == 0:
        return mask_logits.sum() * 0
    label = torch.cat(labels)
    target = torch.cat(targets).to(mask_logits.dtype)
    keep = torch.cat(inside)
    logits = mask_logits[torch.arange(len(label), device=label.device), label]
    per_cell = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    count = keep.sum()
    if int(count) == 0:
        return mask_logits.sum() * 0
    return torch.where(keep, per_cell, torch.zeros_like(per_cell)).sum() / count


class RegionMaskRoIHeads(RoIHeads):
    """torchvision's RoIHeads whose training mask loss is :func:`region_mask_loss`.

    Targets carry ``masks`` (K, H, W) and, optionally, ``regions`` (H, W) 0/1; without
    ``regions`` every cell counts (torchvision's loss, up to ``aligned``). Inference is the
    parent's.
    """

    aligned: bool = True

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, *, aligned: bool = True) -> RegionMaskRoIHeads:
        """The same modules and settings as ``heads`` (e.g. the ones MaskRCNN built)."""
        new = cls(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor,
        )
        new.aligned = aligned
        return new

    def has_mask(self) -> bool:
        # off while the parent computes the box branch in training (see forward)
        return not getattr(self, "_boxes_only", False) and super().has_mask()

    def select_training_samples(self, proposals, targets):
        out = super().select_training_samples(proposals, targets)
        self._sampled = out  # the proposals and matches the box branch trained on
        return out

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None or any("masks" not in t for t in targets):
            raise ValueError("Mask R-CNN training targets need masks")
        self._boxes_only = True
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            self._boxes_only = False
        sampled, matched, labels, _ = self._sampled
        self._sampled = None
        pos = [torch.where(lab > 0)[0] for lab in labels]
        mask_boxes = [p[i] for p, i in zip(sampled, pos)]
        pos_matched = [m[i] for m, i in zip(matched, pos)]
        feats = self.mask_roi_pool(features, mask_boxes, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(feats))
        losses["loss_mask"] = region_mask_loss(
            mask_logits, mask_boxes, [t["masks"] for t in targets], [t.get("regions") for t in targets],
            [t["labels"] for t in targets], pos_matched, aligned=self.aligned,
        )
        return result, losses


# ----------------------------------------------------------------------------- models


class RegionTransform(GeneralizedRCNNTransform):
    """torchvision's input transform that also resizes a target's ``regions`` (H, W) map
    (nearest neighbour, to the resized image's size, as it does for ``masks``)."""

    @classmethod
    def from_transform(cls, t: GeneralizedRCNNTransform) -> RegionTransform:
        return cls(t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible,
                   fixed_size=t.fixed_size)

    def resize(self, image, target=None):
        region = target.get("regions") if target is not None else None
        image, target = super().resize(image, target)
        if region is not None and tuple(region.shape[-2:]) != tuple(image.shape[-2:]):
            target["regions"] = F.interpolate(region[None, None].float(), size=tuple(image.shape[-2:]),
                                              mode="nearest")[0, 0]
        return image, target


class TinyBackbone(nn.Module):
    """Three conv layers, stride 4, one feature level ``"0"`` of ``out_channels`` (CPU tests)."""

    def __init__(self, out_channels: int = 32) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, out_channels, 3, padding=1), nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"0": self.body(x)}


def _resnet50_fpn(weights: str | None, frozen_bn: bool) -> nn.Module:
    # as torchvision does: from pretrained weights, frozen batch norm and stages 2-4 trained;
    # from random init, ordinary batch norm and everything trained
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
                                   trainable_layers=3 if frozen_bn else 5)
    if str(weights) == "imagenet":
        _load_resnet_body(backbone.body, download_imagenet_state("resnet50"), "torchvision ImageNet weights")
    return backbone


def _load_resnet_body(body: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    own = body.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise BanaError(f"{source}: not a ResNet-50 state dict (missing {missing[0]}, ...)")
    bad = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if bad:
        raise BanaError(f"{source}: {bad[0]} has shape {tuple(sd[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")
    body.load_state_dict({k: sd[k] for k in own if k in sd}, strict=False)


def _load_local_weights(model: nn.Module, path: str, backbone: str) -> None:
    """A local file: a whole Mask R-CNN (keys ``backbone.body...``; entries whose shape differs,
    e.g. the class-specific predictors of a COCO model, are left at their initialisation) or,
    for resnet50_fpn, a plain ResNet-50 ImageNet state dict."""
    p = Path(path)
    if not p.is_file():
        raise BanaError(f"inst.weights: {p} does not exist (use 'imagenet', a local .pth/.safetensors file, or null)")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in read_state_dict(p).items()}
    if any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in sd):
        own = model.state_dict()
        use = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        if not any(k.startswith("backbone.") for k in use):
            raise BanaError(f"{p}: no backbone weights fit the {backbone} Mask R-CNN")
        model.load_state_dict(use, strict=False)
    elif backbone == "resnet50_fpn":
        _load_resnet_body(model.backbone.body, sd, str(p))
    else:
        raise BanaError(f"{p}: a {backbone} Mask R-CNN loads only whole-model weights (keys backbone.*)")


def build_mask_rcnn(
    backbone: str,
    num_classes: int,
    *,
    weights: str | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    aligned: bool = True,
    frozen_bn: bool | None = None,
) -> nn.Module:
    """torchvision ``MaskRCNN`` with :class:`RegionMaskRoIHeads`; ``num_classes`` counts the background.

    ``weights``: None (random init), ``"imagenet"`` (resnet50_fpn backbone: torchvision's ResNet-50,
    from the hub cache or downloaded; offline -> BanaError saying which file to fetch), or a local
    file (a whole Mask R-CNN state dict, or a ResNet-50 one for resnet50_fpn). ``frozen_bn``
    (resnet50_fpn): frozen batch norm; default: when starting from weights.
    """
    if backbone not in INST_BACKBONES:
        raise BanaError(f"unknown instance backbone {backbone!r}; choose one of {', '.join(INST_BACKBONES)}")
    if weights is not None and str(weights) in ("", "none", "null"):
        weights = None
    if weights is not None and str(weights) != "imagenet" and not Path(weights).is_file():
        raise BanaError(f"inst.weights: {weights} does not exist (use 'imagenet', a local .pth/.safetensors file, or null)")
    if backbone == "tiny":
        if str(weights) == "imagenet":
            raise BanaError("inst.backbone=tiny has no ImageNet weights: use inst.weights=null (random init)")
        net = TinyBackbone(32)
        model = MaskRCNN(
            net, num_classes=None, min_size=min_size, max_size=max_size,
            rpn_anchor_generator=AnchorGenerator(sizes=((8, 16, 32, 64),), aspect_ratios=((0.5, 1.0, 2.0),)),
            rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
            rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=75,
            rpn_batch_size_per_image=64, box_batch_size_per_image=64,
            box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_head=TwoMLPHead(32 * 7 * 7, 128),
            box_predictor=FastRCNNPredictor(128, num_classes),
            mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2), mask_head=MaskRCNNHeads(32, [32, 32], 1),
            mask_predictor=MaskRCNNPredictor(32, 32, num_classes),
        )
    else:
        frozen = weights is not None if frozen_bn is None else frozen_bn
        model = MaskRCNN(_resnet50_fpn(weights, frozen), num_classes=num_classes, min_size=min_size, max_size=max_size)
        model.frozen_bn = frozen
    model.roi_heads = RegionMaskRoIHeads.from_roi_heads(model.roi_heads, aligned=aligned)
    model.transform = RegionTransform.from_transform(model.transform)
    if weights is not None and str(weights) != "imagenet":
        _load_local_weights(model, str(weights), backbone)
    model.backbone_name = backbone
    return model


# ----------------------------------------------------------------------------- inference


def _to_input(image: np.ndarray | Tensor, device: torch.device | str) -> Tensor:
    """(3, H, W) float 0..1 from an (H, W, 3) uint8 array or a (3, H, W) uint8/float tensor."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise BanaError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    x = image.to(device)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def predict_instances(model: nn.Module, image: np.ndarray | Tensor, *, score_threshold: float = 0.0,
                      mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """Instances of one RGB image, best score first: ``dict(box=[x0, y0, x1, y1], label=1..L,
    score=float, mask=(H, W) bool)``. ``image`` is (H, W, 3) uint8 or a (3, H, W) tensor."""
    model.eval()
    device = next(model.parameters()).device
    out = model([_to_input(image, device)])[0]
    masks = (out["masks"][:, 0] >= mask_threshold).cpu().numpy()
    found = []
    for box, lab, score, mask in zip(out["boxes"].cpu().tolist(), out["labels"].cpu().tolist(),
                                     out["scores"].cpu().tolist(), masks):
        if score >= score_threshold:
            found.append({"box": [float(v) for v in box], "label": int(lab), "score": float(score), "mask": mask})
    found.sort(key=lambda d: -d["score"])
    return found


def load_instance_model(run_dir: str | Path, device: str | torch.device = "cpu", *,
                        class_names: list[str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the Mask R-CNN that ``bana train-inst`` saved: ``run_dir`` is a run directory
    (reads RUN/inst/model.safetensors) or the model file itself. Returns (model in eval mode, sidecar).
    The weights' sha256 is checked against the sidecar (ArtifactError naming the file)."""
    path = Path(run_dir)
    if path.is_dir():
        path = RunDir(path).model("inst")

    def build(backbone: str, meta: dict[str, Any]) -> nn.Module:
        return build_mask_rcnn(backbone, int(meta["num_classes"]), weights=None,
                               frozen_bn=bool(meta.get("frozen_bn", False)),
                               min_size=int(meta.get("min_size", 800)), max_size=int(meta.get("max_size", 1333)))

    return load_rebuilt(path, ARCH_KIND, tuple(INST_BACKBONES), build, device=device, class_names=class_names,
                         missing="instance model not found (run bana train-inst first)")


# ----------------------------------------------------------------------------- predict / export

INST_OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")


class PixelMaskRCNN(nn.Module):
    """An exportable Mask R-CNN: one (3, H, W) RGB image in 0..255 (uint8 or float) ->
    boxes (N, 4) xyxy in input pixels, labels (N,) 1..L, scores (N,), masks (N, H, W) float
    probabilities (threshold 0.5 for a binary mask), best score first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.model([image.float() / 255.0])[0]
        return out["boxes"], out["labels"], out["scores"], out["masks"][:, 0]


def instance_export_metadata(meta: dict[str, Any], fmt: str, **more: Any) -> dict[str, Any]:
    out = {
        "format": EXPORT_FORMAT, "exported_as": fmt, "arch": meta["arch"], "num_classes": int(meta["num_classes"]),
        "class_names": list(meta["class_names"]), "normalization": dict(meta["normalization"]), "tau": None,
        "min_size": meta.get("min_size"), "max_size": meta.get("max_size"),
        "input": {"name": "image", "layout": "CHW (one image, no batch axis)", "channels": "RGB", "range": "0..255",
                  "dtype": "uint8", "note": "plain pixels; normalisation and resizing happen inside the model"},
        "outputs": {"boxes": "(N, 4) float32 x0, y0, x1, y1 in input pixels",
                    "labels": "(N,) int64 class ids 1..L (names in class_names)",
                    "scores": "(N,) float32, best first",
                    "masks": "(N, H, W) float32 mask probabilities at the input size; >= 0.5 is the mask"},
        "source_weights_sha256": meta.get("weights_sha256"), "bana_version": __version__,
    }
    out.update(more)
    return out


def _max_diff(ref: Sequence[Tensor], got: Sequence[Any]) -> float:
    diffs = []
    for r, g in zip(ref, got):
        g = torch.as_tensor(np.asarray(g))
        if tuple(g.shape) != tuple(r.shape):
            return float("inf")
        if r.numel():
            diffs.append(float((g.double() - r.double()).abs().max()))
    return max(diffs, default=0.0)


def _example(h: int, w: int, seed: int) -> Tensor:
    """A reproducible (3, H, W) uint8 picture of flat blocks (detections are found on it)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (3, max(1, h // 8) + 1, max(1, w // 8) + 1), dtype=torch.uint8, generator=g)
    return small.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :h, :w].contiguous()


def export_instance_model(src: str | Path, out_dir: str | Path, fmt: str, *, opset: int = 17,
                          input_size: int = 320, tolerance: float = 1e-3) -> tuple[Path, dict[str, Any]]:
    """Export RUN/inst/model.safetensors (``src``) as ONNX, TorchScript or a safetensors copy in
    ``out_dir``; exported graphs are checked against PyTorch at two image sizes. Returns
    (path written, metadata)."""
    model, meta = load_instance_model(src, "cpu")
    path = Path(out_dir) / FILE_NAMES[fmt]
    info = instance_export_metadata(meta, fmt, source=str(src))
    if fmt == "safetensors":
        tensors, sidecar = load_model(src)
        export_safetensors(tensors, sidecar, path, info)
        return path, info
    wrapper = PixelMaskRCNN(model).eval()
    sizes = [(input_size, input_size), (max(32, input_size - 24), input_size + 40)]
    examples = [_example(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    with torch.no_grad():
        refs = [wrapper(x) for x in examples]
    counts = [int(len(r[0])) for r in refs]  # a check on zero detections checks little: reported
    if fmt == "onnx":
        try:
            import onnx
            import onnxruntime as ort
        except ImportError:
            raise BanaError("export --format onnx needs onnx and onnxruntime: pip install 'bana[export]'") from None
        buf = io.BytesIO()
        axes = {"image": {1: "height", 2: "width"}, "boxes": {0: "detections"}, "labels": {0: "detections"},
                "scores": {0: "detections"}, "masks": {0: "detections", 1: "height", 2: "width"}}
        with _quiet_torch_warnings():
            # the TorchScript-based exporter: torchvision's detection models carry ONNX-aware paths for it
            torch.onnx.export(wrapper, (examples[0],), buf, dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=list(INST_OUTPUT_NAMES), dynamic_axes=axes, do_constant_folding=True)
        data = buf.getvalue()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        diff = max(_max_diff(r, sess.run(list(INST_OUTPUT_NAMES), {"image": x.numpy()})) for x, r in zip(examples, refs))
        if diff > tolerance:
            raise BanaError(f"{path}: ONNX export disagrees with PyTorch (max difference {diff:.3g} > {tolerance:g}); not written")
        info.update(opset=opset, dynamic_hw=True, max_abs_diff=diff, checked_sizes=[list(s) for s in sizes],
                    checked_detections=counts)
        proto = onnx.load_from_string(data)
        del proto.metadata_props[:]
        for key, value in {"bana": json.dumps(info, sort_keys=True),
                           "class_names": json.dumps(info["class_names"]), "arch": info["arch"]}.items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
        proto.producer_name = "bana"
        onnx.checker.check_model(proto)
        atomic_write_bytes(path, proto.SerializeToString())
    elif fmt == "torchscript":
        with _quiet_torch_warnings(), torch.no_grad():
            traced = torch.jit.trace(wrapper, (examples[0],), check_trace=False)
            diff = max(_max_diff(r, traced(x)) for x, r in zip(examples, refs))
        if diff > tolerance:
            raise BanaError(f"{path}: TorchScript trace disagrees with PyTorch (max difference {diff:.3g}); not written")
        info.update(dynamic_hw=True, max_abs_diff=diff, checked_sizes=[list(s) for s in sizes],
                    checked_detections=counts)
        with atomic_path(path) as tmp, _quiet_torch_warnings():
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_META: json.dumps(info, sort_keys=True)})
    else:
        raise BanaError(f"unknown export format {fmt!r}")
    _write_sidecar(path, info)
    return path, info


def write_instance_prediction(out: Path, image_id: str, image: np.ndarray, found: list[dict[str, Any]],
                              class_names: list[str], *, overlay: bool = True) -> None:
    """OUT/ID.png: instance map (0 none, k = the k-th instance of ID.json, best score first;
    where masks overlap the better-scoring instance wins), OUT/ID.json: the instances (id, class,
    label, score, box, area), OUT/ID_overlay.jpg: instance colours over the image."""
    found = found[:254]
    inst = np.zeros(image.shape[:2], dtype=np.uint8)
    for k in range(len(found), 0, -1):  # worst first, so better scores end on top
        inst[found[k - 1]["mask"]] = k
    records = [{"id": k + 1, "label": d["label"], "class": class_names[d["label"]], "score": round(d["score"], 5),
                "box": [round(v, 2) for v in d["box"]], "area": int((inst == k + 1).sum())}
               for k, d in enumerate(found)]
    save_label_png(out / f"{image_id}.png", inst)
    atomic_write_json(out / f"{image_id}.json", {"image": image_id, "instances": records})
    if overlay:
        with atomic_path(out / f"{image_id}_overlay.jpg") as tmp:
            Image.fromarray(blend(image, inst)).save(tmp, format="JPEG", quality=90)
