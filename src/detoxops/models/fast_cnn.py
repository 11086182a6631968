"""The airbench94 network (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498, §3):
the fastest known CIFAR-10 recipe's 1.97M-parameter, 8-layer convnet, written for detoxops.

Layout (CIFAR-10, 32x32): a frozen 2x2 patch-whitening convolution (24 channels: the patch covariance's
eigenvectors scaled by 1/sqrt(eigenvalue), and their negatives; its bias trains for the first epochs only), GELU,
then three conv groups ``conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU`` of widths 64 / 256 / 256,
a global max-pool, a bias-free linear head and a fixed 1/9 output scale. Convolutions start as identity maps on
their first input channels (dirac initialisation); BatchNorm has no learned scale (weight frozen at 1, eps
1e-12, running-stat momentum 0.4), only a bias trained at a 64x higher learning rate by the recipe
(``models.fast_train``).

The whitening layer is computed from the training images (:meth:`FastCNN.init_whitening`) before training; it
is a buffer-like frozen parameter saved with the weights, so a loaded model needs no data.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detoxops.models.base import Classifier

DEFAULT_WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm with the scale frozen at 1 (airbench: only the bias learns)."""

    def __init__(self, num_features: int, momentum: float = 0.6) -> None:
        # airbench's momentum 0.6 is the weight of the *old* running statistic; torch's is the new one's.
        super().__init__(num_features, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class _Conv(nn.Conv2d):
    """3x3 'same' convolution without bias, initialised as an identity map on its first input channels."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class _ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = _Conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BatchNorm(c_out)
        self.conv2 = _Conv(c_out, c_out)
        self.norm2 = _BatchNorm(c_out)
        self.activ = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class FastCNN(Classifier):
    """airbench94's convnet behind detoxops' classifier interface (input float [0, 1] NCHW, normalisation
    inside, ``features`` = the 256 pooled channels before the head)."""

    output_scale = 1 / 9

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__(in_channels)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"fast_cnn needs three positive group widths, got {list(widths)}")
        whiten_width = 2 * in_channels * WHITEN_KERNEL**2
        self.whiten = nn.Conv2d(in_channels, whiten_width, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.groups = nn.Sequential(
            _ConvGroup(whiten_width, widths[0]), _ConvGroup(widths[0], widths[1]), _ConvGroup(widths[1], widths[2])
        )
        self.activ = nn.GELU()
        # airbench's MaxPool(3) on the 3x3 map of a 32x32 input is a global max; adaptive keeps other sizes valid.
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    @torch.no_grad()
    def init_whitening(self, images01: Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first layer from the covariance of all 2x2 patches of ``images01`` (float [0, 1]
        NCHW; airbench uses 5,000 training images): weights = eigenvectors / sqrt(eigenvalue + eps) and their
        negatives, so the GELU after it sees both signs of every whitened direction."""
        x = self.normalise(images01.to(self.whiten.weight.device, torch.float32))
        c, (h, w) = x.shape[1], self.whiten.weight.shape[2:]
        patches = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w).double()
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first
        scaled = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(-1, c, h, w)
        self.whiten.weight.copy_(torch.cat((scaled, -scaled)).float())

    def embed(self, x: Tensor) -> Tensor:
        x = self.groups(self.activ(self.whiten(x)))
        return self.pool(x).flatten(1)

    def forward(self, x01: Tensor) -> Tensor:
        return self.head(self.features(x01)) * self.output_scale
