"""Shared building blocks: normalisation, image augmentation and visual encoders.

Written here rather than taken from torchvision (which does not import beside the
CPU torch build) and with no pretrained weights (nothing can be downloaded).
Images enter every encoder as uint8 tensors (B, H, W, 3); conversion to float,
channels-first layout and augmentation happen on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCALE_FLOOR = 1e-3
"""Default smallest standard deviation a ``Normalizer`` divides by (in the values' units)."""


class Normalizer(nn.Module):
    """Standardises a vector feature with statistics from the training data: (x - mean) / std.

    The statistics are buffers, so they travel in the policy's weights file.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    @torch.no_grad()
    def fit(self, values: torch.Tensor, floor: float = SCALE_FLOOR) -> None:
        """Fits the statistics to ``values`` (N, size); no std is set below ``floor`` (in the values' units)."""
        self.mean.copy_(values.mean(0))
        self.std.copy_(values.std(0).clamp_min(floor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def shift_images(images: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DrQ-style augmentation: pad by replicating edges, then crop at a random offset per image.

    ``images`` is float (B, C, H, W); returns the shifted images (same shape) and how far each one's
    content moved, in pixels (B, 2) as (x, y).
    """
    batch, _, height, width = images.shape
    if pad <= 0:
        return images, torch.zeros(batch, 2, device=images.device)
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    # One integer translation per image, applied with a sampling grid (no Python loop).
    eps = 1.0 / (height + 2 * pad)
    base_y = torch.linspace(-1.0 + eps, 1.0 - eps, height + 2 * pad, device=images.device)[:height]
    base_x = torch.linspace(-1.0 + eps, 1.0 - eps, width + 2 * pad, device=images.device)[:width]
    grid = torch.stack(torch.meshgrid(base_y, base_x, indexing="ij")[::-1], dim=-1)
    crop = torch.randint(0, 2 * pad + 1, (batch, 1, 1, 2), device=images.device)
    shifted = F.grid_sample(padded, grid.unsqueeze(0) + crop * 2.0 * eps, padding_mode="zeros", align_corners=False)
    return shifted, (pad - crop).view(batch, 2).float()  # cropping further in moves the content back


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) to float (B, 3, H, W) in [-0.5, 0.5]."""
    return images.permute(0, 3, 1, 2).float().div(255.0).sub(0.5)


class SpatialSoftmax(nn.Module):
    """Turns feature maps (B, C, H, W) into the expected image coordinates of C keypoints (B, 2C)."""

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, keypoints, 1)
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(
        self, features: torch.Tensor, moved: torch.Tensor | None = None, image_size: tuple[int, int] = (1, 1)
    ) -> torch.Tensor:
        """``moved``: how far (pixels, (B, 2) as x, y) augmentation moved each image of ``image_size`` (H, W);
        given, it is taken back out of the keypoints, which then say where things are in the unshifted image."""
        features = self.project(features)
        batch, keypoints, height, width = features.shape
        attention = torch.softmax(features.flatten(2) / self.temperature, dim=-1)
        ys = torch.linspace(-1.0, 1.0, height, device=features.device, dtype=attention.dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=features.device, dtype=attention.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        expected_x = (attention * grid_x.flatten()).sum(-1)
        expected_y = (attention * grid_y.flatten()).sum(-1)
        if moved is not None:  # one image pixel is width / image width cells, a cell 2 / (width - 1) in coordinates
            moved = moved.to(attention.dtype)
            expected_x = expected_x - moved[:, :1] * 2.0 * width / (image_size[1] * max(width - 1, 1))
            expected_y = expected_y - moved[:, 1:] * 2.0 * height / (image_size[0] * max(height - 1, 1))
        return torch.cat([expected_x, expected_y], dim=-1)


class ConvEncoder(nn.Module):
    """The CPU preset: three 3x3 convolutions (by default the first two strided) and spatial softmax.

    No normalisation layers: on two CPU cores GroupNorm costs more than it gives here.
    ``strides`` sets the feature map the keypoints are found on: (2, 2, 1) gives a quarter of
    the image size, (2, 1, 1) half (finer keypoints, about three times the compute).
    """

    def __init__(self, channels: int = 32, keypoints: int = 32, strides: tuple[int, ...] = (2, 2, 1)) -> None:
        super().__init__()
        if len(strides) != 3 or any(stride not in (1, 2) for stride in strides):
            raise ValueError(f"the small encoder takes three strides of 1 or 2, found {tuple(strides)}")
        layers: list[nn.Module] = []
        for index, stride in enumerate(strides):
            layers += [nn.Conv2d(3 if index == 0 else channels, channels, 3, stride=stride, padding=1), nn.ReLU(True)]
        self.net = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(channels, keypoints)
        self.output_size = 2 * keypoints

    def forward(self, images: torch.Tensor, moved: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.net(images), moved, images.shape[-2:])


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(out_channels // 16, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(out_channels // 16, out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.GroupNorm(out_channels // 16, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet18Encoder(nn.Module):
    """The GPU preset: a ResNet-18 layout with GroupNorm (trained from scratch) and spatial softmax."""

    def __init__(self, keypoints: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.GroupNorm(4, 64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        layers, channels = [], 64
        for out_channels, stride in ((64, 1), (128, 2), (256, 2), (512, 1)):
            layers += [_BasicBlock(channels, out_channels, stride), _BasicBlock(out_channels, out_channels, 1)]
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(channels, keypoints)
        self.output_size = 2 * keypoints

    def forward(self, images: torch.Tensor, moved: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.layers(self.stem(images)), moved, images.shape[-2:])


ENCODERS = {"small": ConvEncoder, "resnet18": ResNet18Encoder}


def mlp(input_size: int, hidden: int, layers: int, output_size: int, dropout: float = 0.0) -> nn.Sequential:
    modules: list[nn.Module] = []
    size = input_size
    for _ in range(layers):
        modules += [nn.Linear(size, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True)]
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
        size = hidden
    modules.append(nn.Linear(size, output_size))
    return nn.Sequential(*modules)
