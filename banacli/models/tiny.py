"""``tiny``: the VGG-16 topology of :mod:`banacli.models.vgg16` at 1/8 of the width.

Conv widths 8, 16, 32, 64, 64 and fc6/fc7 of 128 channels (about 0.3 M parameters instead of
about 20 M): same output stride (8), same parameter names, so every code path that works
with ``vgg16`` is exercised on a CPU in seconds. Random init only; it uses the torchvision
normalisation (unit-variance inputs train better from scratch than Caffe's mean-only one).

``tiny-bn``: the same network with a BatchNorm2d between every convolution and its ReLU and
no dropout, the stage-1 backbone of the demo. From random init the plain ``tiny`` classifier
does not learn the synthetic classes in a CPU budget (issue 22; box accuracy on held-out boxes
17-32 % with five classes, chance 20 %, docs/results.md): Dropout2d(0.5) after fc6 and fc7
zeroes half of its 128 feature channels at random, and a 15-layer plain network without
normalisation learns slowly at any learning rate tried. Its parameters are those of ``tiny``
(same names and order) followed by the ``<conv>_bn`` parameters.
"""

from __future__ import annotations

from banacli.models.vgg16 import VGG16

TINY_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 64)
TINY_FC_CHANNELS = 128


def tiny_vgg(*, fc6_dilation: int = 1, dropout: float = 0.5, batch_norm: bool = False) -> VGG16:
    return VGG16(fc6_dilation=fc6_dilation, widths=TINY_WIDTHS, fc_channels=TINY_FC_CHANNELS, dropout=dropout,
                 batch_norm=batch_norm)
