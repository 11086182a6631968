"""A small, fast CNN for CPU-scale runs (about 0.3M parameters at width 32).

The head sees a 2x2 average-pooled map rather than one global average, so a small corner trigger (BadNets'
3x3 patch) is not diluted across the whole image — it is what lets a CPU-sized model learn such backdoors.
"""

from __future__ import annotations

from torch import Tensor, nn

from detoxops.models.base import Classifier


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(Classifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__(in_channels)
        self.body = nn.Sequential(
            _block(in_channels, width), _block(width, 2 * width), _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(16 * width, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.body(x)
