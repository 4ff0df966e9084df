"""Network architectures: one module per architecture, a registry in :mod:`.backbones`.

- :mod:`.vgg16`: the AffinityNet VGG-16 (output stride 8, 1024-channel features).
- :mod:`.resnet`: dilated torchvision ResNet-50/101 (output stride 8, 2048 channels).
- :mod:`.tiny`: the VGG-16 topology at 1/8 width, for CPU demos and tests.
- :mod:`.classifier`: the stage-1 BAP classifier.
- :mod:`.normalize`: input normalisation conventions (CAFFE, TORCHVISION).
"""

from banacli.models.backbones import BACKBONES, build_backbone, list_backbones
from banacli.models.classifier import BAPClassifier
from banacli.models.normalize import CAFFE, TORCHVISION, normalize

__all__ = [
    "BACKBONES",
    "BAPClassifier",
    "CAFFE",
    "TORCHVISION",
    "build_backbone",
    "list_backbones",
    "normalize",
]
