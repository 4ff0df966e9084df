"""The stage-1 classification network: backbone + (L+1)-way 1x1 classifier trained with BAP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from banacli.ops.bap import bap_loss


class BAPClassifier(nn.Module):
    """Backbone features f and a bias-free 1x1 conv classifier w (weights ~ N(0, 0.01^2)).

    ``num_classes`` counts the background: L + 1. ``self.classifier.weight[c]`` is w_c, used
    by stage 2 for CAMs (Eq. 6).
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.01)

    @property
    def out_channels(self) -> int:
        return int(self.backbone.out_channels)

    @property
    def output_stride(self) -> int:
        return int(getattr(self.backbone, "output_stride", 8))

    @property
    def normalization(self) -> dict[str, Any]:
        return dict(self.backbone.normalization)

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, C, ceil(H/8), ceil(W/8)) features f."""
        return self.backbone(x)

    def forward(
        self,
        images: Tensor,
        boxes: Tensor,
        box_labels: Tensor,
        bg_masks: Tensor,
        *,
        grid_size: int = 4,
        roi_size: int | Sequence[int] = 2,
        pooling: str = "bap",
        bg_fallback: float = 0.125,
    ) -> dict[str, Tensor]:
        """BAP loss of a batch; see :func:`banacli.ops.bap.bap_loss` for the outputs.

        images (B, 3, S, S) normalised; boxes (N, 5) ``[b, x0, y0, x1, y1]`` input pixels
        (exclusive end); box_labels (N,) in 1..L; bg_masks (B, S, S) bool definite background.
        """
        feats = self.features(images)
        return bap_loss(
            feats, self.classifier.weight, boxes, box_labels, bg_masks,
            stride=self.output_stride, grid_size=grid_size, roi_size=roi_size,
            pooling=pooling, bg_fallback=bg_fallback,
        )

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """SGD parameter groups of the authors' reference config (base lr 1e-3 there).

        - backbone weights (conv kernels): ``lr``, ``weight_decay``;
        - backbone biases and other 1-D parameters (BatchNorm affine in ResNets): ``2 * lr``,
          no weight decay (the Caffe ``lr_mult: 2, decay_mult: 0`` convention of the reference);
        - classifier weights (trained from scratch): ``10 * lr``, ``weight_decay``.
        With the paper's numbers (pretrained 1e-4, classifier 1e-3) pass ``lr=1e-4``: the x10
        reproduces the paper's classifier rate; the x2 on biases is the reference's addition.
        Frozen parameters (requires_grad False) and empty groups are left out. Each group has a
        ``name`` key for logging (ignored by torch.optim.SGD).
        """
        weights, biases = [], []
        for p in self.backbone.parameters():
            if p.requires_grad:
                (weights if p.ndim > 1 else biases).append(p)
        head = [p for p in self.classifier.parameters() if p.requires_grad]
        groups = [
            {"name": "backbone_weights", "params": weights, "lr": lr, "weight_decay": weight_decay},
            {"name": "backbone_biases", "params": biases, "lr": 2 * lr, "weight_decay": 0.0},
            {"name": "classifier_weights", "params": head, "lr": 10 * lr, "weight_decay": weight_decay},
        ]
        return [g for g in groups if g["params"]]
