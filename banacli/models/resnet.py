"""ResNet-50/101 trunks at output stride 8 (DeepLab-V2 style), 2048-channel layer4 features.

torchvision's ResNet with ``replace_stride_with_dilation=[False, True, True]``: layer3 and
layer4 keep stride 1 and dilate by 2 and 4. The global pool and the fc layer are dropped; the
remaining modules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) so a
torchvision state dict loads directly (its ``fc.*`` keys are ignored).

BatchNorm: with pretrained weights the BN layers are frozen in eval mode (running statistics
kept from ImageNet; their affine parameters still train), as in DeepLab, because training
batches of 10-20 crops give poor batch statistics. A randomly initialised trunk keeps
ordinary train-mode BN, since its running statistics mean nothing yet.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models import resnet

from banacli.errors import BanaError

_BUILDERS = {"resnet50": resnet.resnet50, "resnet101": resnet.resnet101}


class ResNetBackbone(nn.Module):
    """conv1 .. layer4 of a dilated torchvision ResNet; forward returns layer4 features."""

    output_stride = 8
    out_channels = 2048

    def __init__(self, depth_name: str) -> None:
        super().__init__()
        if depth_name not in _BUILDERS:
            raise ValueError(f"unknown ResNet {depth_name!r}")
        net = _BUILDERS[depth_name](weights=None, replace_stride_with_dilation=[False, True, True])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.freeze_bn = False

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, 3, H, W) normalised -> (B, 2048, ceil(H/8), ceil(W/8))
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_resnet_state(model: ResNetBackbone, sd: Mapping[str, Tensor], *, source: str) -> None:
    """Load a torchvision-format ResNet state dict (``fc.*`` ignored); BanaError on mismatch."""
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise BanaError(f"{source}: not a torchvision ResNet state dict of this depth ({what})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise BanaError(f"{source}: {k} has shape {tuple(v.shape)}, the model needs {tuple(own[k].shape)}")
    with torch.no_grad():
        model.load_state_dict(sd, strict=False)
    model.freeze_bn = True
