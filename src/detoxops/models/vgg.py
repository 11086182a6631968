"""VGG-19 with batch norm (configuration E) for small images, as used in the papers' appendix."""

from __future__ import annotations

from torch import Tensor, nn

from detoxops.models.base import Classifier

VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG19BN(Classifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(in_channels)
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in VGG19:
            if v == "M":
                # ceil_mode keeps the five poolings valid for images smaller than 32x32
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c_in = v
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.body(x)
