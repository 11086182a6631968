"""PreAct-ResNet18 (He et al. 2016), the victim of both papers, as in BackdoorBench's ``models/preact_resnet.py``:
3x3 stem with 64 channels (no BN/ReLU), four stages of pre-activation basic blocks, global average pooling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from detoxops.models.base import Classifier


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(Classifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [PreActBlock(c_in, c_out, stride), PreActBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.head = nn.Linear(512, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
