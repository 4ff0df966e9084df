"""DeepLab segmenters for stage 3 with the cosine-similarity classifier (supp. Eq. 3).

- ``largefov``: DeepLab-V1 LargeFOV = the VGG-16 of docs/method.md ("Stage 1") (AffinityNet variant, output stride
  8) with fc6 dilation 12; phi = fc7 output (1024 channels).
- ``aspp``: DeepLab-V2 = ResNet-101 (output stride 8) + ASPP: four 3x3 convolutions with
  dilation 6, 12, 18 and 24 applied to the 2048-channel features and summed. In the
  original DeepLab-V2 each branch outputs class scores; with a cosine classifier the
  branches must output features instead. As in the public BANA code (its DeepLab_ASPP),
  each branch outputs ``ASPP_CHANNELS`` = 256 channels without bias and
  phi = ReLU(sum of the branches); the cosine classifier is applied to phi. (256 keeps
  the head at 19 M parameters; 1024 would cost 75 M, more than the ResNet-101 trunk.)
- ``tiny``: the small CPU backbone (``build_backbone("tiny", fc6_dilation=12, dropout=0)``) for
  tests and demos, without the Dropout2d(0.5) after fc6 and fc7. phi is fc7's output; with 128
  channels, dropping half of them per image changes the direction of phi, so its cosine to each
  W_c, so much that the tiny model from random init did not fit one fixed batch of 8 images in
  40 Adam steps, and with dropout it stayed at the all-background prior for 300 iterations even
  with gradient clipping (docs/results.md, "Why the tiny DeepLab sat at the prior").

Classifier: logits_c(p) = tau * cos(phi(p), W_c), no bias. |logits| <= tau by construction.
Weights of new layers (ASPP, classifier) ~ N(0, 0.01^2), biases 0.

Learning rates (:meth:`SegNet.param_groups`, the reference's Caffe convention):
backbone weights ``lr`` with weight decay; backbone biases ``2 * lr`` without weight decay;
backbone normalisation parameters (ResNet BatchNorm affine) ``lr`` without weight decay
(the reference trains them at 1x; decaying BN scales is avoided); new weights (ASPP
branches, classifier) ``10 * lr`` with weight decay; new biases ``20 * lr`` without weight
decay (none with the default, bias-free ASPP). Each group carries ``lr_mult`` so a poly
scheduler can set ``group["lr"] = base_lr * group["lr_mult"] * (1 - it / max_it) ** 0.9``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from banacli.models.backbones import build_backbone

SEG_MODELS = ("largefov", "aspp", "tiny")
ASPP_CHANNELS = 256
ASPP_DILATIONS = (6, 12, 18, 24)
_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)

__all__ = ["ASPP", "ASPP_CHANNELS", "SEG_MODELS", "CosineClassifier", "SegNet", "build_segmenter", "upsample_logits"]


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling (align_corners=True) of (B, K, h, w) logits to ``size`` = (H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


class CosineClassifier(nn.Module):
    """logits_c = tau * cos(phi, W_c) for every pixel; weight stored as a (K, C, 1, 1) conv kernel."""

    def __init__(self, in_channels: int, num_classes: int, tau: float = 20.0) -> None:
        super().__init__()
        self.tau = float(tau)
        self.weight = nn.Parameter(torch.empty(num_classes, in_channels, 1, 1))
        nn.init.normal_(self.weight, 0.0, 0.01)

    def forward(self, phi: Tensor) -> Tensor:  # (B, C, h, w) -> (B, K, h, w)
        # float32 also under autocast: the NAL's confidence (1 + cos)^gamma ratio (gamma = 7)
        # and the cosines themselves must not be rounded to bf16
        with torch.autocast(device_type=phi.device.type, enabled=False):
            phi_n = F.normalize(phi.float(), dim=1, eps=1e-6)
            w_n = F.normalize(self.weight.float(), dim=1, eps=1e-6)
            return self.tau * F.conv2d(phi_n, w_n)


class ASPP(nn.Module):
    """Four parallel 3x3 dilated convolutions, summed, then ReLU (DeepLab-V2 head for phi)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = ASPP_CHANNELS,
        dilations: tuple[int, ...] = ASPP_DILATIONS,
        *,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=d, dilation=d, bias=bias) for d in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, h, w) -> (B, out_channels, h, w)
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return F.relu(out)


class SegNet(nn.Module):
    """backbone -> (head) -> phi -> cosine classifier. ``forward`` returns
    ``{"features": phi (B, C, h, w), "logits": (B, K, h, w)}`` at feature resolution (stride 8).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None,
        num_classes: int,
        *,
        tau: float = 20.0,
        name: str = "",
    ) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        channels = getattr(head, "out_channels", None) if head is not None else None
        self.feature_channels = int(channels if channels is not None else backbone.out_channels)
        self.classifier = CosineClassifier(self.feature_channels, num_classes, tau)
        self.num_classes = num_classes
        self.normalization: dict[str, Any] = dict(getattr(backbone, "normalization", {}))

    @property
    def tau(self) -> float:
        return self.classifier.tau

    @property
    def classifier_weight(self) -> Tensor:
        """(K, C) classifier weights W (not normalised)."""
        return self.classifier.weight.flatten(1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        phi = self.head(self.backbone(x))  # (B, C, h, w)
        return {"features": phi, "logits": self.classifier(phi)}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (see the module doc for the multipliers); empty groups
        are left out and parameters with ``requires_grad=False`` are skipped."""
        spec = [
            ("backbone_weight", 1.0, weight_decay),
            ("backbone_bias", 2.0, 0.0),
            ("backbone_norm", 1.0, 0.0),
            ("new_weight", 10.0, weight_decay),
            ("new_bias", 20.0, 0.0),
        ]
        buckets: dict[str, list[nn.Parameter]] = {name: [] for name, _, _ in spec}
        for part, prefix in ((self.backbone, "backbone"), (self.head, "new"), (self.classifier, "new")):
            for module in part.modules():
                norm = isinstance(module, _NORM_LAYERS)
                for pname, p in module.named_parameters(recurse=False):
                    if not p.requires_grad:
                        continue
                    if norm:
                        kind = "norm" if prefix == "backbone" else "bias"
                    else:
                        kind = "weight" if pname != "bias" and p.dim() > 1 else "bias"
                    buckets[f"{prefix}_{kind}"].append(p)
        return [
            {"params": buckets[name], "lr": lr * mult, "lr_mult": mult, "weight_decay": wd, "name": name}
            for name, mult, wd in spec
            if buckets[name]
        ]


def build_segmenter(name: str, num_classes: int, *, weights: Any = None, tau: float = 20.0) -> SegNet:
    """Build a segmenter from ``SEG_MODELS``; ``weights`` is passed to the backbone builder."""
    if name not in SEG_MODELS:
        raise ValueError(f"unknown segmentation model {name!r}; choose one of {', '.join(SEG_MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if name == "largefov":
        backbone = build_backbone("vgg16", weights=weights, fc6_dilation=12)
        head = None
    elif name == "aspp":
        backbone = build_backbone("resnet101", weights=weights)
        head = ASPP(backbone.out_channels)
    else:
        backbone = build_backbone("tiny", weights=weights, fc6_dilation=12, dropout=0.0)
        head = None
    return SegNet(backbone, head, num_classes, tau=tau, name=name)
