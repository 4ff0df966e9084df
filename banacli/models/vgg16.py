"""The AffinityNet variant of VGG-16 used by BANA (output stride 8, 1024-channel features).

Topology (docs/method.md, "Stage 1"): conv1_1..conv5_3 (3x3, padding 1, ReLU); a 3x3 max-pool with
padding 1 after each block, stride 2 after blocks 1-3 and stride 1 after blocks 4-5; conv5_x
dilated by 2; a 3x3 average pool (stride 1, padding 1); fc6 = 3x3 conv 512->1024 (dilation
``fc6_dilation``: 1 for the classifier, 12 for DeepLab-LargeFOV) + ReLU + Dropout2d(0.5);
fc7 = 1x1 conv 1024->1024 + ReLU + Dropout2d(0.5). ``dropout=0`` leaves both dropouts out (the
tiny DeepLab, :mod:`banacli.models.deeplab`). ``batch_norm=True`` (not the reference network; the
``tiny-bn`` backbone, :mod:`banacli.models.tiny`) puts a BatchNorm2d between each of the 15
convolutions and its ReLU.

Parameters are registered as ``conv1_1.weight, conv1_1.bias, ..., conv5_3.bias, fc6.weight,
fc6.bias, fc7.weight, fc7.bias`` in that order, so the authors' plain state dict converts 1:1.
Each stride-2 pool (kernel 3, padding 1) maps output pixel i to input pixel 2i, so feature
pixel i is centred on input pixel 8i and an S-pixel side gives ceil(S / 8) feature pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from banacli.errors import BanaError

# (block, number of convs) of VGG-16.
_BLOCKS: tuple[tuple[int, int], ...] = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
VGG16_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
CONV_NAMES: tuple[str, ...] = tuple(f"conv{b}_{i}" for b, n in _BLOCKS for i in range(1, n + 1))
# Index of each conv inside torchvision's ``vgg16().features`` (ReLUs and pools in between).
_TORCHVISION_FEATURE_INDEX: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class VGG16(nn.Module):
    """AffinityNet-style VGG-16 trunk; ``widths``/``fc_channels`` shrink it for the tiny model."""

    output_stride = 8

    def __init__(
        self,
        *,
        fc6_dilation: int = 1,
        widths: Sequence[int] = VGG16_WIDTHS,
        fc_channels: int = 1024,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"VGG16 needs 5 block widths, got {list(widths)}")
        if fc6_dilation < 1:
            raise ValueError(f"fc6_dilation must be >= 1, got {fc6_dilation}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.fc6_dilation = int(fc6_dilation)
        self.batch_norm = bool(batch_norm)
        in_ch = 3
        # Registration order == parameter order (conv1_1 ... conv5_3, fc6, fc7).
        for (block, n), width in zip(_BLOCKS, widths):
            dil = 2 if block == 5 else 1
            for i in range(1, n + 1):
                conv = nn.Conv2d(in_ch, width, 3, padding=dil, dilation=dil)
                self.add_module(f"conv{block}_{i}", conv)
                in_ch = width
        self.pools = nn.ModuleList(
            nn.MaxPool2d(3, stride=2 if block <= 3 else 1, padding=1) for block, _ in _BLOCKS
        )
        self.avgpool = nn.AvgPool2d(3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(in_ch, fc_channels, 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        # p = 0: no dropout module at all
        self.drop6 = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.drop7 = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        # batch_norm: a BatchNorm2d between every convolution and its ReLU, named "<conv>_bn";
        # registered after fc7 so the conv1_1 ... fc7 parameters keep their names and order
        if self.batch_norm:
            for name in (*CONV_NAMES, "fc6", "fc7"):
                self.add_module(f"{name}_bn", nn.BatchNorm2d(getattr(self, name).out_channels))
        self.out_channels = fc_channels
        self.reset_parameters()

    def _conv(self, name: str, x: Tensor) -> Tensor:
        x = getattr(self, name)(x)
        return getattr(self, f"{name}_bn")(x) if self.batch_norm else x

    def reset_parameters(self) -> None:
        """Random init: Kaiming-normal (fan_out, ReLU) conv weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, 3, H, W) normalised -> (B, out_channels, ceil(H/8), ceil(W/8))
        for (block, n), pool in zip(_BLOCKS, self.pools):
            for i in range(1, n + 1):
                x = self.relu(self._conv(f"conv{block}_{i}", x))
            x = pool(x)
        x = self.avgpool(x)
        x = self.drop6(self.relu(self._conv("fc6", x)))
        x = self.drop7(self.relu(self._conv("fc7", x)))
        return x


def vgg16_parameter_names() -> list[str]:
    """The reference (authors') parameter names in order: conv1_1.weight, conv1_1.bias, ..., fc7.bias."""
    return [f"{m}.{p}" for m in (*CONV_NAMES, "fc6", "fc7") for p in ("weight", "bias")]


def is_torchvision_vgg_state(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("features.") for k in sd)


# fc6/fc7 from torchvision's fully connected layers, as DeepLab built its ``vgg16_20M``
# (DeepLab-LargeFOV paper, Sec. 3.1: "subsample the first FC layer by 4 (4096 -> 1024
# filters) and spatially by 3 (7x7 -> 3x3 taps)"). The indices below are our choice — every
# 4th filter starting at 0, and taps 0, 3, 6 of the 7x7 grid — and were NOT verified against
# the released vgg16_20M caffemodel. fc7 keeps the same 1024 outputs and, as inputs, the same
# 1024 fc6 filters (rows and columns 0::4). No rescaling is applied.
FC_SUBSAMPLE = 4
FC6_TAPS: tuple[int, ...] = (0, 3, 6)
_TV_FC6, _TV_FC7 = "classifier.0", "classifier.3"


def derive_fc_from_torchvision(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """fc6/fc7 in our naming from torchvision's ``classifier.0`` (4096 x 25088) and
    ``classifier.3`` (4096 x 4096); {} when they are absent or not of those shapes.

    fc6: the Linear over the flattened (512, 7, 7) pool5 output is a 7x7 convolution
    (4096, 512, 7, 7); keep filters 0::4 and taps FC6_TAPS in both directions -> (1024, 512, 3, 3),
    bias 0::4. fc7: (4096, 4096)[0::4, 0::4] -> (1024, 1024, 1, 1), bias 0::4.
    """
    keys = [f"{_TV_FC6}.weight", f"{_TV_FC6}.bias", f"{_TV_FC7}.weight", f"{_TV_FC7}.bias"]
    if not all(k in sd for k in keys):
        return {}
    w6, b6, w7, b7 = (sd[k] for k in keys)
    # torchvision: (4096, 512 * 7 * 7) and (4096, 4096); any width divisible by 4 is accepted
    n = w6.shape[0] if w6.dim() == 2 else 0
    if (w6.dim() != 2 or n % FC_SUBSAMPLE or w6.shape[1] % 49 or tuple(w7.shape) != (n, n)
            or tuple(b6.shape) != (n,) or tuple(b7.shape) != (n,)):
        return {}
    keep = slice(0, n, FC_SUBSAMPLE)
    taps = list(FC6_TAPS)
    fc6 = w6.reshape(n, w6.shape[1] // 49, 7, 7)[keep][:, :, taps][:, :, :, taps]
    fc7 = w7[keep][:, keep]
    return {
        "fc6.weight": fc6.contiguous().clone(),
        "fc6.bias": b6[keep].contiguous().clone(),
        "fc7.weight": fc7.reshape(fc7.shape[0], fc7.shape[1], 1, 1).contiguous().clone(),
        "fc7.bias": b7[keep].contiguous().clone(),
    }


def vgg16_from_torchvision_state(sd: Mapping[str, Tensor], *, with_fc: bool = False) -> dict[str, Tensor]:
    """Map torchvision ``vgg16`` keys (``features.N.weight``) to ours (``conv1_1.weight``).

    The 13 convolutions are mapped one to one. With ``with_fc``, fc6/fc7 are derived from
    torchvision's fully connected layers (:func:`derive_fc_from_torchvision`) when present;
    otherwise they stay randomly initialised.
    """
    out: dict[str, Tensor] = {}
    for name, idx in zip(CONV_NAMES, _TORCHVISION_FEATURE_INDEX):
        for p in ("weight", "bias"):
            key = f"features.{idx}.{p}"
            if key not in sd:
                raise BanaError(f"not a torchvision VGG-16 state dict: key {key!r} is missing")
            out[f"{name}.{p}"] = sd[key]
    if with_fc:
        out.update(derive_fc_from_torchvision(sd))
    return out


def load_vgg16_state(model: VGG16, sd: Mapping[str, Tensor], *, source: str) -> list[str]:
    """Copy a state dict in our naming into ``model``; return the names left at random init.

    All 13 convolutions are required; fc6/fc7 are optional (torchvision ImageNet weights have
    none). A shape mismatch (e.g. a full-width file into the tiny model) is a BanaError.
    """
    own = model.state_dict()
    missing_convs = [k for k in own if k.startswith("conv") and k not in sd]
    if missing_convs:
        raise BanaError(f"{source}: missing VGG-16 weights {missing_convs[:3]} (and {len(missing_convs)} in all)")
    for k, v in sd.items():
        if k in own and tuple(v.shape) != tuple(own[k].shape):
            raise BanaError(f"{source}: {k} has shape {tuple(v.shape)}, the model needs {tuple(own[k].shape)}")
    loaded = {k: v for k, v in sd.items() if k in own}
    with torch.no_grad():
        model.load_state_dict(loaded, strict=False)
    return [k for k in own if k not in loaded]
